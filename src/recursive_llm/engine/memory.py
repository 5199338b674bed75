"""Memory across questions: named workspaces of values that runs `remember`, with their provenance.

`RLM(memory="contracts")` / `rlm ask --memory contracts` / a `memory` field in an `rlm serve`
request names a workspace. Model code writes to it only through `remember(name, value, note)` and
reads it through the read-only `memory` mapping; both are host calls over the worker's channel
(`SubCalls._tool` -> `RunMemory.serve`), JSON only, never pickle, bounded by `HostBounds`
(`max_memory_value_chars`, `max_memory_run_chars`, `max_memory_workspace_chars`,
`max_memory_entries`).

Each entry records the documents (path and content hash) of the run that made it. Every run
records the documents it has as the workspace's current ones, so an entry whose documents differ
is *stale*, and `changed(name)` lists the new, changed and removed documents.

Workspaces live in one SQLite file beside the run store, `RLM_HOME/memory.db`, keyed by an owner:
"" for local use, the client's namespace on `rlm serve` (one client never sees another's).
With `memory_reuse`, sub-call answers are kept per workspace and a repeated (model, prompt) is
answered from there at any temperature (`RunMemory.reused`), recorded as an `llm_call` with
`cached: "memory"` and counted in the usage's `cached_calls`, not paid.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bounds import HOST_BOUNDS
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..context.loader import LoadedContext
    from ..models.base import Completion

WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENTRY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
MAX_NOTE_CHARS = 2_000
MAX_LISTED_DOCUMENTS = 20  # per kind of change, in the prompt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    owner TEXT NOT NULL, workspace TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    type TEXT NOT NULL, size INTEGER NOT NULL, note TEXT NOT NULL, question TEXT, run_id TEXT,
    created REAL NOT NULL, docs TEXT NOT NULL, PRIMARY KEY (owner, workspace, name));
CREATE TABLE IF NOT EXISTS workspaces (
    owner TEXT NOT NULL, workspace TEXT NOT NULL, docs TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (owner, workspace));
CREATE TABLE IF NOT EXISTS answers (
    owner TEXT NOT NULL, workspace TEXT NOT NULL, key TEXT NOT NULL, text TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (owner, workspace, key));
"""


class MemoryRefused(ValueError):
    """What model code (or the user) asked of a workspace cannot be done; the message says why and what to do."""


def default_path() -> Path:
    from ..paths import rlm_home

    return rlm_home() / "memory.db"


def check_workspace_name(name: Any) -> str:
    if not isinstance(name, str) or not WORKSPACE_NAME.fullmatch(name):
        raise ConfigError(f"memory workspace name {name!r} is not valid: use 1 to 64 letters, digits, '.', '_' "
                          f"or '-', starting with a letter or digit (e.g. --memory contracts)")
    return name


# -- documents -----------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def document_hashes(inputs: list["LoadedContext"]) -> dict[str, str]:
    """path -> sha256 of each document the run has: a directory's files by their paths, a large
    text file by its path (hashed as it is on disk), other inputs by their source or position."""
    from ..context.textfile import TextFile
    from ..context.document import as_text

    documents: dict[str, str] = {}
    for index, loaded in enumerate(inputs):
        value, name = loaded.value, loaded.source or f"context_{index}"
        if isinstance(value, (list, tuple)) and value and all(getattr(v, "path", "") for v in value):
            for item in value:
                documents[str(item.path)] = _digest(str(item).encode("utf-8", "surrogatepass"))
        elif isinstance(value, TextFile):
            documents[name] = _file_digest(value.path)
        elif loaded.tables:
            for table in loaded.tables:
                documents[str(table.path)] = _file_digest(Path(table.path))
        else:
            documents[name] = _digest(as_text(value).encode("utf-8", "surrogatepass"))
    return documents


def diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """The documents `new` has that `old` had not, those whose content changed, and those removed."""
    return {"new": sorted(set(new) - set(old)),
            "changed": sorted(p for p in set(new) & set(old) if new[p] != old[p]),
            "removed": sorted(set(old) - set(new))}


