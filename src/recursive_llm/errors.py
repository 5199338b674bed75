"""Errors raised by recursive_llm. Each message names the problem and how to fix it.

The tree (every class carries the exit code `rlm` uses for it; the CLI maps them in one place):

    RLMError (1)                  anything this package raises on purpose
    ├── ConfigError (4)           bad configuration: unknown model, missing key, invalid option or limit
    ├── ContextError (3)          the input cannot be loaded: missing path, empty, binary, undecodable
    ├── ModelError (6)            a provider call failed after its retries (status_code, retryable)
    ├── BudgetExceeded (5)        a call refused: calls, tokens, cost or time (`.budget` says which)
    │   └── budget.RoomLater      internal: the call fits once calls in flight settle (it waits)
    ├── EnvironmentFailure (1)    the REPL environment broke beyond recovery (a worker that cannot start)
    └── StoreError (7)            the run store cannot be read: corrupt, newer schema, unreadable

Errors that never leave the package's boundary as exceptions: a worker that breaks the protocol
(`environments.protocol.ProtocolError`) is killed and replaced, and the cell says `WorkerCrash`;
a failed sub-call or tool reaches model code as `SubCallError` / `ToolError` inside the REPL (or an
"Error: ..." slot in a batch); a run that ends at a limit or without an answer is a `Result` with
`stopped_reason` and `error`, not an exception, and so is a run that an unexpected exception ended
(one not raised on purpose: a bug, a provider's odd reply, an OSError), as `error` with its type,
message and place (`engine/run.unexpected_error`), its calls kept in the store (each reason has its exit code in
`cli_support._EXIT_BY_STOP`: `not_found`, a run that found no answer in the input, is 8); a store
write that fails is `Result.store_error`.
"""

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


class StoreError(RLMError):
    """The run store cannot be read: the message names the file and how to fix it."""

    exit_code = 7
