"""Every option of every front end, declared once; and the one path from option values to an `RLM`.

- `OPTIONS`: each command-line option with its flag, type, default and help. A command takes the
  ones it needs with `@options.take("model", "max_iterations", ...)`; a command whose defaults
  differ says so once, in `COMMAND_DEFAULTS` (serve's and mcp's ceilings live in `SERVE_CEILINGS`,
  which `serving/limits.serve_ceilings` makes the default ceilings of both).
- `rlm_keywords(values)`: option values (CLI names like `max_cost`, `timeout`, or the `RLM(...)`
  names like `max_cost_usd`) to `RLM(...)` keywords. `make_rlm(values, **extra)` builds the RLM.
  Used by `rlm ask/chat/batch/serve/mcp`, `serving/runner.py`, `serving/mcp.py`, `batch.py` and the
  benchmark methods, so an option means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ENVIRONMENTS, PROMPT_STYLES, SANDBOX_MODES, Limits, LoopPolicy, WorkerPolicy

# What a served run (`rlm serve`, `rlm mcp`) may use at most unless the operator says otherwise.
SERVE_CEILINGS: dict[str, Any] = {"max_iterations": 20, "max_depth": 1, "max_llm_calls": 500,
                                  "max_tokens": None, "max_cost_usd": None, "timeout_s": 600.0}
# How `rlm serve` listens and admits requests unless told otherwise (`server.ServeConfig`'s defaults).
SERVE_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 8000, "max_concurrent": 8, "max_body_mb": 10,
                                  "shutdown_grace_s": 30.0, "idle_timeout_s": 30.0, "body_timeout_s": 60.0,
                                  "max_connections": 128}


@dataclass(frozen=True)
class Option:
    """One option: its flags, click keyword arguments, and the `RLM(...)` keyword it sets (if any)."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    rlm: str | None = None  # the RLM(...) keyword; None: not an RLM setting (input, output, server)


def _types():
    import click

    return click


def _finite_range(min: float, min_open: bool = False):  # noqa: A002  (click's own names)
    """A click type for a number of at least `min` (above it with `min_open`), checked by
    `config.check_number`: finite, so NaN (which passes every range check) and infinities are refused
    (`--max-body-mb nan` was a traceback, `--shutdown-grace nan` a server that never waits). A
    FloatRange only for `--help` (`x>0`); click's own range check is not used."""
    from ..config import check_number

    click = _types()

    class FiniteNumber(click.FloatRange):
        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            number = click.FLOAT.convert(value, param, ctx)
            try:
                return check_number("the value", number, minimum=min, inclusive=not min_open, allow_none=False)
            except ValueError as error:
                self.fail(str(error), param, ctx)

    return FiniteNumber(min=min, min_open=min_open)


def _model_options(click) -> dict[str, Option]:  # models
    return {
        "model": Option(("--model", "-m"), {"default": None, "help": "Root model, e.g. gpt-5-mini, claude-sonnet-4-5, "
                        "ollama/llama3, litellm/<provider>/<name>, local. Default: $RLM_MODEL, else by available "
                        "keys, else local (the embedded smoke-test model)."}, rlm="model"),
        "sub_model": Option(("--sub-model",), {"default": None, "help": "Model for llm_query sub-calls (default: the "
                            "root model)."}, rlm="sub_model"),
        "base_url": Option(("--base-url",), {"default": None, "help": "OpenAI-compatible server URL (vLLM, llama.cpp, "
                           "Ollama, ...)."}, rlm="base_url"),
        "api_key": Option(("--api-key",), {"default": None, "metavar": "KEY", "help": "API key for the model's provider "
                          "(default: the environment, then `rlm keys`). Prefer `rlm keys set`: argv is readable by "
                          "every process."}, rlm="api_key"),
        "allowed_models": Option(("--allow-model", "allowed_models"), {"multiple": True, "metavar": "MODEL",
                                 "help": "A further model that model-written code may name in llm_query(..., "
                                 "model=...) ('*': any)."}, rlm="allowed_models"),
    }


