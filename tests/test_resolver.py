import pytest

from recursive_llm.errors import ConfigError
from recursive_llm.models.anthropic_client import AnthropicClient
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.models.resolver import default_model_name, resolve_model
from recursive_llm.testing import ScriptedModel


def test_client_instances_pass_through():
    model = ScriptedModel()
    assert resolve_model(model) is model


def test_openai_names(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    for name in ("gpt-5-mini", "o4-mini", "openai/gpt-4.1"):
        client = resolve_model(name)
        assert isinstance(client, OpenAIClient) and client.base_url is None and client.name == name
    assert resolve_model("openai/gpt-4.1").model == "gpt-4.1"


def test_anthropic_names(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert isinstance(resolve_model("claude-sonnet-4-5"), AnthropicClient)
    assert resolve_model("anthropic/claude-haiku-4-5").model == "claude-haiku-4-5"


def test_any_openai_compatible_server_needs_no_key(monkeypatch):
    client = resolve_model("qwen3-8b", base_url="http://127.0.0.1:8000/v1")
    assert isinstance(client, OpenAIClient) and client.base_url == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1")
    assert resolve_model("my-model").base_url == "http://127.0.0.1:9000/v1"


def test_ollama(monkeypatch):
    client = resolve_model("ollama/llama3.2")
    assert client.base_url == "http://localhost:11434/v1" and client.model == "llama3.2"
    monkeypatch.setenv("OLLAMA_HOST", "10.1.2.3:11434")
    assert resolve_model("ollama/llama3.2").base_url == "http://10.1.2.3:11434/v1"


def test_missing_keys_name_the_variable():
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_model("gpt-5-mini")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        resolve_model("claude-sonnet-4-5")


def test_unknown_model_lists_accepted_forms():
    with pytest.raises(ConfigError, match="Accepted forms"):
        resolve_model("mystery-model")
    with pytest.raises(ConfigError):
        resolve_model(42)


def test_litellm_is_optional(monkeypatch):
    """Without LiteLLM installed, a litellm/ model names the extra to install (simulated: CI has it)."""
    import sys

    monkeypatch.setitem(sys.modules, "litellm", None)  # `import litellm` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install litellm \(or, in a clone of recursive-llm: pip install -e '\.\[litellm\]'\)"):
        resolve_model("litellm/bedrock/some-model")


def test_litellm_models_resolve_when_installed():
    pytest.importorskip("litellm")
    assert resolve_model("litellm/openai/x").name == "litellm/openai/x"


def test_defaults(monkeypatch):
    assert default_model_name() == "local"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert default_model_name() == "claude-sonnet-4-5"
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert default_model_name() == "gpt-5-mini"
    monkeypatch.setenv("RLM_MODEL", "claude-opus-4-5")
    assert default_model_name() == "claude-opus-4-5"


def test_local_model_resolves_without_loading(monkeypatch, tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"")
    client = resolve_model(f"local/{fake}")
    assert client.name == "local" and client.context_window == 8192
