"""The run store: one SQLite database (WAL) with every run, iteration, code cell and model call.

Events are written as they happen, so a run that is killed keeps what it did until then. Runs,
iterations and cells are one short transaction each. Model calls are committed in groups, at most
`CALL_COMMIT_S` after they complete (and before any later event of the same store): one commit per
call cost a fan-out of a thousand fast calls about 4% of its wall time; a kill can lose the answers
of the last 20 ms, which a resume pays again. Many threads and processes can write at once: WAL
mode plus a busy timeout serialize the writers. The schema is versioned with `PRAGMA user_version`;
`MIGRATIONS` holds the steps from each version to the next.

The same table of calls is the call cache: a call's `cache_key` hashes the model's identity, the
messages and the parameters, so an identical call can be answered from here instead of paying
for it again, and `rlm ask --resume` replays a crashed run's calls in order. A `cache_namespace`
(the server uses one per client token) keeps one client's cached calls from answering, and so
revealing, another's.

The store is a sink that reports its failures, never one that breaks a run: when the database
cannot be opened or written (corrupt, read-only, a full disk), the run goes on, the problem is
said once on stderr and kept in `Store.error` (the run's result carries it as `store_error`).
Reading (`rlm logs`, `rlm view`) raises `StoreError`, which names the file and the fix.

A run row records the host and process that runs it; a run still `running` whose process is gone
(killed, or the machine restarted) is marked `interrupted` the next time the store is opened or read.

`$RLM_HOME` is 0700 and the database (with its -wal and -shm files) 0600: it holds every prompt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError  # importable from here too
from .events import report_problem
from ..models.base import Completion, Message
from ..extras import UPGRADE_HINT

SCHEMA_VERSION = 5
CALL_COMMIT_S = 0.02  # completed calls wait at most this long for their (group) commit
_INSERT_CALL = ("INSERT INTO calls (call_id, run_id, root_id, depth, purpose, model, attempt, status, messages, "
                "response, prompt_tokens, completion_tokens, cost_usd, latency_s, started_at, ended_at, "
                "finish_reason, error, cache_key, cached, iteration, cell, reply_tokens) "
                "VALUES (" + ", ".join(["?"] * 23) + ")")
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, root_id TEXT NOT NULL, parent_run_id TEXT, depth INTEGER NOT NULL,
        query TEXT, model TEXT, sub_model TEXT, environment TEXT, status TEXT NOT NULL,
        answer TEXT, error TEXT, iterations INTEGER DEFAULT 0, used_fallback INTEGER DEFAULT 0,
        started_at REAL, ended_at REAL, duration_s REAL, metadata TEXT, limits TEXT, usage TEXT,
        calls INTEGER DEFAULT 0, tokens INTEGER DEFAULT 0, cost_usd REAL DEFAULT 0,
        config TEXT, resumed_from TEXT, trajectory_path TEXT
    );
    CREATE INDEX runs_root ON runs(root_id);
    CREATE INDEX runs_started ON runs(started_at);
    CREATE TABLE iterations (
        id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, iteration INTEGER, reply TEXT,
        code_blocks INTEGER, final INTEGER, ts REAL
    );
    CREATE INDEX iterations_run ON iterations(run_id);
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, iteration INTEGER, idx INTEGER, code TEXT,
        stdout TEXT, stderr TEXT, error TEXT, final TEXT, timed_out INTEGER, restarted INTEGER,
        duration_s REAL, ts REAL
    );
    CREATE INDEX cells_run ON cells(run_id);
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY, call_id TEXT, run_id TEXT NOT NULL, root_id TEXT NOT NULL,
        depth INTEGER, purpose TEXT, model TEXT, attempt INTEGER, status TEXT NOT NULL,
        messages TEXT, response TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
        cost_usd REAL, latency_s REAL, started_at REAL, ended_at REAL, finish_reason TEXT,
        error TEXT, cache_key TEXT, cached TEXT
    );
    CREATE INDEX calls_run ON calls(run_id);
    CREATE INDEX calls_root ON calls(root_id);
    CREATE INDEX calls_cache ON calls(cache_key) WHERE status = 'ok' AND cached IS NULL;
    """,
    2: """
    ALTER TABLE runs ADD COLUMN session_id TEXT;
    CREATE INDEX runs_session ON runs(session_id);
    """,
    3: """
    ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN pid_started TEXT;
    CREATE INDEX runs_status ON runs(status);
    """,
    4: """
    ALTER TABLE iterations ADD COLUMN reasoning TEXT;
    ALTER TABLE calls ADD COLUMN iteration INTEGER;
    ALTER TABLE calls ADD COLUMN cell INTEGER;
    """,
    5: """
    ALTER TABLE runs ADD COLUMN parent_iteration INTEGER;
    ALTER TABLE runs ADD COLUMN task TEXT;
    ALTER TABLE calls ADD COLUMN reply_tokens TEXT;
    ALTER TABLE runs ADD COLUMN memory TEXT;
    """,
}