def _limit_options(click) -> dict[str, Option]:  # limits
    positive_int = click.IntRange(min=1)
    positive = _finite_range(min=0, min_open=True)
    return {
        "max_depth": Option(("--max-depth",), {"type": positive_int, "default": Limits.max_depth, "show_default": True,
                            "help": "1: sub-calls are plain LLM calls; 2+: rlm_query starts child RLMs."},
                            rlm="max_depth"),
        "max_iterations": Option(("--max-iterations",), {"type": positive_int, "default": Limits.max_iterations,
                                 "show_default": True,
                                 "help": "Root-model turns per run."}, rlm="max_iterations"),
        "max_llm_calls": Option(("--max-llm-calls",), {"type": positive_int, "default": None,
                                "help": "Model calls per run, children included."}, rlm="max_llm_calls"),
        "max_tokens": Option(("--max-tokens",), {"type": positive_int, "default": None,
                             "help": "Token budget for the whole run."}, rlm="max_tokens"),
        "max_cost": Option(("--max-cost",), {"type": positive, "default": None, "help": "Budget in USD."},
                           rlm="max_cost_usd"),
        "timeout": Option(("--timeout",), {"type": positive, "default": None, "help": "Wall-time limit (s)."},
                          rlm="timeout_s"),
    }


def _environment_options(click) -> dict[str, Option]:  # where code runs
    sandbox = click.Choice(list(SANDBOX_MODES))
    return {
        "environment": Option(("--environment",), {"type": click.Choice(list(ENVIRONMENTS)),
                              "default": WorkerPolicy.environment,
                              "show_default": True, "help": "Where model code runs: an isolated worker process, or "
                              "in-process (trusted input only)."}, rlm="environment"),
        "sandbox": Option(("--sandbox",), {"type": sandbox, "default": WorkerPolicy.sandbox, "show_default": True,
                          "help": "Worker isolation: strongest available, require namespaces, or resource limits "
                          "only."}, rlm="sandbox"),
    }


def _loop_options(click) -> dict[str, Option]:  # how calls and the loop behave
    return {
        "context_window": Option(("--context-window",), {"type": click.IntRange(min=1000), "default": None,
                                 "metavar": "TOKENS", "help": "The root model's window, for a model whose window is "
                                 "not known (a self-hosted one): near it, earlier turns are compacted into a summary "
                                 "(and kept in the REPL as `history`)."}, rlm="root_context_window"),
        "temperature": Option(("--temperature",), {"type": _finite_range(min=0), "default": None,
                              "help": "Sampling temperature of every call."}, rlm="temperature"),
        "hedge_after": Option(("--hedge-after",), {"type": _finite_range(min=1), "default": None, "metavar": "TIMES",
                              "help": "Send a sub-call once more when it has no answer after this many times its "
                              "provider's usual latency; the first answer wins (off by default: each copy is one "
                              "more call in the budget; at most 5% of the sub-calls are hedged)."}, rlm="hedge_after"),
        "record_logprobs": Option(("--record-logprobs",), {"type": click.Choice(["logprobs", "token-ids"]),
                                  "default": None, "help": "Ask the OpenAI-compatible server for each reply's "
                                  "token log-probabilities (logprobs) or, from vLLM, also its token ids (token-ids: "
                                  "vLLM's return_tokens_as_token_ids, which other servers may refuse); kept with each "
                                  "call for `rlm export --format calls`."}, rlm="record_logprobs"),
        "cache": Option(("--cache/--no-cache",), {"default": None, "help": "Answer identical model calls from the run "
                        "store instead of paying again (default: on at temperature 0)."}, rlm="cache"),
        "fallback_after": Option(("--fallback-after",), {"type": click.IntRange(min=0), "default": None,
                                 "metavar": "N", "help": "After N replies with no working code and no answer, run "
                                 "the built-in map-reduce program (default 3; 0, at once, for the embedded model)."},
                                 rlm="fallback_after"),
        "prompt_style": Option(("--prompt-style",), {"type": click.Choice(list(PROMPT_STYLES)),
                               "default": LoopPolicy.prompt_style, "show_default": True, "help": "reference: the prompts of the "
                               "reference implementation (rlms), for models trained as RLMs."}, rlm="prompt_style"),
        "tools": Option(("--tool", "tools"), {"multiple": True, "metavar": "MODULE:FUNCTION",
                        "help": "A function of yours that model code may call by name (repeatable): module:function "
                        "or path/to/file.py:function. It runs in this process, never in the sandbox."}, rlm="tools"),
        "memory": Option(("--memory",), {"default": None, "metavar": "NAME", "help": "A memory workspace kept across "
                         "questions (in RLM_HOME): model code reads what earlier runs saved (`memory`) and saves "
                         "with remember(name, value, note). `rlm memory list` shows it."}, rlm="memory"),
        "memory_reuse": Option(("--memory-reuse",), {"is_flag": True, "default": False, "help": "With --memory: "
                               "answer a sub-call whose model and prompt the workspace already answered from there, "
                               "at any temperature."}, rlm="memory_reuse"),
    }


