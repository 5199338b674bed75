"""What the `rlm` commands share, so that `cli.py` holds only the commands: exit codes and the
one place exceptions become them, reading the input (a piped stdin too), checking the model before
a run, printing results and summaries, and saving a run's options for `--resume`."""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from pathlib import Path

import click


EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_CONFIG, EXIT_LIMIT, EXIT_FAILED = 0, 1, 2, 3, 4, 5, 6


EXIT_NOT_FOUND = 8  # the run looked at the whole input and found no answer to the question
EXIT_INTERRUPTED = 130


# One exit code per result.StopReason (a test holds every reason to having one).
_EXIT_BY_STOP = {"final": EXIT_OK, "max_iterations": EXIT_LIMIT, "budget": EXIT_LIMIT,
                 "timeout": EXIT_LIMIT, "error": EXIT_FAILED, "not_found": EXIT_NOT_FOUND,
                 "interrupted": EXIT_INTERRUPTED}


def _err(message: str) -> None:
    click.echo(message, err=True)


def exit_code_of(error: BaseException) -> int:
    """The one mapping from exception types to exit codes."""
    from ..errors import RLMError

    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, click.UsageError):
        return EXIT_USAGE
    if isinstance(error, RLMError):
        return error.exit_code
    return EXIT_INTERNAL


def _fail(error: BaseException, as_json: bool = False, note: str | None = None):
    """Report `error` (JSON on stdout under --json, else a line on stderr) and exit with its code."""
    code = exit_code_of(error)
    from .preflight import friendlier

    message = note or ("interrupted" if isinstance(error, KeyboardInterrupt)
                       else friendlier(str(error), api_key_option=_takes_api_key()))
    if as_json:
        click.echo(json.dumps({"error": {"type": type(error).__name__, "message": message, "exit_code": code}},
                              ensure_ascii=False))
    else:
        _err(("" if isinstance(error, KeyboardInterrupt) else "Error: ") + message)
    sys.exit(code)


def _takes_api_key() -> bool:
    """Whether the command being run has an --api-key option (`serve` and `mcp` refuse one)."""
    context = click.get_current_context(silent=True)
    return context is None or any(param.name == "api_key" for param in context.command.params)