def _fix_for(error: BaseException, path: Path) -> str:
    text = str(error).lower()
    if "newer recursive-llm" in text:
        return f"upgrade recursive-llm ({UPGRADE_HINT}), or set RLM_HOME to another directory"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "disk is full" in text:
        return f"free some space under {path.parent}, or set RLM_HOME to a directory on another disk"
    if _read_only(path):
        return (f"{path.parent} is on a read-only file system or not writable: make it writable, or set "
                f"RLM_HOME to a writable directory")
    if "readonly" in text or "read-only" in text or isinstance(error, PermissionError) or \
            isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"make {path} and its directory writable, or set RLM_HOME to a writable directory"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (f"move it aside (mv {path} {path}.broken; a new one is created on the next run), "
                f"or set RLM_HOME to another directory")
    return f"check {path}, or set RLM_HOME to another directory"


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY) or not os.access(path.parent, os.W_OK)
    except OSError:
        return False


def _process_started(pid: int) -> str | None:
    """The start time of a process (from /proc), so that a reused pid is not taken for the run's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    if started is not None and os.path.isdir("/proc/self"):
        return _process_started(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HOST = socket.gethostname()


def _private_file(path: Path) -> None:
    from ..paths import PRIVATE_FILE_MODE

    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)


def default_path() -> Path:
    from ..paths import rlm_home

    return rlm_home() / "rlm.db"


def cache_key(identity: str, messages: list[Message], max_output_tokens: int | None,
              temperature: float | None, namespace: str | None = None) -> str:
    fields = {"model": identity, "messages": messages, "max_tokens": max_output_tokens, "temperature": temperature}
    if namespace is not None:  # absent by default, so that the keys recorded before namespaces still match
        fields["namespace"] = namespace
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


class RunQueries:
    """Reading runs back (`rlm logs`, `logs show`, the viewer, export, `--resume`). A part of
    `Store`, apart from recording; every read first marks runs whose process is gone as interrupted."""

    path: Path
    _db: sqlite3.Connection

    def list_runs(self, *, limit: int = 20, status: str | None = None, model: str | None = None,
                  query: str | None = None, since: float | None = None,
                  session_id: str | None = None) -> list[dict[str, Any]]:
        clauses, params = ["parent_run_id IS NULL"], []
        if session_id:
            clauses.append("session_id = ?")
            params.append(session_id)
        if status:
            clauses.append("status = ?")
            params.append(status)
        if model:
            clauses.append("model = ?")
            params.append(model)
        if query:
            clauses.append("query LIKE ?")
            params.append(f"%{query}%")
        if since:
            clauses.append("started_at >= ?")
            params.append(since)
        self._mark_interrupted_for_reading()
        with self._locked():
            rows = self._db.execute(
                f"SELECT r.*, (SELECT count(*) FROM calls c WHERE c.root_id = r.run_id AND c.status = 'ok') AS all_calls, "
                f"(SELECT count(*) FROM calls c WHERE c.root_id = r.run_id AND c.status = 'ok' AND c.cached = 'replay') "
                f"AS replayed_calls, "
                f"(SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM calls c WHERE c.root_id = r.run_id "
                f"AND c.status = 'ok' AND c.cached IS NULL) AS all_tokens, "
                f"(SELECT coalesce(sum(cost_usd), 0) FROM calls c WHERE c.root_id = r.run_id AND c.status = 'ok') "
                f"AS all_cost FROM runs r WHERE {' AND '.join(clauses)} ORDER BY started_at DESC LIMIT ?",
                (*params, limit)).fetchall()
        return [_run_summary(row) for row in rows]

    def find_run(self, run_id: str) -> str:
        """The full id of a run from a prefix; raises KeyError with the reason."""
        with self._locked():
            rows = self._db.execute("SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id LIMIT 3",
                                    (run_id.replace("%", "") + "%",)).fetchall()
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.path} (`rlm logs` lists the runs)")
        if len(rows) > 1 and rows[0]["run_id"] != run_id:
            raise KeyError(f"{run_id!r} matches several runs ({', '.join(r['run_id'] for r in rows)}...); give more of it")
        return rows[0]["run_id"]

    def run_tree(self, root_id: str) -> dict[str, Any]:
        """Everything about one top-level run and its children, as plain data (for show, view, export)."""
        self._mark_interrupted_for_reading()
        with self._locked():
            runs = [dict(r) for r in self._db.execute("SELECT * FROM runs WHERE root_id = ? ORDER BY started_at",
                                                       (root_id,))]
            iterations = [dict(r) for r in self._db.execute(
                "SELECT i.* FROM iterations i JOIN runs r ON r.run_id = i.run_id WHERE r.root_id = ? ORDER BY i.id",
                (root_id,))]
            cells = [dict(r) for r in self._db.execute(
                "SELECT c.* FROM cells c JOIN runs r ON r.run_id = c.run_id WHERE r.root_id = ? ORDER BY c.id",
                (root_id,))]
            calls = [dict(r) for r in self._db.execute("SELECT * FROM calls WHERE root_id = ? ORDER BY id", (root_id,))]
        if not runs:
            raise KeyError(f"no run {root_id!r} in {self.path}")
        for collection in (runs,):
            for run in collection:
                for field in ("metadata", "limits", "usage", "config", "task"):
                    run[field] = json.loads(run[field]) if run.get(field) else None
        for call in calls:
            call["messages"] = json.loads(call["messages"]) if call.get("messages") else None
            call["reply_tokens"] = json.loads(call["reply_tokens"]) if call.get("reply_tokens") else None
        return {"root_id": root_id, "runs": runs, "iterations": iterations, "cells": cells, "calls": calls}

    def run_config(self, run_id: str) -> dict[str, Any]:
        self._mark_interrupted_for_reading()
        with self._locked():
            row = self._db.execute("SELECT config, status, parent_run_id FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r}")
        if row["parent_run_id"] is not None:
            raise KeyError(f"{run_id} is a child run; resume its top-level run")
        return {"config": json.loads(row["config"]) if row["config"] else None, "status": row["status"]}


class Store(RunQueries):
    def __init__(self, path: str | Path | None = None, *, cache_namespace: str | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.cache_namespace = cache_namespace
        self.error: str | None = None  # the first problem that stopped recording, as said on stderr
        self._cause: BaseException | None = None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending_calls: list[tuple] = []  # call rows waiting for their group commit, in order
        self._pending_cache: dict[str, Completion] = {}  # so that the cache sees them at once
        self._pending_since = 0.0
        try:
            self._open()
            self._migrate()
        except (sqlite3.Error, OSError) as error:
            self._failed(error, "opened")
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None
            return
        try:
            self.mark_interrupted()
        except sqlite3.Error:  # e.g. read-only: reading still works, and writing says what is wrong
            pass

    def _open(self) -> None:
        from ..paths import private_dir

        private_dir(self.path.parent)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        # 0600 before anything is written to it (SQLite gives the -wal and -shm files the database's
        # mode). chmod, never an open() and close() of our own: closing any descriptor of the file
        # drops the POSIX locks of every SQLite connection to it in this process.
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            _private_file(path)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")

    def _failed(self, error: BaseException, doing: str) -> None:
        """Stop recording; say it once (stderr and `self.error`), with the file and the fix."""
        if self.error is None:
            self._cause = error
            self.error = (f"the run store {self.path} could not be {doing} ({type(error).__name__}: {error}); "
                          f"runs go on but are not recorded. Fix: {_fix_for(error, self.path)}")
            report_problem(self.error)

    @property
    def ok(self) -> bool:
        return self._db is not None and self.error is None

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"{self.path} was written by a newer recursive-llm (schema {version}); "
                        f"upgrade recursive-llm or set RLM_HOME to another directory")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {step}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark_interrupted(self) -> int:
        """Runs left `running` by a process that is gone become `interrupted`; returns how many."""
        if self._db is None:
            return 0
        with self._lock:
            rows = self._db.execute("SELECT run_id, host, pid, pid_started FROM runs WHERE status = 'running'"
                                    ).fetchall()
            dead = [row["run_id"] for row in rows if row["pid"] is not None and
                    (row["host"] != _HOST or not _alive(row["pid"], row["pid_started"]))]
            for run_id in dead:
                self._db.execute(
                    "UPDATE runs SET status = 'interrupted', error = coalesce(error, ?), ended_at = coalesce("
                    "(SELECT max(ended_at) FROM calls WHERE run_id = ?), started_at) WHERE run_id = ? AND "
                    "status = 'running'", ("the process running it ended before it finished (killed, or the "
                                           "machine stopped); `rlm ask --resume RUN_ID` continues it", run_id, run_id))
        return len(dead)

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self._commit_pending_calls()
            except (sqlite3.Error, OSError) as error:
                self._failed(error, "written")
            self._db.close()
            self._db = None

    def interrupt(self, root_id: str, reason: str) -> None:
        """Mark a run tree that will not end by itself (its task was cancelled) `interrupted`, with
        the caller's reason (a cancelled run records itself as interrupted, without knowing why)."""
        self._write("UPDATE runs SET status = 'interrupted', error = ?, ended_at = coalesce(ended_at, ?) "
                    "WHERE root_id = ? AND status IN ('running', 'interrupted')", (reason, time.time(), root_id))

    def label_task(self, run_id: str, task: dict[str, Any]) -> None:
        """Say which task a top-level run answered (`rlm bench`: family, size, seed), so that
        `rlm export` can score its answer."""
        self._write("UPDATE runs SET task = ? WHERE run_id = ?", (_json(task), run_id))

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one reader at a time, with every completed call in it. Raises
        StoreError (naming the file and the fix) when the store cannot be read."""
        self._require_open()
        try:
            with self._lock:
                try:
                    self._commit_pending_calls()
                except (sqlite3.Error, OSError) as error:  # the calls are lost, the reading may still work
                    self._failed(error, "written")
                yield self._db
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"the run store {self.path} cannot be read ({type(error).__name__}: {error}). "
                             f"Fix: {_fix_for(error, self.path)}") from None

    def _commit_pending_calls(self) -> None:  # the caller holds the lock
        if not self._pending_calls:
            return
        rows, self._pending_calls = self._pending_calls, []
        self._pending_cache.clear()
        if not self.ok:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT_CALL, rows)
            self._db.execute("COMMIT")
        except BaseException:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def flush(self) -> None:
        """Commit the calls that are waiting for their group commit (a failure is reported, not raised)."""
        if self._db is None:
            return
        with self._lock:
            try:
                self._commit_pending_calls()
            except (sqlite3.Error, OSError) as error:
                self._failed(error, "written")

    def _write(self, sql: str, params: tuple) -> None:
        """One recording write; a failure stops recording and is reported, never raised into the run."""
        if not self.ok:
            return
        with self._lock:
            try:
                self._commit_pending_calls()
                self._db.execute(sql, params)
            except (sqlite3.Error, OSError) as error:
                self._failed(error, "written")

    def _queue_call(self, row: tuple, cache_key: str | None, completion: Completion | None) -> None:
        if not self.ok:
            return
        with self._lock:
            now = time.monotonic()
            if not self._pending_calls:
                self._pending_since = now
            self._pending_calls.append(row)
            if cache_key and completion is not None:
                self._pending_cache.setdefault(cache_key, completion)
            if now - self._pending_since >= CALL_COMMIT_S or len(self._pending_calls) >= 1000:
                try:
                    self._commit_pending_calls()
                except (sqlite3.Error, OSError) as error:
                    self._failed(error, "written")
                return
            first = len(self._pending_calls) == 1
        if first:
            import asyncio

            try:
                asyncio.get_running_loop().call_later(CALL_COMMIT_S, self.flush)
            except RuntimeError:  # not called from an event loop: commit now
                self.flush()

    # -- recording ------------------------------------------------------------------------------
    def recorder(self, root_id: str, *, config: dict[str, Any] | None = None, resumed_from: str | None = None,
                 trajectory_path: Path | None = None, session_id: str | None = None) -> "Recorder":
        """An event listener that writes one top-level run (and its children) into the store."""
        return Recorder(self, root_id, config=config, resumed_from=resumed_from, trajectory_path=trajectory_path,
                        session_id=session_id)

    # -- the call cache -------------------------------------------------------------------------
    def cached_completion(self, key: str) -> Completion | None:
        if not self.ok:
            return None
        with self._lock:
            if key in self._pending_cache:
                return self._pending_cache[key]
            try:
                row = self._db.execute(
                    "SELECT model, response, prompt_tokens, completion_tokens, finish_reason FROM calls "
                    "WHERE cache_key = ? AND status = 'ok' AND cached IS NULL ORDER BY id LIMIT 1", (key,)).fetchone()
            except sqlite3.Error as error:  # no cache, then: the call is made
                self._failed(error, "read")
                return None
        return _completion(row) if row else None

    def replay_book(self, root_id: str) -> "ReplayBook":
        """The successful calls of a run's whole tree, in the order they were made."""
        with self._locked():
            rows = self._db.execute(
                "SELECT cache_key, model, response, prompt_tokens, completion_tokens, finish_reason FROM calls "
                "WHERE root_id = ? AND status = 'ok' AND cache_key IS NOT NULL ORDER BY id", (root_id,)).fetchall()
        book = ReplayBook()
        for row in rows:
            book.add(row["cache_key"], _completion(row))
        return book

    def _require_open(self) -> None:
        if self._db is None:
            if self._cause is None:
                raise StoreError(f"the run store {self.path} is closed")
            raise StoreError(f"the run store {self.path} cannot be read ({type(self._cause).__name__}: "
                             f"{self._cause}). Fix: {_fix_for(self._cause, self.path)}")

    def _mark_interrupted_for_reading(self) -> None:
        self._require_open()
        try:
            self.mark_interrupted()
        except sqlite3.Error:  # a read-only store can still be read; the reading says what is wrong if not
            pass



