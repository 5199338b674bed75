"""The REPL that model-written code runs in: the namespace of DESIGN.md's contract and cell execution.

Used by both environments: inside the worker process (the default) and in-process (opt-in). The
worker imports it, so it needs only the stdlib (DuckDB and tiktoken are imported when first used).
Sub-calls go through `call_host(kind, prompts, model, context)`,
which returns one `{"ok": bool, "text" | "error": str}` per prompt.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import sys
import threading

from ...caps import CAPTURED_CHARS  # what a cell keeps of its output at least (make_environment may keep more)
from ...context.document import as_text, split_at_lines  # as_text: the host reads it there too
from . import helpers
from ..protocol import TableRef

TYPE_CHECKING = False  # not typing's: the worker imports this module at every start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    CallHost = Callable[[str, list[str], "str | None", "Any"], list[dict]]

RESERVED = ("llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS",
            "FINAL", "FINAL_VAR")
_CELL_FILENAME = "<repl>"


class SubCallError(RuntimeError):
    """Raised inside model code when a single `llm_query` / `rlm_query` fails."""


class ToolError(RuntimeError):
    """Raised inside model code when a user tool (RLM(tools=[...])) fails in the host."""


class CappedBuffer(io.TextIOBase):
    """A text sink that keeps at most `limit` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = self.limit - self.kept
        if room > 0:
            piece = text[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def getvalue(self) -> str:
        value = "".join(self.parts)
        if self.dropped:
            value += f"\n... [{self.dropped:,} more characters of output were discarded]"
        return value


class CellStream(io.TextIOBase):
    """sys.stdout / sys.stderr while a cell runs: the cell's own threads write into its buffer;
    threads that were already running when the cell began (a daemon thread of an earlier cell)
    write where they would between cells (the worker's /dev/null), never into this cell's output."""

    def __init__(self, buffer: CappedBuffer, outside: Any, foreign: set[int]) -> None:
        self._buffer = buffer
        self._outside = outside
        self._foreign = foreign

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if threading.get_ident() in self._foreign:
            return self._outside.write(text) if self._outside is not None else len(text)
        return self._buffer.write(text)

    def flush(self) -> None:
        pass


def _batch(prompts: Any, context: Any = None) -> list[str]:
    """A call's prompts as strings. What is over the host's limits (HostBounds) is refused here,
    before anything is sent: the host would refuse it too, after holding it."""
    from ...bounds import HOST_BOUNDS

    prompts = list(prompts)
    if len(prompts) > HOST_BOUNDS.max_batch_prompts:
        raise ValueError(f"a batch of {len(prompts):,} prompts is over the limit of "
                         f"{HOST_BOUNDS.max_batch_prompts:,}; send it in smaller batches")
    prompts = [str(p) for p in prompts]
    for number, prompt in enumerate(prompts, start=1):
        if len(prompt) > HOST_BOUNDS.max_prompt_chars:
            which = f"prompt {number} has" if len(prompts) > 1 else "the prompt has"
            raise ValueError(f"{which} {len(prompt):,} characters, over the limit of {HOST_BOUNDS.max_prompt_chars:,} "
                             f"per sub-call; split the text and ask about the parts")
    size = sum(map(len, prompts)) + (len(context) if isinstance(context, str) else 0)
    if size > HOST_BOUNDS.max_call_chars:
        raise ValueError(f"the prompts hold {size:,} characters, over the limit of {HOST_BOUNDS.max_call_chars:,} "
                         f"per call; send less text at once")
    return prompts


def _bounded_answer(text: str) -> str:
    """A final answer, refused here (in the cell) when it is over the host's limit: the host never
    receives it whole (`HostBounds.max_answer_chars`)."""
    from ...bounds import HOST_BOUNDS

    if len(text) > HOST_BOUNDS.max_answer_chars:
        raise ValueError(f"the answer has {len(text):,} characters, over the limit of "
                         f"{HOST_BOUNDS.max_answer_chars:,}; answer with less (a summary, or the part asked for)")
    return text


class Memory:
    """`memory`: the run's memory workspace, read-only. Each read asks the host (JSON, never pickle);
    write with `remember(name, value, note)`."""

    __slots__ = ("_ask",)

    def __init__(self, ask: "Callable[..., Any]") -> None:
        object.__setattr__(self, "_ask", ask)

    def __getitem__(self, name: str) -> Any:
        reply = self._ask("get", name=str(name))
        if not reply["found"]:
            raise KeyError(reply["error"])
        return reply["value"]

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return [entry["name"] for entry in self._ask("list")]

    def entries(self) -> list[dict]:
        """Every entry's name, type, size, note, question, run, time and staleness (no values)."""
        return self._ask("list")

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.keys()

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self[name]) for name in self.keys()]

    def info(self, name: str) -> dict:
        """Its note, the question and run that made it, when, its documents (path -> hash), `stale`."""
        return self._ask("info", name=str(name))

    def changed(self, name: str) -> dict:
        """The document paths new, changed and removed since the entry was made."""
        return self._ask("changed", name=str(name))

    def __setitem__(self, name: str, value: Any) -> None:
        raise TypeError("memory is read-only: save a value with remember(name, value, note)")

    __delitem__ = __setitem__

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("memory is read-only: save a value with remember(name, value, note)")

    def __repr__(self) -> str:
        return f"<memory: {', '.join(self.keys()) or 'no entries'}>"


