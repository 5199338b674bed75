"""Configuration as values: frozen objects, each validated once when it is made.

- `Limits`: what one top-level run may spend (iterations, depth, calls, tokens, cost, time).
- `CallPolicy`: how every model call is made (concurrency, retries, timeout, output cap, temperature).
- `LoopPolicy`: how the root loop behaves (output shown, cell time, fallback, compaction, prompts).
- `WorkerPolicy`: where model code runs (worker process or in-process, sandbox mode, memory).
- `RunConfig`: all of them with the models; `RLM(...)` builds one, and a run receives it.
- `HostBounds` (defined in bounds.py, which the worker imports too): what model code can make
  the host hold, start or write.

`check_number` is the one place where a number from a user, a CLI flag (`cli/options.py`) or a
request body (`serving/`) is checked before it becomes a setting: a limit that is NaN or infinite
passes every `value <= 0` test and defeats every `min(value, ceiling)` (NaN compares false with
everything). `LIMIT_RULES` is the one schema of `Limits`; `check_limit` holds a value to it (the
ceilings of `rlm serve` and `rlm mcp` and a request's lower limits: `serving/limits.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .bounds import HOST_BOUNDS, HostBounds  # noqa: F401  (settings are listed here; these live apart)

if TYPE_CHECKING:
    from .models.base import ModelClient


def check_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0,
                 inclusive: bool = False, allow_none: bool = True) -> Any:
    """`value` if it is a finite number above `minimum` (at or above it with `inclusive`), else
    ValueError naming the setting. Booleans are not numbers here; `integer` also refuses 2.5 (and
    gives an int for 5.0)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required (got None)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
        raise ValueError(f"{name} must be {bound}" + (" (or None for no limit)" if allow_none else "")
                         + f", got {value!r}")
    return int(value) if integer else value


def _shown(value: Any) -> str:
    """A value in an error message, at most 80 characters (a request body's may be megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Limits' fields: (whole number, minimum, minimum allowed, None allowed: no limit). The one schema of
# what a run may spend; `rlm serve` and `rlm mcp` hold their ceilings and requests to it (`check_limit`).
LIMIT_RULES: dict[str, tuple[bool, float, bool, bool]] = {
    "max_iterations": (True, 1, True, False), "max_depth": (True, 1, True, False),
    "max_llm_calls": (True, 0, False, True), "max_tokens": (True, 0, False, True),
    "max_cost_usd": (False, 0, False, True), "timeout_s": (False, 0, False, True)}


def check_limit(name: str, value: Any, label: str | None = None, *, required: bool = False) -> Any:
    """`value` checked as the limit `name` (its `LIMIT_RULES`), or ValueError naming `label` (else
    `name`); `required`: None (no limit) is refused too."""
    integer, minimum, inclusive, optional = LIMIT_RULES[name]
    return check_number(label or name, value, integer=integer, minimum=minimum, inclusive=inclusive,
                        allow_none=optional and not required)


def _check_all(owner: object, rules: dict[str, tuple[bool, float, bool, bool]]) -> None:
    """`rules`: field -> (whole number, minimum, minimum allowed, None allowed)."""
    for name, (integer, minimum, inclusive, optional) in rules.items():
        check_number(name, getattr(owner, name), integer=integer, minimum=minimum, inclusive=inclusive,
                     allow_none=optional)


@dataclass(frozen=True)
class Limits:
    """What one top-level run (root and all its children together) may spend."""

    max_iterations: int = 20
    max_depth: int = 1
    max_llm_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        _check_all(self, LIMIT_RULES)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0


RECORD_LOGPROBS = (None, "logprobs", "token-ids")  # CallPolicy.record_logprobs


@dataclass(frozen=True)
class CallPolicy:
    """How every model call of a run is made (root replies, sub-calls, child runs' calls)."""

    # The ceiling: calls to a provider go as wide as its endpoint takes (scheduler.EndpointLimit).
    max_concurrency: int = 256
    max_child_runs: int = 32  # child runs (each with its own worker) at one depth at once
    max_retries: int = 4
    call_timeout_s: float | None = 300.0
    max_output_tokens: int | None = None
    temperature: float | None = None
    # A sub-call with no answer after this many times its endpoint's usual latency, while the
    # endpoint has free slots, is sent once more; the first answer wins (None: never).
    hedge_after: float | None = None
    # Ask OpenAI-compatible servers for the reply's tokens, kept with each call for training
    # (`rlm export --format calls`): None (off), "logprobs" (the standard `logprobs: true`: their
    # log-probabilities) or "token-ids" (also vLLM's `return_tokens_as_token_ids: true`: the ids;
    # for vLLM-compatible servers only, as others may refuse the unknown field).
    record_logprobs: str | None = None

    def __post_init__(self) -> None:
        if self.record_logprobs not in RECORD_LOGPROBS:
            raise ValueError(f"unknown record_logprobs {self.record_logprobs!r}: use 'logprobs' (any OpenAI-compatible "
                             f"server), 'token-ids' (vLLM: ids and logprobs) or None (off)")
        _check_all(self, {"max_concurrency": (True, 1, True, False), "max_retries": (True, 0, True, False),
                          "hedge_after": (False, 1, True, True),
                          "max_child_runs": (True, 1, True, False),
                          "call_timeout_s": (False, 0, False, True), "max_output_tokens": (True, 1, True, True),
                          "temperature": (False, 0, True, True)})

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries)


