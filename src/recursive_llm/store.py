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
for it again, and `rlm ask --resume` replays a crashed run's calls in order.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .models.base import Completion, Message

SCHEMA_VERSION = 2
CALL_COMMIT_S = 0.02  # completed calls wait at most this long for their (group) commit
_INSERT_CALL = ("INSERT INTO calls (call_id, run_id, root_id, depth, purpose, model, attempt, status, messages, "
                "response, prompt_tokens, completion_tokens, cost_usd, latency_s, started_at, ended_at, "
                "finish_reason, error, cache_key, cached) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?)")
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
}


def default_path() -> Path:
    from .paths import rlm_home

    return rlm_home() / "rlm.db"


def cache_key(identity: str, messages: list[Message], max_output_tokens: int | None,
              temperature: float | None) -> str:
    payload = json.dumps({"model": identity, "messages": messages, "max_tokens": max_output_tokens,
                          "temperature": temperature}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._pending_calls: list[tuple] = []  # call rows waiting for their group commit, in order
        self._pending_cache: dict[str, Completion] = {}  # so that the cache sees them at once
        self._pending_since = 0.0
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path} was written by a newer recursive-llm (schema {version}); "
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

    def close(self) -> None:
        with self._lock:
            self._commit_pending_calls()
            self._db.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one reader or writer at a time, with every completed call in it."""
        with self._lock:
            self._commit_pending_calls()
            yield self._db

    def _commit_pending_calls(self) -> None:  # the caller holds the lock
        if not self._pending_calls:
            return
        rows, self._pending_calls = self._pending_calls, []
        self._pending_cache.clear()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT_CALL, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def flush(self) -> None:
        """Commit the calls that are waiting for their group commit."""
        with self._locked():
            pass

    def _write(self, sql: str, params: tuple) -> None:
        with self._locked() as db:
            db.execute(sql, params)

    def _queue_call(self, row: tuple, cache_key: str | None, completion: Completion | None) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._pending_calls:
                self._pending_since = now
            self._pending_calls.append(row)
            if cache_key and completion is not None:
                self._pending_cache.setdefault(cache_key, completion)
            if now - self._pending_since >= CALL_COMMIT_S or len(self._pending_calls) >= 1000:
                self._commit_pending_calls()
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
                 trajectory_path: Path | None = None, session_id: str | None = None):
        """An event listener that writes one top-level run (and its children) into the store."""
        def record(event: dict[str, Any]) -> None:
            kind = event["type"]
            if kind == "run_start":
                top = event.get("parent_run_id") is None
                self._write(
                    "INSERT INTO runs (run_id, root_id, parent_run_id, depth, query, model, sub_model, environment, "
                    "status, started_at, metadata, limits, config, resumed_from, trajectory_path, session_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                    (event["run_id"], root_id, event.get("parent_run_id"), event["depth"], event.get("query"),
                     event.get("model"), event.get("sub_model"), event.get("environment"), event["ts"],
                     _json(event.get("metadata")), _json(event.get("limits")),
                     _json(config) if top else None, resumed_from if top else None,
                     str(trajectory_path) if top and trajectory_path else None, session_id))
            elif kind == "iteration":
                self._write("INSERT INTO iterations (run_id, iteration, reply, code_blocks, final, ts) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (event["run_id"], event["iteration"], event.get("reply"),
                                                          event.get("code_blocks"), int(bool(event.get("final"))),
                                                          event["ts"]))
            elif kind == "cell":
                self._write("INSERT INTO cells (run_id, iteration, idx, code, stdout, stderr, error, final, "
                            "timed_out, restarted, duration_s, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (event["run_id"], event.get("iteration"), event.get("index"), event.get("code"),
                             event.get("stdout"), event.get("stderr"), event.get("error"), event.get("final"),
                             int(bool(event.get("timed_out"))), int(bool(event.get("restarted"))),
                             event.get("duration_s"), event["ts"]))
            elif kind in ("llm_call", "llm_error", "llm_refused"):
                status = {"llm_call": "ok", "llm_error": "error", "llm_refused": "refused"}[kind]
                latency = event.get("latency_s") or 0.0
                row = (event.get("call_id"), event["run_id"], root_id, event.get("depth"), event.get("purpose"),
                       event.get("model"), event.get("attempt"), status, _json(event.get("messages")),
                       event.get("response"), event.get("prompt_tokens"), event.get("completion_tokens"),
                       event.get("cost_usd"), latency, event["ts"] - latency, event["ts"],
                       event.get("finish_reason"), event.get("error"), event.get("cache_key"), event.get("cached"))
                fresh = status == "ok" and event.get("cached") is None
                self._queue_call(row, event.get("cache_key"), Completion(
                    text=event.get("response") or "", model=event.get("model") or "",
                    prompt_tokens=event.get("prompt_tokens") or 0, completion_tokens=event.get("completion_tokens")
                    or 0, finish_reason=event.get("finish_reason")) if fresh else None)
            elif kind == "run_end":
                usage = event.get("usage") or {}
                total = usage.get("total") or {}
                self._write(
                    "UPDATE runs SET status = ?, answer = ?, error = ?, iterations = ?, used_fallback = ?, "
                    "ended_at = ?, duration_s = ?, usage = ?, calls = ?, tokens = ?, cost_usd = ? WHERE run_id = ?",
                    (event.get("stopped_reason"), event.get("answer"), event.get("error"), event.get("iterations"),
                     int(bool(event.get("used_fallback"))), event["ts"], event.get("duration_s"), _json(usage),
                     total.get("calls", 0), total.get("total_tokens", 0), total.get("cost_usd", 0.0),
                     event["run_id"]))
        return record

    # -- the call cache -------------------------------------------------------------------------
    def cached_completion(self, key: str) -> Completion | None:
        with self._lock:
            if key in self._pending_cache:
                return self._pending_cache[key]
            row = self._db.execute(
                "SELECT model, response, prompt_tokens, completion_tokens, finish_reason FROM calls "
                "WHERE cache_key = ? AND status = 'ok' AND cached IS NULL ORDER BY id LIMIT 1", (key,)).fetchone()
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

    # -- reading --------------------------------------------------------------------------------
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
        with self._locked():
            rows = self._db.execute(
                f"SELECT r.*, (SELECT count(*) FROM calls c WHERE c.root_id = r.run_id AND c.status = 'ok') AS all_calls, "
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
                for field in ("metadata", "limits", "usage", "config"):
                    run[field] = json.loads(run[field]) if run.get(field) else None
        for call in calls:
            call["messages"] = json.loads(call["messages"]) if call.get("messages") else None
        return {"root_id": root_id, "runs": runs, "iterations": iterations, "cells": cells, "calls": calls}

    def run_config(self, run_id: str) -> dict[str, Any]:
        with self._locked():
            row = self._db.execute("SELECT config, status, parent_run_id FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id!r}")
        if row["parent_run_id"] is not None:
            raise KeyError(f"{run_id} is a child run; resume its top-level run")
        return {"config": json.loads(row["config"]) if row["config"] else None, "status": row["status"]}


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
            "iterations": row["iterations"], "calls": row["all_calls"], "tokens": row["all_tokens"],
            "cost_usd": round(row["all_cost"] or 0.0, 6), "started_at": row["started_at"],
            "duration_s": row["duration_s"] if row["duration_s"] is not None else
            (time.time() - row["started_at"] if row["status"] == "running" else None),
            "answer": row["answer"], "resumed_from": row["resumed_from"], "session_id": row["session_id"]}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)