def _memory_json(value: Any) -> str:
    """A value to remember as JSON, refused here when it is not JSON or over the per-entry bound."""
    from ...bounds import HOST_BOUNDS

    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"remember: the value must be JSON data (str, numbers, bool, None, lists, dicts): "
                        f"{error}") from None
    if len(text) > HOST_BOUNDS.max_memory_value_chars:
        raise ValueError(f"remember: the value has {len(text):,} characters as JSON, over the limit of "
                         f"{HOST_BOUNDS.max_memory_value_chars:,} per entry; remember a summary, or split it")
    return text


def _message_of(reply: dict) -> str:
    return reply.get("text", "") if reply.get("ok") else f"Error: {reply.get('error', 'unknown error')}"




class REPL:
    """A persistent namespace plus `execute(code)`; state survives between cells."""

    def __init__(self, context: Any, call_host: CallHost, *, more_contexts: list[Any] = (),
                 tables: list[dict[str, Any]] = (), extra: dict[str, Any] | None = None,
                 max_captured_chars: int = CAPTURED_CHARS) -> None:
        self._call_host = call_host
        self.max_captured_chars = max_captured_chars
        self._final: str | None = None
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self._contract = {
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "SHOW_VARS": self.show_vars,
            "FINAL": self.final,
            "FINAL_VAR": self.final_var,
        }
        self.namespace.update(self._contract)
        self.sql_tables = helpers.SQLTables(list(tables))
        self._helpers = {"grep": self.grep, "chunk": self.chunk, "count_tokens": self.count_tokens,
                         "search": self.search, "semantic_search": self.semantic_search, "sql": self.sql,
                         "remember": self.remember, "memory": Memory(self._memory)}
        self.namespace.update(self._helpers)
        self._internals = {"_map_reduce": self.map_reduce,  # the host's weak-model fallback runs it
                           "_user_tool": self.user_tool,  # what the stubs of the user's tools call
                           "_new_question": self.new_question,  # a session's question begins with it
                           "ToolError": ToolError, "__builtins__": builtins}
        self.namespace.update(self._internals)
        self.namespace.update(extra or {})
        self.namespace["answer"] = {"content": "", "ready": False}
        self.set_contexts([context, *more_contexts])

    def set_contexts(self, contexts: list[Any]) -> None:
        """`context` is the first input; with several, they are also `context_0`, `context_1`, ..."""
        tables = {t["name"]: t for t in self.sql_tables._tables}
        values = [helpers.Table(c.name, tables[c.name]["path"], tables[c.name]["format"], tables[c.name]["info"],
                                self.sql_tables) if isinstance(c, TableRef) else c for c in contexts]
        self._inputs = {"context": values[0]}
        if len(values) > 1:
            self._inputs.update({f"context_{index}": value for index, value in enumerate(values)})
        self.namespace.update(self._inputs)

    def new_question(self) -> None:
        """A session's next question starts with the inputs as loaded (`context`, `context_N`: an
        earlier question may have bound them to anything) and `answer` unanswered; the model's own
        variables stay. Within a question the model may rebind `context` as it likes."""
        self.namespace.update(self._inputs)
        self.namespace["answer"] = {"content": "", "ready": False}

    # -- exploration helpers (environments/helpers.py) ------------------------------------------
    def grep(self, pattern: str, source: Any = None, *, literal: bool | None = None, ignore_case: bool = False,
             context_lines: int = 0, max_results: int = 100) -> helpers.GrepResult:
        """Lines matching a regex (or a literal) in `source` (default: context), with line numbers."""
        return helpers.grep(pattern, self.namespace.get("context") if source is None else source, literal=literal,
                            ignore_case=ignore_case, context_lines=context_lines, max_results=max_results)

    def chunk(self, source: Any = None, size: int | None = None, by: str = "chars", overlap: int = 0) -> list:
        """Split `source` (default: context) by chars, tokens, lines or paragraphs."""
        from ...context.tokens import get_encoding

        return helpers.chunk(self.namespace.get("context") if source is None else source, size, by, overlap,
                             encode_decode=get_encoding)

    def count_tokens(self, text: Any = None, encoding: str = "o200k_base") -> int:
        """Exact token count (tiktoken's o200k_base by default) of a text, or of every item of a list."""
        from ...context.tokens import count_tokens

        source = self.namespace.get("context") if text is None else text
        return sum(count_tokens(t, encoding) for _, t in helpers._texts(source))

    def _tool(self, name: str, **arguments: Any) -> Any:
        reply = self._call_host("tool", [json.dumps(arguments)], name, None)[0]
        if not reply.get("ok"):
            raise SubCallError(reply.get("error", f"{name} failed"))
        return json.loads(reply["text"])

    def user_tool(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Call the user's tool `name` in the host; arguments and result travel as JSON."""
        try:
            arguments = json.dumps({"args": list(args), "kwargs": dict(kwargs)})
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name}: its arguments must be JSON values (str, numbers, lists, dicts): {error}") from None
        reply = self._call_host("tool", [arguments], f"user:{name}", None)[0]
        if not reply.get("ok"):
            raise ToolError(reply.get("error", f"{name} failed"))
        return json.loads(reply["text"])

    def _memory(self, op: str, **arguments: Any) -> Any:
        reply = self._call_host("tool", [json.dumps(arguments)], "memory:" + op, None)[0]
        if not reply.get("ok"):
            raise SubCallError(reply.get("error", f"memory {op} failed"))
        return json.loads(reply["text"])

    def remember(self, name: str, value: Any, note: str = "") -> dict:
        """Save a JSON value under `name` in the run's memory workspace, with a short note."""
        return self._memory("remember", name=str(name), value=_memory_json(value), note=str(note))

    def search(self, query: str, k: int = 10) -> list:
        """BM25 full-text search over the input's passages; best first, each with .path and .line."""
        return [helpers.SearchHit(h["text"], h["path"], h["line"], h["score"])
                for h in self._tool("search", query=str(query), k=int(k))]

    def semantic_search(self, query: str, k: int = 10) -> list:
        """Passages closest in meaning to `query` (embeddings), best first."""
        return [helpers.SearchHit(h["text"], h["path"], h["line"], h["score"])
                for h in self._tool("semantic_search", query=str(query), k=int(k))]

    def sql(self, query: str, db: str | None = None, max_rows: int = 10_000) -> helpers.Rows:
        """Run SQL on the input's tables (DuckDB; SQLite's own SQL for .sqlite inputs, `db=` picks one)."""
        return self.sql_tables.sql(query, db=db, max_rows=max_rows)

    # -- the contract ---------------------------------------------------------------------------
    def llm_query(self, prompt: str, model: str | None = None) -> str:
        """Ask a sub-model one question; returns its reply text."""
        reply = self._call_host("llm", _batch([prompt]), model, None)[0]
        if not reply.get("ok"):
            raise SubCallError(reply.get("error", "sub-call failed"))
        return reply["text"]

    def llm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        """Ask many questions concurrently; replies in input order, a failure as an 'Error: ...' slot."""
        if isinstance(prompts, str):
            raise TypeError("llm_query_batched takes a list of prompts; use llm_query for one prompt")
        prompts = _batch(prompts)
        if not prompts:
            return []
        return [_message_of(reply) for reply in self._call_host("llm", prompts, model, None)]

    def rlm_query(self, prompt: str, model: str | None = None, context: Any = None) -> str:
        """Hand a sub-task to a child RLM with its own REPL (`context` defaults to the prompt)."""
        reply = self._call_host("rlm", _batch([prompt], context), model, context)[0]
        if not reply.get("ok"):
            raise SubCallError(reply.get("error", "child run failed"))
        return reply["text"]

    def rlm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        """Several child RLMs concurrently; replies in input order, a failure as an 'Error: ...' slot."""
        if isinstance(prompts, str):
            raise TypeError("rlm_query_batched takes a list of prompts; use rlm_query for one prompt")
        prompts = _batch(prompts)
        if not prompts:
            return []
        return [_message_of(reply) for reply in self._call_host("rlm", prompts, model, None)]

    def show_vars(self) -> dict[str, str]:
        """The variables the code has defined so far, with their types."""
        hidden = set(self.provided()) | {"__name__", "answer"}
        return {name: type(value).__name__ for name, value in self.namespace.items()
                if name not in hidden and not name.startswith("_") and not isinstance(value, type(sys))}

    def final(self, answer: Any) -> None:
        """End the run with `answer` once this cell finishes."""
        self._final = _bounded_answer(str(answer))

    def final_var(self, name: Any) -> None:
        """End the run with the value of the REPL variable `name` once this cell finishes.

        Models also write `FINAL_VAR(my_var)` (the value, not the name): a value that is not the
        name of a variable is taken as the answer itself.
        """
        if isinstance(name, str) and name.isidentifier() and name in self.namespace:
            self._final = _bounded_answer(str(self.namespace[name]))
        elif isinstance(name, str) and name.isidentifier() and len(name) < 64:
            defined = ", ".join(sorted(self.show_vars())) or "none"
            raise NameError(f"FINAL_VAR: no variable named {name!r} (defined: {defined})")
        else:
            self._final = _bounded_answer(str(name))

    # -- the weak-model fallback (see recursive_llm.engine.fallback) ------------------------------------
    def map_reduce(self, query: str, chunk_chars: int, strict: bool = False) -> str | None:
        """Ask the sub-model about every chunk of `context` (a table as rows of text), each allowed
        to say NOT FOUND, and combine what they found; None: no chunk answered (map_reduce.py)."""
        from . import map_reduce

        context = self.namespace.get("context")
        text = map_reduce.as_rows_text(context) if isinstance(context, helpers.Table) else as_text(context)
        return map_reduce.run(text, query, chunk_chars, self.llm_query_batched, strict=strict)

    # -- cells ----------------------------------------------------------------------------------
    def get_variable(self, name: str) -> dict:
        if name not in self.namespace or name in self._contract:
            defined = ", ".join(sorted(self.show_vars())) or "none"
            return {"ok": False, "error": f"no variable named {name!r} in the REPL (defined: {defined})"}
        try:
            return {"ok": True, "text": _bounded_answer(str(self.namespace[name]))}
        except BaseException as error:  # a __str__ of the model's that raises (or exits) must not end the REPL
            return {"ok": False, "error": f"str({name}) failed: {type(error).__name__}: {error}"}

    def provided(self) -> dict[str, Any]:
        """Every name the REPL provides: its contract, the helpers (`memory`, `search`, ...) and what
        the host's code and the tools' stubs call. A cell may shadow one; the next starts with these."""
        return {**self._contract, **self._helpers, **self._internals}

    def restore_provided(self) -> list[str]:
        """Bind every provided name to the REPL's own again; the names a cell had rebound or deleted."""
        provided = self.provided()
        changed = [name for name, value in provided.items() if self.namespace.get(name) is not value]
        self.namespace.update(provided)
        return changed

    def execute(self, code: str) -> dict:
        """Run one cell like a notebook: the value of a last bare expression is printed."""
        self._final = None
        stdout = CappedBuffer(self.max_captured_chars)
        stderr = CappedBuffer(self.max_captured_chars)
        error = None
        foreign = set(sys._current_frames()) - {threading.get_ident()}
        saved = sys.stdout, sys.stderr
        sys.stdout = CellStream(stdout, saved[0], foreign)
        sys.stderr = CellStream(stderr, saved[1], foreign)
        try:
            try:
                tree = ast.parse(code, filename=_CELL_FILENAME, mode="exec")
                last_expr = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    last_expr = ast.Expression(tree.body.pop().value)
                exec(compile(tree, _CELL_FILENAME, "exec"), self.namespace)
                if last_expr is not None:
                    value = eval(compile(last_expr, _CELL_FILENAME, "eval"), self.namespace)
                    if value is not None:
                        print(repr(value))
            except SyntaxError as exc:
                import traceback  # on an error only: with linecache and tokenize, 4 ms of each start

                error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
                stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
            except (Exception, SystemExit) as exc:  # report everything the cell raised; exit() too
                import traceback

                error = f"{type(exc).__name__}: {exc}"
                frames = traceback.extract_tb(exc.__traceback__)
                user_frames = [f for f in frames if f.filename == _CELL_FILENAME] or frames[-1:]
                stderr.write("Traceback (most recent call last):\n")
                stderr.write("".join(traceback.format_list(user_frames)))
                stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
        finally:
            sys.stdout, sys.stderr = saved
        changed = self.restore_provided()
        if changed:
            stderr.write(f"\nNote: {', '.join(changed)} cannot be replaced (the REPL provides them); the "
                         f"originals were restored: give your variables other names.\n")
        final = self._final
        answer = self.namespace.get("answer")
        # a plain dict only: a subclass's `get` could say `ready` in every later cell and question
        if final is None and type(answer) is dict and dict.get(answer, "ready"):
            answer["ready"] = False  # reported once; a later turn (a session) starts unanswered
            try:
                final = _bounded_answer(str(dict.get(answer, "content", "")))
            except ValueError as exc:
                error = error or f"ValueError: {exc}"
                stderr.write(f"\nValueError: {exc}\n")
        return {"stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "error": error, "final": final}