def _input_options(click) -> dict[str, Option]:  # input
    positive = _finite_range(min=0, min_open=True)
    return {
        "contexts": Option(("--context", "-c", "contexts"), {"multiple": True, "metavar": "PATH",
                           "help": "File or directory to ask about (repeatable); '-' reads stdin (a piped stdin is "
                           "read when no --context is given)."}),
        "include": Option(("--include",), {"multiple": True, "metavar": "GLOB",
                          "help": "Only load matching files from directories."}),
        "exclude": Option(("--exclude",), {"multiple": True, "metavar": "GLOB",
                          "help": "Skip matching files in directories."}),
        "encoding": Option(("--encoding",), {"default": "utf-8", "show_default": True,
                           "help": "Text encoding of the input files."}),
        "separate": Option(("--separate",), {"is_flag": True, "help": "Each --context is an input of its own "
                           "(context_0, context_1, ...) instead of one list of documents."}),
        "no_gitignore": Option(("--no-gitignore",), {"is_flag": True,
                               "help": "Load files that a .gitignore excludes, too."}),
        "max_file_mb": Option(("--max-file-mb",), {"type": positive, "default": 50, "show_default": True,
                              "help": "Skip files larger than this inside directories."}),
    }


def _output_options(click) -> dict[str, Option]:  # output
    return {
        "as_json": Option(("--json", "as_json"), {"is_flag": True,
                          "help": "Print the whole result as JSON (errors too), on stdout."}),
        "verbose": Option(("--verbose", "-v"), {"is_flag": True,
                          "help": "Show model replies, code and outputs as they happen."}, rlm="verbose"),
        "quiet": Option(("--quiet", "-q"), {"is_flag": True, "help": "No progress or summary on stderr."}),
    }


def _serve_options(click) -> dict[str, Option]:  # serving (rlm serve, rlm mcp)
    positive_int = click.IntRange(min=1)
    positive = _finite_range(min=0, min_open=True)
    return {
        "host": Option(("--host",), {"default": SERVE_DEFAULTS["host"], "show_default": True,
                       "help": "Interface to bind; anything but loopback needs a token."}),
        "port": Option(("--port",), {"type": click.IntRange(1, 65535), "default": SERVE_DEFAULTS["port"],
                       "show_default": True}),
        "extra_models": Option(("--also-model", "extra_models"), {"multiple": True, "metavar": "MODEL",
                               "help": "Another root model clients may ask for as rlm/<model> (repeatable)."}),
        "token_file": Option(("--token-file",), {"type": click.Path(dir_okay=False, exists=True, path_type=Path),
                             "default": None, "help": "File with the bearer token(s) clients must send, one per line "
                             "(one per client: each gets its own call cache). Or set RLM_SERVE_TOKEN. Required off "
                             "loopback."}),
        "token": Option(("--token",), {"default": None, "hidden": True, "help": "Deprecated: argv is readable by every "
                        "process (/proc/PID/cmdline); use RLM_SERVE_TOKEN or --token-file."}),
        "idle_timeout": Option(("--idle-timeout",), {"type": positive, "default": SERVE_DEFAULTS["idle_timeout_s"],
                               "show_default": True,
                               "help": "Seconds a connection may send nothing (no request headers, or a stalled "
                               "body) before it is closed."}),
        "body_timeout": Option(("--body-timeout",), {"type": positive, "default": SERVE_DEFAULTS["body_timeout_s"],
                               "show_default": True,
                               "help": "Seconds a request's whole body may take to arrive (408 after), however "
                               "steadily it trickles in."}),
        "max_connections": Option(("--max-connections",), {"type": positive_int,
                                  "default": SERVE_DEFAULTS["max_connections"], "show_default": True,
                                  "help": "Open connections at once; more are answered 503 and closed. Bodies "
                                  "being read take at most this times --max-body-mb of memory."}),
        "allowed_root": Option(("--allowed-root",), {"type": click.Path(file_okay=False, path_type=Path),
                               "default": None, "help": "Directory whose files requests may name in context.files "
                               "(nothing outside it)."}),
        "max_concurrent": Option(("--max-concurrent",), {"type": positive_int,
                                 "default": SERVE_DEFAULTS["max_concurrent"], "show_default": True,
                                 "help": "Runs at once; more get 429."}),
        "max_body_mb": Option(("--max-body-mb",), {"type": positive, "default": SERVE_DEFAULTS["max_body_mb"],
                              "show_default": True}),
        "shutdown_grace": Option(("--shutdown-grace",), {"type": _finite_range(min=0),
                                 "default": SERVE_DEFAULTS["shutdown_grace_s"],
                                 "show_default": True, "help": "Seconds running requests get to finish on "
                                 "SIGTERM/SIGINT."}),
        "cors_origins": Option(("--cors-origin", "cors_origins"), {"multiple": True, "metavar": "ORIGIN",
                               "help": "A browser origin allowed to call the API (CORS), e.g. "
                               "http://localhost:3000; repeatable; `*` for any. Default: none."}),
        "access_log": Option(("--access-log/--no-access-log",), {"default": True, "show_default": True,
                             "help": "One line per request on stderr: method, path, status, run id, time."}),
        "root": Option(("--root",), {"type": click.Path(file_okay=False, exists=True, path_type=Path),
                       "default": ".", "show_default": True, "help": "Only files under this directory can be "
                       "loaded."}),
    }


