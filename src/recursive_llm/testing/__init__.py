"""Test helpers for recursive_llm users: a scripted model and a fake OpenAI/Anthropic HTTP server."""

from .scripted import ScriptedModel

__all__ = ["ScriptedModel", "FakeLLMServer"]


def __getattr__(name: str):
    if name == "FakeLLMServer":
        from .fake_server import FakeLLMServer
        return FakeLLMServer
    raise AttributeError(name)
