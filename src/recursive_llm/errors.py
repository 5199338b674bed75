"""Errors raised by recursive_llm. Each message names the problem and how to fix it."""

from __future__ import annotations


class RLMError(Exception):
    """Base class for every error this package raises on purpose."""

    exit_code = 1


class ConfigError(RLMError):
    """Bad configuration: unknown model string, missing API key, invalid option."""

    exit_code = 4


class ContextError(RLMError):
    """The input could not be loaded: missing path, binary or undecodable file, empty input."""

    exit_code = 3


class ModelError(RLMError):
    """A provider call failed after all retries (or with an error that is not worth retrying)."""

    exit_code = 6

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code


class BudgetExceeded(RLMError):
    """A call was refused because it could push a budget (calls, tokens, cost, time) past its limit."""

    exit_code = 5

    def __init__(self, budget: str, message: str) -> None:
        super().__init__(message)
        self.budget = budget


class EnvironmentFailure(RLMError):
    """The REPL environment (worker process) broke in a way the run cannot recover from."""

    exit_code = 1