def _batch_options(click) -> dict[str, Option]:  # batches
    positive_int = click.IntRange(min=1)
    return {
        "executor": Option(("--executor",), {"type": click.Choice(["local", "ray"]), "default": "local",
                           "show_default": True}),
        "address": Option(("--address",), {"default": None, "help": "Ray cluster address (e.g. ray://head:10001); "
                          "default: a local Ray."}),
        "workers": Option(("--workers",), {"type": positive_int, "default": None,
                          "help": "Tasks at once (local: default 4; ray: CPUs of the local Ray)."}),
        "results_file": Option(("--results", "results_file"), {"type": click.Path(dir_okay=False, path_type=Path),
                               "default": None, "help": "Where results go (default: TASKS.results.jsonl); finished "
                               "tasks in it are not rerun."}),
    }


def _bench_options(click) -> dict[str, Option]:  # benchmarks
    positive_int = click.IntRange(min=1)
    return {
        "tasks": Option(("--tasks",), {"default": "niah", "show_default": True, "help": "Task families, "
                        "comma-separated: niah, niah_multi, logs, codeqa, oolong, oolong_pairs, multihop."}),
        "sizes": Option(("--sizes",), {"default": "8k,64k,1m", "show_default": True,
                        "help": "Input sizes in tokens, e.g. 8k,64k,1m,10m."}),
        "methods": Option(("--methods",), {"default": "rlm,rlm_no_subcalls,truncated,rag,summary",
                          "show_default": True}),
        "seeds": Option(("--seeds",), {"type": positive_int, "default": 1, "show_default": True,
                        "help": "Tasks per family and size."}),
        "window_tokens": Option(("--window", "window_tokens"), {"type": click.IntRange(min=1000), "default": 32_000,
                                "show_default": True, "help": "The model's window, for the baselines that must fit "
                                "the input into one prompt."}),
        "latency": Option(("--latency",), {"type": _finite_range(min=0), "default": 0.05, "show_default": True,
                          "help": "The simulator's latency per call (seconds)."}),
        "price": Option(("--price",), {"default": None, "metavar": "IN,OUT", "help": "USD per million input and "
                        "output tokens for the model, when it has no known price (a self-hosted model, or the "
                        "simulator priced like a real one)."}),
        "out": Option(("--out",), {"type": click.Path(file_okay=False, path_type=Path),
                      "default": Path("bench-results"), "show_default": True}),
    }

def _declare() -> dict[str, Option]:
    click = _types()
    declared: dict[str, Option] = {}
    for group in (_model_options, _limit_options, _environment_options, _loop_options, _input_options,
                  _output_options, _serve_options, _batch_options, _bench_options):
        declared.update(group(click))
    return declared


# Per-command defaults that differ from the table's, declared once.
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "serve": {"max_iterations": SERVE_CEILINGS["max_iterations"], "max_depth": SERVE_CEILINGS["max_depth"],
              "max_llm_calls": SERVE_CEILINGS["max_llm_calls"], "timeout": SERVE_CEILINGS["timeout_s"]},
    "mcp": {"max_iterations": SERVE_CEILINGS["max_iterations"], "max_depth": SERVE_CEILINGS["max_depth"],
            "max_llm_calls": SERVE_CEILINGS["max_llm_calls"], "timeout": SERVE_CEILINGS["timeout_s"]},
}
COMMAND_REQUIRED: dict[str, tuple[str, ...]] = {"bench": ("model",)}
HELP_OVERRIDES: dict[str, dict[str, str]] = {
    "batch": {"max_cost": "Budget per task (USD).", "timeout": "Wall time per task (s)."},
    "bench": {"model": "The model every method uses; `simulator` starts the built-in simulated model on 127.0.0.1 "
                       "(recursive_llm.bench.simulator).", "base_url": "OpenAI-compatible server for the model."},
    "serve": {"model": "Default root model (requests name it `rlm` or `rlm/<model>`).",
              "max_iterations": "Ceiling: requests may ask for fewer.", "max_llm_calls": "Ceiling per request.",
              "timeout": "Ceiling per request (s)."},
}