PROMPT_STYLES = ("default", "reference")  # prompts.py has their texts


@dataclass(frozen=True)
class LoopPolicy:
    """How the root loop behaves."""

    max_output_chars: int = 20_000  # a turn's code output shown to the model
    cell_timeout_s: float = 120.0  # compute time of one cell
    # idle replies before the map-reduce fallback (None: never; 0: at once, with no root turn, for a
    # root model known not to write RLM code: RLM(...) picks 0 for the embedded model by default)
    fallback_after: int | None = 3
    compact_at: float | None = 0.85  # fraction of the root window at which earlier turns are compacted
    root_context_window: int | None = None  # the root model's window, when it is not known
    system_prompt: str | None = None  # the user's own root system prompt
    sub_calls: bool = True  # False: llm_query/rlm_query fail in model code (the ablation)
    schema_retries: int = 2  # with a schema: answers that do not validate, retried this many times
    # "default", or "reference": the prompts of the reference implementation (rlms), which models
    # trained as RLMs expect (prompts.py)
    prompt_style: str = "default"

    def __post_init__(self) -> None:
        _check_all(self, {"max_output_chars": (True, 200, True, False), "cell_timeout_s": (False, 0, False, False),
                          "schema_retries": (True, 0, True, False),
                          "fallback_after": (True, 0, True, True), "compact_at": (False, 0, False, True),
                          "root_context_window": (True, 1, True, True)})
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt_style {self.prompt_style!r}: use 'default' or 'reference' (the "
                             f"reference implementation's prompts, for models trained as RLMs)")
        if self.compact_at is not None and not 0.1 <= self.compact_at < 1:
            raise ValueError("compact_at must be a fraction of the window between 0.1 and 1 (or None)")


ENVIRONMENTS = ("worker", "local")
SANDBOX_MODES = ("auto", "namespaces", "process")


@dataclass(frozen=True)
class WorkerPolicy:
    """Where model code runs: `worker` (an isolated process per run) or `local` (in-process,
    trusted input only), the worker's sandbox mode, and its address-space limit."""

    environment: str = "worker"
    sandbox: str = "auto"
    memory_mb: int = 8192

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"unknown environment {self.environment!r}: use 'worker' (isolated process, the "
                             f"default) or 'local' (in-process, trusted input only)")
        if self.sandbox not in SANDBOX_MODES:
            raise ValueError(f"unknown sandbox {self.sandbox!r}: use 'auto' (strongest available), 'namespaces' "
                             f"(require them) or 'process' (no namespaces)")
        check_number("worker_memory_mb", self.memory_mb, integer=True, minimum=64, inclusive=True, allow_none=False)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know, made once by `RLM(...)`."""

    root_client: "ModelClient"
    sub_client: "ModelClient"
    limits: Limits = field(default_factory=Limits)
    calls: CallPolicy = field(default_factory=CallPolicy)
    loop: LoopPolicy = field(default_factory=LoopPolicy)
    worker: WorkerPolicy = field(default_factory=WorkerPolicy)
    # Models that model code may name in llm_query(..., model=...) besides the root and sub model
    # (a prompt injection in the input may try others); "*" allows any.
    allowed_models: "list[str] | str | None" = None
    ray_fanout_at: int | None = None  # llm_query_batched calls this wide go through Ray workers
    base_url: str | None = None  # for clients that model code names (allowed_models)
    api_key: str | None = field(default=None, repr=False)
    tools: dict = field(default_factory=dict)  # the user's tools by name (tools.Tool), run in the host

    def __post_init__(self) -> None:
        if self.allowed_models is not None and self.allowed_models != "*" and not isinstance(self.allowed_models, list):
            raise ValueError("allowed_models must be a list of model strings or '*'")
        check_number("ray_fanout_at", self.ray_fanout_at, integer=True, minimum=1, inclusive=True)