def _type_of(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parse(value_json: str) -> Any:
    def refuse(constant: str) -> Any:
        raise MemoryRefused(f"{constant} is not a JSON value; remember finite numbers only")

    try:
        return json.loads(value_json, parse_constant=refuse)
    except (ValueError, RecursionError) as error:
        if isinstance(error, MemoryRefused):
            raise
        raise MemoryRefused(f"the value is not valid JSON ({error}); remember str, numbers, lists and dicts") from None


class Workspace:
    """One named workspace of one owner, in `RLM_HOME/memory.db` (or `path`)."""

    def __init__(self, name: str, *, owner: str = "", path: str | Path | None = None) -> None:
        self.name = check_workspace_name(name)
        self.owner = owner
        self.path = Path(path) if path else default_path()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            from ..paths import private_dir
            from ..record.store import _private_file

            private_dir(self.path.parent)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 30000")
            for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                _private_file(path)
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _query(self, sql: str, *params: Any) -> list[tuple]:
        with self._lock:
            return self._connect().execute(sql, (self.owner, self.name, *params)).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- reading ---------------------------------------------------------------------------------
    def documents(self) -> dict[str, str]:
        """The documents of the workspace's latest run (what entries are compared with)."""
        rows = self._query("SELECT docs FROM workspaces WHERE owner = ? AND workspace = ?")
        return json.loads(rows[0][0]) if rows else {}

    def entries(self) -> list[dict[str, Any]]:
        """Every entry without its value: name, type, size, note, question, run, when, stale."""
        current = self.documents()
        rows = self._query("SELECT name, type, size, note, question, run_id, created, docs FROM entries "
                           "WHERE owner = ? AND workspace = ? ORDER BY name")
        return [_entry(row, current) for row in rows]

    def info(self, name: str) -> dict[str, Any]:
        """One entry's note, question, run, time, documents (path -> hash), staleness and changes."""
        rows = self._query("SELECT name, type, size, note, question, run_id, created, docs FROM entries "
                           "WHERE owner = ? AND workspace = ? AND name = ?", name)
        if not rows:
            raise KeyError(self._missing(name))
        current = self.documents()
        entry = _entry(rows[0], current)
        entry["documents"] = json.loads(rows[0][7])
        entry["changes"] = diff(entry["documents"], current)
        return entry

    def value_json(self, name: str) -> str:
        rows = self._query("SELECT value FROM entries WHERE owner = ? AND workspace = ? AND name = ?", name)
        if not rows:
            raise KeyError(self._missing(name))
        return rows[0][0]

    def _missing(self, name: str) -> str:
        names = [e["name"] for e in self.entries()]
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        return f"memory workspace {self.name!r} has no entry {name!r} (entries: {shown})"

    def held_chars(self, db: sqlite3.Connection, *, besides: str) -> tuple[int, int]:
        """(characters, entries) the workspace holds, not counting the entry `besides` (lock held)."""
        row = db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM entries WHERE owner = ? AND workspace = ? "
                         "AND name != ?", (self.owner, self.name, besides)).fetchone()
        return int(row[0]), int(row[1])

    # -- writing ---------------------------------------------------------------------------------
    def set_documents(self, documents: dict[str, str]) -> None:
        self._query("INSERT INTO workspaces (owner, workspace, docs, updated) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (owner, workspace) DO UPDATE SET docs = excluded.docs, updated = excluded.updated",
                    json.dumps(documents, sort_keys=True), time.time())

    def put(self, name: str, value_json: str, note: str, *, question: str | None, run_id: str | None,
            documents: dict[str, str]) -> dict[str, Any]:
        """Save a checked value (`check_entry`); bounded by what the workspace may hold."""
        value = check_entry(name, value_json, note)
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")  # the bounds hold against other processes writing at once
            try:
                self._check_room(db, name, len(value_json))
                db.execute("INSERT OR REPLACE INTO entries (owner, workspace, name, value, type, size, note, question, "
                           "run_id, created, docs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (self.owner, self.name, name, value_json, _type_of(value), len(value_json), note, question,
                            run_id, time.time(), json.dumps(documents, sort_keys=True)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"name": name, "type": _type_of(value), "size": len(value_json)}

    def _check_room(self, db: sqlite3.Connection, name: str, size: int) -> None:
        held, count = self.held_chars(db, besides=name)
        if held + size > HOST_BOUNDS.max_memory_workspace_chars:
            raise MemoryRefused(f"memory workspace {self.name!r} holds {held:,} characters; with this value it would "
                                f"pass its limit of {HOST_BOUNDS.max_memory_workspace_chars:,}: forget entries "
                                f"(rlm memory forget NAME) or remember less")
        if count + 1 > HOST_BOUNDS.max_memory_entries:
            raise MemoryRefused(f"memory workspace {self.name!r} holds {count:,} entries, its limit: forget some or "
                                f"keep related values together in one dict")

    def forget(self, name: str) -> bool:
        with self._lock:
            cursor = self._connect().execute("DELETE FROM entries WHERE owner = ? AND workspace = ? AND name = ?",
                                             (self.owner, self.name, name))
            return cursor.rowcount > 0

    # -- sub-call answers (memory_reuse) -----------------------------------------------------------
    def answer(self, key: str) -> str | None:
        rows = self._query("SELECT text FROM answers WHERE owner = ? AND workspace = ? AND key = ?", key)
        return rows[0][0] if rows else None

    def keep_answer(self, key: str, text: str) -> None:
        self._query("INSERT OR REPLACE INTO answers (owner, workspace, key, text, created) VALUES (?, ?, ?, ?, ?)",
                    key, text, time.time())


