"""Model strings to clients. See the README's model table for the accepted forms."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import ModelClient

_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt", "text-", "davinci")
_FORMS = ("gpt-5-mini / openai/<name> (OpenAI), claude-sonnet-4-5 / anthropic/<name> (Anthropic), "
          "<name> with base_url= or OPENAI_BASE_URL (any OpenAI-compatible server), ollama/<name>, "
          "litellm/<provider>/<name>, local (the embedded offline model)")


def default_model_name() -> str:
    """$RLM_MODEL, else a provider whose key (or server) is configured, else the embedded model."""
    if os.environ.get("RLM_MODEL"):
        return os.environ["RLM_MODEL"]
    if os.environ.get("OPENAI_BASE_URL"):
        return "default"
    if os.environ.get("OPENAI_API_KEY"):
        return "gpt-5-mini"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "claude-sonnet-4-5"
    return "local"


def _require_key(api_key: str | None, variable: str, model: str) -> str:
    key = api_key or os.environ.get(variable)
    if not key:
        raise ConfigError(f"model {model!r} needs an API key: set {variable} (or pass api_key=...), "
                          f"or use a local server with base_url=...")
    return key


def _openai(name: str, base_url: str | None, api_key: str | None, display: str) -> ModelClient:
    from .openai_client import OpenAIClient

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = (api_key or os.environ.get("OPENAI_API_KEY") or "not-needed") if base_url else \
        _require_key(api_key, "OPENAI_API_KEY", display)
    return OpenAIClient(name, base_url=base_url, api_key=key, name=display)


def _anthropic(name: str, base_url: str | None, api_key: str | None, display: str) -> ModelClient:
    from .anthropic_client import AnthropicClient

    base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
    key = _require_key(api_key, "ANTHROPIC_API_KEY", display)
    return AnthropicClient(name, base_url=base_url, api_key=key, name=display)


def resolve_model(model: str | ModelClient | None, *, base_url: str | None = None,
                  api_key: str | None = None) -> ModelClient:
    if model is not None and not isinstance(model, str):
        if isinstance(model, ModelClient):
            return model
        raise ConfigError(f"model must be a model string or a ModelClient, not {type(model).__name__}")
    model = (model or default_model_name()).strip()
    if not model:
        raise ConfigError(f"the model string is empty; accepted forms: {_FORMS}")
    if model == "local" or model.startswith("local/"):
        from .local import LocalModel

        return LocalModel(model.split("/", 1)[1] if "/" in model else None)
    if model.startswith("openai/"):
        return _openai(model.split("/", 1)[1], base_url, api_key, model)
    if model.startswith("anthropic/"):
        return _anthropic(model.split("/", 1)[1], base_url, api_key, model)
    if model.startswith("ollama/"):
        from .openai_client import OpenAIClient

        host = base_url or (os.environ.get("OLLAMA_HOST", "http://localhost:11434").rstrip("/") + "/v1")
        if not host.startswith("http"):
            host = "http://" + host
        return OpenAIClient(model.split("/", 1)[1], base_url=host, api_key=api_key or "ollama", name=model,
                            provider="ollama")
    if model.startswith("litellm/"):
        from .litellm_client import LiteLLMClient

        return LiteLLMClient(model.split("/", 1)[1], base_url=base_url, api_key=api_key)
    if base_url or os.environ.get("OPENAI_BASE_URL"):
        return _openai(model, base_url, api_key, model)
    if model.startswith("claude"):
        return _anthropic(model, None, api_key, model)
    if model.startswith(_OPENAI_PREFIXES):
        return _openai(model, None, api_key, model)
    raise ConfigError(f"unknown model {model!r}. Accepted forms: {_FORMS}")