class Recorder:
    """Writes one top-level run's events (and its children's) into the store: one method per
    event type that becomes rows; other events (llm_start, fallback, compaction) only go to the
    trajectory file."""

    def __init__(self, store: Store, root_id: str, *, config: dict[str, Any] | None, resumed_from: str | None,
                 trajectory_path: Path | None, session_id: str | None) -> None:
        self.store, self.root_id = store, root_id
        self.config, self.resumed_from, self.session_id = config, resumed_from, session_id
        self.trajectory_path = trajectory_path

    def __call__(self, event: dict[str, Any]) -> None:
        handler = self._HANDLERS.get(event["type"])
        if handler is not None:
            handler(self, event)

    def run_start(self, event: dict[str, Any]) -> None:
        top = event.get("parent_run_id") is None
        self.store._write(
            "INSERT INTO runs (run_id, root_id, parent_run_id, depth, query, model, sub_model, environment, "
            "status, started_at, metadata, limits, config, resumed_from, trajectory_path, session_id, "
            "host, pid, pid_started, parent_iteration, memory) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?, ?, ?)",
            (event["run_id"], self.root_id, event.get("parent_run_id"), event["depth"], event.get("query"),
             event.get("model"), event.get("sub_model"), event.get("environment"), event["ts"],
             _json(event.get("metadata")), _json(event.get("limits")),
             _json(self.config) if top else None, self.resumed_from if top else None,
             str(self.trajectory_path) if top and self.trajectory_path else None, self.session_id,
             _HOST, os.getpid(), _process_started(os.getpid()), event.get("parent_iteration"), event.get("memory")))

    def iteration(self, event: dict[str, Any]) -> None:
        self.store._write("INSERT INTO iterations (run_id, iteration, reply, reasoning, code_blocks, final, ts) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", (event["run_id"], event["iteration"], event.get("reply"),
                                                           event.get("reasoning"), event.get("code_blocks"),
                                                           int(bool(event.get("final"))), event["ts"]))

    def cell(self, event: dict[str, Any]) -> None:
        self.store._write("INSERT INTO cells (run_id, iteration, idx, code, stdout, stderr, error, final, "
                          "timed_out, restarted, duration_s, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (event["run_id"], event.get("iteration"), event.get("index"), event.get("code"),
                           event.get("stdout"), event.get("stderr"), event.get("error"), event.get("final"),
                           int(bool(event.get("timed_out"))), int(bool(event.get("restarted"))),
                           event.get("duration_s"), event["ts"]))

    def model_call(self, event: dict[str, Any]) -> None:
        status = {"llm_call": "ok", "llm_error": "error", "llm_refused": "refused"}[event["type"]]
        latency = event.get("latency_s") or 0.0
        row = (event.get("call_id"), event["run_id"], self.root_id, event.get("depth"), event.get("purpose"),
               event.get("model"), event.get("attempt"), status, _json(event.get("messages")),
               event.get("response"), event.get("prompt_tokens"), event.get("completion_tokens"),
               event.get("cost_usd"), latency, event["ts"] - latency, event["ts"],
               event.get("finish_reason"), event.get("error"), event.get("cache_key"), event.get("cached"),
               event.get("iteration"), event.get("cell"), _json(_tokens(event)))
        fresh = status == "ok" and event.get("cached") is None
        self.store._queue_call(row, event.get("cache_key"), Completion(
            text=event.get("response") or "", model=event.get("model") or "",
            prompt_tokens=event.get("prompt_tokens") or 0, completion_tokens=event.get("completion_tokens")
            or 0, finish_reason=event.get("finish_reason")) if fresh else None)

    def tool_call(self, event: dict[str, Any]) -> None:
        """A user tool: a call row of its own (no tokens, no cost, never cached)."""
        latency = event.get("duration_s") or 0.0
        row = (event.get("call_id"), event["run_id"], self.root_id, event.get("depth"), "tool",
               f"tool:{event.get('name')}", 1, "ok" if event.get("error") is None else "error",
               _json([{"role": "tool", "content": event.get("arguments")}]), event.get("result"), 0, 0, 0.0,
               latency, event["ts"] - latency, event["ts"], None, event.get("error"), None, None,
               event.get("iteration"), event.get("cell"), None)
        self.store._queue_call(row, None, None)

    def run_end(self, event: dict[str, Any]) -> None:
        usage = event.get("usage") or {}
        total = usage.get("total") or {}
        self.store._write(
            "UPDATE runs SET status = ?, answer = ?, error = ?, iterations = ?, used_fallback = ?, "
            "ended_at = ?, duration_s = ?, usage = ?, calls = ?, tokens = ?, cost_usd = ? WHERE run_id = ?",
            (event.get("stopped_reason"), event.get("answer"), event.get("error"), event.get("iterations"),
             int(bool(event.get("used_fallback"))), event["ts"], event.get("duration_s"), _json(usage),
             total.get("calls", 0), total.get("total_tokens", 0), total.get("cost_usd", 0.0),
             event["run_id"]))

    _HANDLERS = {"run_start": run_start, "iteration": iteration, "cell": cell, "llm_call": model_call,
                 "llm_error": model_call, "llm_refused": model_call, "tool_call": tool_call, "run_end": run_end}