# The option groups commands take.
MODELS = ("model", "sub_model", "base_url", "api_key")
LIMITS = ("max_iterations", "max_depth", "max_llm_calls", "max_tokens", "max_cost", "timeout")
INPUT = ("contexts", "include", "exclude", "encoding", "separate", "no_gitignore", "max_file_mb")
RUN = (*MODELS, *LIMITS, "environment", "allowed_models", "sandbox", "context_window", "temperature", "cache",
       "prompt_style", "tools", "hedge_after", "record_logprobs")
OUTPUT = ("as_json", "verbose", "quiet")
MEMORY = ("memory", "memory_reuse")

_TABLE: dict[str, Option] | None = None


def table() -> dict[str, Option]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _declare()
    return _TABLE


def take(*names: str, command: str | None = None):
    """A decorator adding the named options (in this order) to a click command; `command` picks its
    default and help overrides from `COMMAND_DEFAULTS` / `HELP_OVERRIDES`."""
    click = _types()
    defaults, helps = COMMAND_DEFAULTS.get(command or "", {}), HELP_OVERRIDES.get(command or "", {})

    def decorate(function):
        for name in reversed(names):
            option = table()[name]
            kwargs = dict(option.kwargs)
            if name in defaults:
                kwargs["default"] = defaults[name]
                kwargs["show_default"] = defaults[name] is not None
            if name in helps:
                kwargs["help"] = helps[name]
            if name in COMMAND_REQUIRED.get(command or "", ()):
                kwargs["required"] = True
            function = click.option(*option.flags, **kwargs)(function)
        return function
    return decorate


# RLM(...) keywords that front ends may pass under their own name (not command-line options).
_RLM_KEYWORDS = {"model", "sub_model", "base_url", "api_key", "max_depth", "max_iterations", "max_llm_calls",
                 "max_tokens", "max_cost_usd", "timeout_s", "environment", "sandbox", "worker_memory_mb",
                 "allowed_models", "sub_calls", "ray_fanout_at", "system_prompt", "verbose", "max_output_chars",
                 "cell_timeout_s", "max_concurrency", "max_retries", "call_timeout_s", "max_output_tokens",
                 "temperature", "hedge_after", "record_logprobs", "fallback_after", "schema_retries", "prompt_style", "compact_at",
                 "root_context_window", "trajectory_dir", "on_event", "store", "cache", "tools", "memory",
                 "memory_reuse"}


def rlm_keywords(values: dict[str, Any]) -> dict[str, Any]:
    """Option values -> `RLM(...)` keywords. Keys are option names (`max_cost`, `timeout`,
    `context_window`, ...) or RLM keywords (`max_cost_usd`, ...); options that are not RLM settings
    (input, output, server options) are left out; an unknown key is a bug, so it raises."""
    keywords: dict[str, Any] = {}
    for name, value in values.items():
        option = table().get(name)
        if option is not None and option.rlm is None:
            continue
        key = option.rlm if option is not None else name
        if key not in _RLM_KEYWORDS:
            raise TypeError(f"{name!r} is not an option of RLM(...)")
        if key == "allowed_models" and isinstance(value, (tuple, list)):
            value = "*" if "*" in value else list(value)
        if key == "tools" and isinstance(value, (tuple, list)):
            from ..engine.tools import import_tool

            value = [import_tool(item) if isinstance(item, str) else item for item in value] or None
        keywords[key] = value
    if "verbose" in keywords and values.get("quiet"):
        keywords["verbose"] = False
    return keywords


def declared(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters that are declared options (not its arguments, like QUESTION)."""
    return {name: value for name, value in params.items() if name in table()}


def make_rlm(values: dict[str, Any], **extra: Any):
    """The RLM that these option values describe (`extra`: keywords set by the front end itself)."""
    from ..rlm import RLM

    return RLM(**{**rlm_keywords(values), **rlm_keywords(extra)})