def list_workspaces(*, owner: str = "", path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every workspace of `owner` that holds entries: name, entries, characters."""
    probe = Workspace("x", owner=owner, path=path)
    try:
        with probe._lock:
            rows = probe._connect().execute(
                "SELECT workspace, COUNT(*), SUM(size) FROM entries WHERE owner = ? GROUP BY workspace "
                "ORDER BY workspace", (owner,)).fetchall()
    finally:
        probe.close()
    return [{"workspace": w, "entries": n, "chars": int(size or 0)} for w, n, size in rows]


def _entry(row: tuple, current: dict[str, str]) -> dict[str, Any]:
    name, type_, size, note, question, run_id, created, docs = row
    return {"name": name, "type": type_, "size": size, "note": note, "question": question, "run_id": run_id,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created)) + " UTC",
            "stale": json.loads(docs) != current}


def check_entry(name: Any, value_json: Any, note: Any) -> Any:
    """The parsed value, after checking the name, note and size (what model code may send)."""
    if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
        raise MemoryRefused(f"remember: name {name!r} is not valid: use 1 to 128 letters, digits, '_', '.', ':' "
                            f"or '-' (e.g. 'clause_findings')")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise MemoryRefused(f"remember: the note must be a str of at most {MAX_NOTE_CHARS:,} characters "
                            f"saying what the value holds")
    if not isinstance(value_json, str):
        raise MemoryRefused("remember: the value must arrive as JSON text")
    if len(value_json) > HOST_BOUNDS.max_memory_value_chars:
        raise MemoryRefused(f"remember: the value has {len(value_json):,} characters as JSON, over the limit of "
                            f"{HOST_BOUNDS.max_memory_value_chars:,} per entry; remember a summary, or split it "
                            f"into several entries")
    return _parse(value_json)


class RunMemory:
    """A workspace as one top-level run (and its child runs) sees it: the run's documents, what
    the run has added (`max_memory_run_chars`), and the host's side of `remember` / `memory`."""

    def __init__(self, workspace: Workspace, *, question: str, run_id: str, inputs: list["LoadedContext"],
                 reuse: bool = False) -> None:
        self.workspace = workspace
        self.question = question
        self.run_id = run_id
        self.reuse = reuse
        self.documents = document_hashes(inputs)
        workspace.set_documents(self.documents)  # entries made from other documents are now stale
        self.added = 0
        self._adding = threading.Lock()  # model code may remember from several threads at once

    def serve(self, op: str, args: dict[str, Any]) -> str:
        """One request of model code, as JSON text; MemoryRefused or KeyError say what is wrong."""
        workspace = self.workspace
        if op == "list":
            return json.dumps(workspace.entries())
        name = args.get("name")
        if not isinstance(name, str):
            raise MemoryRefused(f"memory: the name must be a str, got {type(name).__name__}")
        if op == "get":
            try:
                return '{"found": true, "value": ' + workspace.value_json(name) + "}"
            except KeyError as error:
                return json.dumps({"found": False, "error": error.args[0]})
        if op == "info":
            return json.dumps(workspace.info(name))
        if op == "changed":
            return json.dumps(workspace.info(name)["changes"])
        if op == "remember":
            return json.dumps(self.remember(name, args.get("value"), args.get("note", "")))
        raise MemoryRefused(f"unknown memory operation {op!r}")

    def remember(self, name: str, value_json: Any, note: Any) -> dict[str, Any]:
        size = len(value_json) if isinstance(value_json, str) else 0
        with self._adding:
            if self.added + size > HOST_BOUNDS.max_memory_run_chars:
                raise MemoryRefused(f"remember: this run has saved {self.added:,} characters; with this value it "
                                    f"would pass the limit of {HOST_BOUNDS.max_memory_run_chars:,} per run; remember "
                                    f"summaries rather than raw text")
            saved = self.workspace.put(name, value_json, note, question=self.question, run_id=self.run_id,
                                       documents=self.documents)
            self.added += size
        return saved

    def prompt_entries(self) -> tuple[list[dict[str, Any]], list[tuple[list[str], dict[str, list[str]]]]]:
        """The entries (no values) and, for each distinct set of documents stale entries came from,
        (their names, the new / changed / removed documents since)."""
        entries = self.workspace.entries()
        changes: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
        for entry in (e for e in entries if e["stale"]):
            info = self.workspace.info(entry["name"])
            key = json.dumps(info["documents"], sort_keys=True)
            changes.setdefault(key, ([], info["changes"]))[0].append(entry["name"])
        return entries, list(changes.values())

    # -- sub-call reuse (memory_reuse) ----------------------------------------------------------
    async def reused(self, identity: str, prompt: str) -> "Completion | None":
        """The workspace's earlier answer to this model and prompt, or None (also when reuse is off)."""
        import asyncio

        from ..models.base import Completion

        if not self.reuse:
            return None
        try:
            stored = await asyncio.to_thread(self.workspace.answer, _answer_key(identity, prompt))
        except (sqlite3.Error, OSError):  # the workspace cannot answer: the call is made live
            return None
        if stored is None:
            return None
        fields = json.loads(stored)
        return Completion(text=fields["text"], model=fields["model"], prompt_tokens=fields["prompt_tokens"],
                          completion_tokens=fields["completion_tokens"], finish_reason=fields["finish_reason"])

    async def keep(self, identity: str, prompt: str, completion: "Completion") -> None:
        """Keep a sub-call's answer for later runs of the workspace (a cut-off answer is not kept)."""
        import asyncio

        if not self.reuse or completion.finish_reason == "length":
            return
        fields = {"text": completion.text, "model": completion.model, "prompt_tokens": completion.prompt_tokens,
                  "completion_tokens": completion.completion_tokens, "finish_reason": completion.finish_reason}
        try:
            await asyncio.to_thread(self.workspace.keep_answer, _answer_key(identity, prompt), json.dumps(fields))
        except (sqlite3.Error, OSError):  # not kept: the paid answer still reaches model code
            pass


def _answer_key(identity: str, prompt: str) -> str:
    payload = json.dumps({"model": identity, "prompt": prompt}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


# -- text for `rlm memory` -------------------------------------------------------------------------
def entries_text(workspace: Workspace) -> str:
    entries = workspace.entries()
    if not entries:
        return f"Memory workspace {workspace.name!r} holds no entries."
    lines = [f"Memory workspace {workspace.name!r}: {len(entries):,} entries"]
    for e in entries:
        lines.append(f"  {e['name']}  {e['type']}, {e['size']:,} chars{'  STALE' if e['stale'] else ''}  "
                     f"{e['created']}  run {e['run_id']}\n    {e['note']}")
    return "\n".join(lines)


def info_text(workspace: Workspace, name: str, preview_chars: int = 2_000) -> str:
    """One entry: where it came from, whether it is stale (and what changed), and its value's start."""
    info = workspace.info(name)
    value = workspace.value_json(name)
    changes = "; ".join(f"{kind}: {', '.join(paths[:20])}" for kind, paths in info["changes"].items() if paths)
    return "\n".join([
        f"{info['name']} ({info['type']}, {info['size']:,} chars) in workspace {workspace.name!r}",
        f"note: {info['note']}", f"question: {info['question']}", f"run: {info['run_id']}  at {info['created']}",
        f"documents: {len(info['documents']):,}" + (f"  STALE ({changes})" if info["stale"] else "  (current)"),
        "value: " + (value if len(value) <= preview_chars else value[:preview_chars]
                     + f" ... [{len(value):,} characters in all]")])


def start_run(workspace: Workspace, **kwargs: Any) -> RunMemory:
    """`RunMemory(workspace, ...)`, with a failure to open or hash said as a ConfigError."""
    try:
        return RunMemory(workspace, **kwargs)
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"memory workspace {workspace.name!r} ({workspace.path}) could not be used "
                          f"({type(error).__name__}: {error}); make RLM_HOME writable, or run without --memory") from None


def described(arguments: str) -> str:
    """A `remember` request as the trajectory keeps it: name, note and size, not the value."""
    try:
        args = json.loads(arguments)
        value = args.get("value")
        return json.dumps({"name": args.get("name"), "note": args.get("note"),
                           "chars": len(value) if isinstance(value, str) else None})
    except (ValueError, AttributeError):
        return arguments[:200]