class ReplayBook:
    """Recorded completions by cache key, each handed out once, in recorded order."""

    def __init__(self) -> None:
        self._entries: dict[str, deque[Completion]] = defaultdict(deque)
        self.total = 0

    def add(self, key: str, completion: Completion) -> None:
        self._entries[key].append(completion)
        self.total += 1

    def take(self, key: str) -> Completion | None:
        entries = self._entries.get(key)
        return entries.popleft() if entries else None


def _completion(row: sqlite3.Row) -> Completion:
    return Completion(text=row["response"] or "", model=row["model"] or "", prompt_tokens=row["prompt_tokens"] or 0,
                      completion_tokens=row["completion_tokens"] or 0, finish_reason=row["finish_reason"])


def _run_summary(row: sqlite3.Row) -> dict[str, Any]:
    return {"run_id": row["run_id"], "query": row["query"], "model": row["model"], "status": row["status"],
            "iterations": row["iterations"], "calls": row["all_calls"], "replayed_calls": row["replayed_calls"],
            "tokens": row["all_tokens"],
            "cost_usd": round(row["all_cost"] or 0.0, 6), "started_at": row["started_at"],
            "duration_s": row["duration_s"] if row["duration_s"] is not None else
            (time.time() - row["started_at"] if row["status"] == "running" else None),
            "answer": row["answer"], "resumed_from": row["resumed_from"], "session_id": row["session_id"]}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _tokens(event: dict[str, Any]) -> dict[str, Any] | None:
    """A call's token ids and logprobs, when its provider returned them."""
    kept = {name: event[name] for name in ("token_ids", "logprobs") if event.get(name) is not None}
    return kept or None