def _exits(function):
    """Turn RLMErrors (and Ctrl-C) raised by a command into a message and the exit code."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from ..errors import RLMError

        try:
            return function(*args, **kwargs)
        except (RLMError, KeyboardInterrupt) as error:
            _fail(error, bool(kwargs.get("as_json")))
    return wrapper


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        from ..errors import ContextError

        raise ContextError(f"stdin is not valid UTF-8 (byte {error.start}); convert it first, e.g. "
                           f"`iconv -f latin1 -t utf-8`") from None


def _read_context(sources: tuple[str, ...]):
    """`-` is stdin; one path is that file or directory; several paths are a list of documents."""
    if not sources:
        return None
    if "-" in sources:
        if len(sources) > 1:
            raise click.UsageError("--context - (stdin) cannot be combined with other --context paths")
        return _read_stdin()
    paths = [Path(source) for source in sources]
    return paths[0] if len(paths) == 1 else paths


def _summary(result, tally=None) -> str:
    total = result.usage.total
    iterations = f"{result.iterations} iteration" + ("" if result.iterations == 1 else "s")
    calls = tally.calls() if tally is not None else f"{total.calls} model call" + ("" if total.calls == 1 else "s")
    parts = [f"run {result.run_id}", result.stopped_reason, iterations, calls, f"{total.total_tokens:,} tokens",
             f"${result.cost_usd:.4f}", f"{result.duration_s:.1f}s"]
    if total.hedged:
        parts.append(f"{total.hedged} hedged")
    if result.used_fallback:
        parts.append("map-reduce fallback")
    return " · ".join(parts) + (f"\ntrajectory: {result.trajectory_path}" if result.trajectory_path else "")


def _load_options(params: dict) -> dict:
    return {"include": list(params["include"]) or None, "exclude": list(params["exclude"]) or None,
            "encoding": params["encoding"], "gitignore": not params["no_gitignore"],
            "max_file_bytes": int(params["max_file_mb"] * 1_000_000)}


def _inputs(params: dict, context) -> tuple[object, dict]:
    """The input and the load options: with --separate, several paths are inputs of their own."""
    load_options = _load_options(params)
    if params["separate"] and isinstance(context, list):
        load_options["contexts"], context = context, None
    return context, load_options


def _stdin_as_input(params: dict) -> None:
    """`cat file | rlm ask "question"`: a piped (or redirected) stdin is the input when no --context."""
    if params["contexts"] or params["resume"] or sys.stdin is None or sys.stdin.isatty():
        return
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISFIFO(mode) or stat.S_ISREG(mode):
        params["contexts"] = ("-",)


def _prepare_model(params: dict) -> None:
    """Stored keys, then the model checked before any run starts (exit 4), and said when it is the
    embedded smoke-test model."""
    from .preflight import embedded_notice

    _check_model(params)
    resolved = params.get("model") or _default_model_name()
    notice = embedded_notice(params.get("model"), resolved)
    if "fallback_after" in params and params["fallback_after"] is None:
        del params["fallback_after"]  # the library's default: at once for the embedded model (fallback.py)
    if notice and not params.get("quiet"):
        _err(notice)


def _load_inputs(params: dict, context) -> list:
    from ..context.loader import load_inputs
    from ..errors import ContextError

    context, load_options = _inputs(params, context)
    sources = ([] if context is None else [context]) + list(load_options.pop("contexts", None) or [])
    if not sources:  # a terminal's stdin is never read as the input: say how to give one
        raise ContextError("no input: give --context PATH (a file or a directory), or pipe it: "
                           "cat FILE | rlm ask QUESTION")
    return load_inputs(sources, **load_options)


def _read_schema(path: Path | str | None):
    from ..engine.answer_schema import AnswerSchema
    from ..errors import ConfigError

    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ConfigError(f"--schema {path}: not a JSON schema file ({error})") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"--schema {path}: a JSON schema is an object, e.g. {{\"type\": \"object\", ...}}")
    return AnswerSchema(schema)


def _print_result(result, params: dict, tally=None, skipped=()) -> None:
    if params["as_json"]:
        data = result.to_dict()
        data["skipped_files"] = [{"path": str(s.path), "reason": s.reason} for s in skipped]
        if tally is not None:
            data["calls"] = {"replayed": tally.replayed, "cached": tally.cached, "live": tally.live}
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif params.get("schema_file") and result.parsed is not None:
        from ..result import _plain

        click.echo(json.dumps(_plain(result.parsed), indent=2, ensure_ascii=False))
    elif result.answer is not None:
        click.echo(result.answer)
    if not params["quiet"]:
        if result.stopped_reason != "final":
            _err(f"Stopped: {result.stopped_reason}" + (f" ({result.error})" if result.error else ""))
        if skipped:
            _err(f"skipped {len(skipped)} file(s): " + "; ".join(f"{s.path} ({s.reason})" for s in skipped[:20])
                 + (f"; ... {len(skipped) - 20} more (--json lists them all)" if len(skipped) > 20 else ""))
        _err(_summary(result, tally))
    sys.exit(_EXIT_BY_STOP.get(result.stopped_reason, EXIT_INTERNAL))


def _chat_loop(session, params: dict) -> int:
    from ..errors import RLMError

    interactive = sys.stdin.isatty()
    if interactive and not params["quiet"]:
        _err(f"rlm chat · session {session.session_id} · ask a question; `exit` or Ctrl-D ends it")
    exit_code = EXIT_OK
    while True:
        try:
            question = input("rlm> " if interactive else "")
        except EOFError:
            return exit_code
        if question.strip() in ("exit", "quit"):
            return exit_code
        if not question.strip():
            continue
        try:
            result = session.ask(question, run_config=_chat_run_params(params, question))
        except RLMError as error:
            _err(f"Error: {error}")
            exit_code = exit_code_of(error)
            continue
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False) if params["as_json"] else (result.answer or ""))
        if not params["quiet"]:
            _err(_summary(result))
        if result.stopped_reason != "final":
            exit_code = _EXIT_BY_STOP.get(result.stopped_reason, EXIT_INTERNAL)


def _chat_run_params(params: dict, question: str) -> dict:
    """What `rlm ask --resume` needs to redo one question of `rlm chat` (as `_new_run_params`)."""
    saved, _ = _new_run_params(params)
    saved["cli"]["question"] = question
    return saved


# Options that only change how a run is shown (or are secret); the rest is saved so --resume can redo it.

_OUTPUT_OPTIONS = ("as_json", "verbose", "quiet", "resume", "api_key")


_MAX_SAVED_STDIN = 20_000_000


def _new_run_params(params: dict) -> tuple[dict, str | None]:
    """What to save for --resume, and the stdin text if the input is stdin (read once, here)."""
    stdin_text = None
    if "-" in params["contexts"]:
        stdin_text = _read_context(tuple(params["contexts"]))
    saved = {key: list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
             for key, value in params.items() if key not in _OUTPUT_OPTIONS}
    saved["contexts"] = [c if c == "-" else str(Path(c).resolve()) for c in params["contexts"]]
    keep_stdin = stdin_text is not None and len(stdin_text) <= _MAX_SAVED_STDIN
    return {"cli": saved, "stdin": stdin_text if keep_stdin else None}, stdin_text


def _resume_params(params: dict) -> tuple[dict, str | None]:
    """Restore a run's saved options into `params` (in place) for `--resume`."""
    from ..errors import ConfigError, ContextError

    store = _open_store()
    run_id = _resolve_run(store, params["resume"])
    saved = store.run_config(run_id)
    config = saved["config"] or {}
    if "cli" not in config:
        raise ConfigError(f"run {run_id} was not started by `rlm ask`; resume it from Python with "
                          f"rlm.completion(query, context, resume_from={run_id!r})")
    params.update({key: value for key, value in config["cli"].items() if key in params})
    params["resume"] = run_id
    stdin_text = config.get("stdin")
    if "-" in params["contexts"] and stdin_text is None:
        raise ContextError(f"run {run_id} read a large input from stdin that was not saved; run it again instead")
    if saved["status"] == "final":
        _err(f"Note: run {run_id} already finished; resuming replays all of its calls")
    return config, stdin_text


def _open_store():
    from ..record.store import Store

    return Store()


def _resolve_run(store, run_id: str) -> str:
    from ..errors import ConfigError

    try:
        return store.find_run(run_id)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None


def _check_model(params: dict) -> None:
    """Fail now (exit 4) on an unknown model, a missing key or a missing local file, before any run."""
    from ..keys import apply_stored_keys
    from .preflight import check_model

    apply_stored_keys()
    check_model(params.get("model"), params.get("base_url"), params.get("api_key"))


def _default_model_name() -> str:
    from ..models.resolver import default_model_name

    return default_model_name()


def _default_model_shown() -> str:
    name = _default_model_name()
    if name == "default" and os.environ.get("OPENAI_BASE_URL"):
        return f"the model served at OPENAI_BASE_URL ({os.environ['OPENAI_BASE_URL']}); name one with -m or RLM_MODEL"
    return name
