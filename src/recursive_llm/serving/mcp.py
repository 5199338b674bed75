"""`rlm mcp`: recursive-llm as an MCP server over stdio (the official `mcp` SDK, 2.x).

An editor's assistant (or any MCP client) gets two tools:
- `load_context(text=None, paths=None)`: load an input once (text, or files and directories
  under the server's root) and get a `context_id` and a short description of it;
- `ask(question, context_id=None, text=None, max_iterations=None)`: run an RLM over a loaded
  input (or over `text`) and get the answer, the run id (`rlm view RUN_ID` shows the run) and usage.
Stdout is the protocol channel: nothing else may print there, so runs are quiet and log to stderr.
"""


import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ..cli.options import make_rlm, rlm_keywords
from ..config import Limits
from ..errors import RLMError
from .limits import LIMIT_NAMES, as_keywords, clamp, serve_ceilings
from .paths import path_under_root

INSTRUCTIONS = ("Recursive Language Model tools: for questions about inputs too large for your context "
                "(long documents, many files, logs, tables). Load the input once with load_context, then call "
                "ask with its context_id; the RLM reads the input with code and sub-model calls and returns an "
                "answer and a run id.")


@dataclass
class MCPConfig:
    """`root`: only files under it can be loaded. `rlm`: option values for every run's RLM (the names
    of `options.py`, e.g. model, max_iterations, timeout). Its limits are the server's ceilings
    (`limits.serve_ceilings`: the serve ceilings are the defaults, as `rlm serve` has them), which a
    request may lower (`max_iterations`), never raise; `rlm` keeps the other options."""

    root: Path = field(default_factory=Path.cwd)
    rlm: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        keywords = rlm_keywords(self.rlm)
        self.limits = serve_ceilings(**{k: v for k, v in keywords.items() if k in LIMIT_NAMES})
        self.rlm = {k: v for k, v in keywords.items() if k not in LIMIT_NAMES}


# Every tool argument with its description (the input schemas clients show and models read).
TextArg = Annotated[str | None, Field(description="The input itself, as text (always text, never read as a path). "
                                                  "Give this or `paths`.")]
PathsArg = Annotated[list[str] | None, Field(description="Files or directories to load, relative to the server's "
                                                         "root (nothing outside it). Give this or `text`.")]
QuestionArg = Annotated[str, Field(description="The question to answer about the input.")]
ContextIdArg = Annotated[str | None, Field(description="The context_id that load_context returned. Give this or "
                                                       "`text`.")]
AskTextArg = Annotated[str | None, Field(description="The input as text, for a one-off question without "
                                                     "load_context. Give this or `context_id`.")]
IterationsArg = Annotated[int | None, Field(description="At most this many root-model turns (it can lower the "
                                                        "server's limit, not raise it).", ge=1)]


def create_server(config: MCPConfig):
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from .. import __version__
    from ..context.loader import format_metadata, load_context, load_context_value

    server = MCPServer("recursive-llm", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    contexts: dict[str, Any] = {}
    root = config.root.resolve()

    @server.tool(name="load_context",
                 description="Load an input for later questions: `text`, or `paths` (files or directories "
                             "relative to the server's root). Returns its context_id and a description.")
    def load_context_tool(text: TextArg = None, paths: PathsArg = None) -> dict[str, Any]:
        try:
            return load(text, paths)
        except RLMError as error:  # a clear message for the client, never a server traceback
            raise ToolError(str(error)) from None

    def load(text: str | None, paths: list[str] | None) -> dict[str, Any]:
        if (text is None) == (paths is None):
            raise ToolError("give exactly one of `text` or `paths`")
        if text is not None:
            loaded = load_context_value(text)
        else:
            resolved = [loadable(root, p) for p in paths or []]
            if not resolved:
                raise ToolError("`paths` is empty")
            loaded = load_context(resolved[0] if len(resolved) == 1 else resolved)
        context_id = "ctx-" + secrets.token_hex(4)
        contexts[context_id] = loaded
        return {"context_id": context_id, "description": format_metadata(loaded.metadata),
                "skipped_files": [f"{s.path}: {s.reason}" for s in loaded.skipped]}

    @server.tool(description="Answer a question about a loaded input (context_id) or about `text`, with a "
                             "Recursive Language Model. Returns the answer, the run id and usage.")
    async def ask(question: QuestionArg, context_id: ContextIdArg = None, text: AskTextArg = None,
                  max_iterations: IterationsArg = None) -> dict[str, Any]:
        if context_id is not None:
            if context_id not in contexts:
                raise ToolError(f"unknown context_id {context_id!r}; call load_context first")
            context = contexts[context_id]
        elif text is not None:
            try:
                context = load_context_value(text)
            except RLMError as error:
                raise ToolError(str(error)) from None
        else:
            raise ToolError("give a context_id (from load_context) or the text to ask about")
        try:
            rlm = make_rlm(config.rlm, **as_keywords(limits_for(config, max_iterations)))
            result = await rlm.acompletion(question, context)
        except RLMError as error:
            raise ToolError(str(error)) from None
        if result.answer is None:  # a failed run is a tool error, never an answer of null
            raise ToolError(f"the run ended ({result.stopped_reason}) without an answer: {result.error} "
                            f"(rlm view {result.run_id} shows it)")
        return {"answer": result.answer, "run_id": result.run_id, "stopped_reason": result.stopped_reason,
                "iterations": result.iterations, "usage": result.usage.total.to_dict(),
                "error": result.error}

    return server


def loadable(root: Path, name: str) -> Path:
    """A name a client gave in `paths`, as a real path under the server's root (`paths.path_under_root`)."""
    return path_under_root(root, name, root_called=f"this server's root ({root.name}/)")


def limits_for(config: MCPConfig, max_iterations: int | None) -> Limits:
    """The server's ceilings, lowered by the request (`limits.clamp`, as `rlm serve` does)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return clamp(config.limits, None if max_iterations is None else {"max_iterations": max_iterations})
    except ValueError as error:
        raise ToolError(str(error)) from None


def run_stdio(config: MCPConfig) -> None:
    create_server(config).run("stdio")
