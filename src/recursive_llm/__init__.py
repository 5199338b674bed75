"""recursive-llm: Recursive Language Models.

The input lives in a REPL as `context`; a root model writes code to explore it and calls sub-models
on the pieces. Start with `RLM(model=...).completion(query, context)`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the sandboxed worker imports this package at every start

__version__ = "0.1.0"

# Public names are imported on first use, so `import recursive_llm` stays fast.
_LAZY = {
    "RLM": ("recursive_llm.rlm", "RLM"),
    "Result": ("recursive_llm.result", "Result"),
    "Limits": ("recursive_llm.engine.budget", "Limits"),
    "load_context": ("recursive_llm.context.loader", "load_context"),
    "Document": ("recursive_llm.context.document", "Document"),
    "RLMError": ("recursive_llm.errors", "RLMError"),
    "ConfigError": ("recursive_llm.errors", "ConfigError"),
    "ContextError": ("recursive_llm.errors", "ContextError"),
    "ModelError": ("recursive_llm.errors", "ModelError"),
    "BudgetExceeded": ("recursive_llm.errors", "BudgetExceeded"),
    "EnvironmentFailure": ("recursive_llm.errors", "EnvironmentFailure"),
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine.budget import Limits
    from .context.document import Document
    from .context.loader import load_context
    from .errors import BudgetExceeded, ConfigError, ContextError, EnvironmentFailure, ModelError, RLMError
    from .result import Result
    from .rlm import RLM


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recursive_llm' has no attribute {name!r}")
