"""Pre-started workers: a request finds its worker already running (`rlm serve`, many runs).

A spare is a `WorkerEnvironment` started with no input (`prestart`): a fresh sandboxed interpreter
(the same bubblewrap namespaces, its own uid, resource limits and scrubbed environment as any
worker) that has imported the REPL and waits, on its only thread, for `load`. It has run nothing
of any request. `load` writes one request's input into the spare's own input directory; the worker
reads it and confines itself (capabilities, Landlock, seccomp) exactly like a worker started for
that request, before it says `ready`. Each spare serves one run and is closed with it: a worker is
never shared between requests, and one that a request has touched never goes back to the pool.

What this saves a request: the worker's start latency (about 50 ms here) leaves the request's
critical path, and starts happen while the machine is idle instead of competing with requests.
It does not make a start cheaper in CPU (every spare is still a fresh interpreter).

`install(size, ...)` gives the running event loop a pool; `make_environment` takes spares from it
for runs whose `WorkerPolicy` matches, and falls back to starting a worker when the pool is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ...config import WorkerPolicy
from ...errors import EnvironmentFailure
from ..base import CellResult, Environment, SubCallHandler
from ...caps import CAPTURED_CHARS
from . import template
from ..host.sandbox import IsolationPlan, Limits, plan_isolation
from .template import WorkerTemplate
from ..host.worker import WORKER_SCRIPT, WorkerEnvironment


class WorkerPool:
    """Up to `size` pre-started workers for one event loop and one sandbox configuration."""

    def __init__(self, size: int, *, sandbox: str = WorkerPolicy.sandbox, limits: Limits = Limits(),
                 max_captured_chars: int = CAPTURED_CHARS, starting_at_once: int = 2) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size = size
        self.sandbox = sandbox
        self.limits = limits
        self.max_captured_chars = max_captured_chars
        self._spares: asyncio.Queue[WorkerEnvironment] = asyncio.Queue()
        self._starting = 0
        self._starts = asyncio.Semaphore(starting_at_once)  # spares do not crowd out running requests
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `install` gave it to
        self.taken = 0  # runs that got a pre-started worker
        self.missed = 0  # runs that found the pool empty and started their own
        self.failed = 0  # spares that failed to start or died while waiting
        self.template: WorkerTemplate | None = None  # forks the spares (template.py), once started
        self._template_lock = asyncio.Lock()
        self.template_error: str | None = None  # why spares are fresh interpreters instead

    def matches(self, sandbox: str, limits: Limits, max_captured_chars: int) -> bool:
        return (sandbox, limits, max_captured_chars) == (self.sandbox, self.limits, self.max_captured_chars)

    @property
    def ready(self) -> int:
        return self._spares.qsize()

    def fill(self) -> None:
        """Start spares until `size` are ready or starting."""
        while not self._closed and self._spares.qsize() + self._starting < self.size:
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            async with self._starts:
                worker = WorkerEnvironment(None, _unloaded, max_captured_chars=self.max_captured_chars,
                                           sandbox=self.sandbox, limits=self.limits,
                                           template=await self._running_template())
                try:
                    await worker.prestart()
                except BaseException as error:  # a failed start, or the pool closing (cancelled) meanwhile
                    self.failed += not isinstance(error, asyncio.CancelledError)
                    await asyncio.shield(worker.close())
                    if isinstance(error, Exception):
                        return
                    raise
            if self._closed:
                await worker.close()
            else:
                self._spares.put_nowait(worker)
        finally:
            self._starting -= 1

    async def _running_template(self) -> WorkerTemplate | None:
        """The template that forks the spares: started at the first spare, started again if it died;
        None (fresh interpreters) when it is turned off or cannot start here."""
        if not template.enabled() or self.template_error is not None:
            return None
        async with self._template_lock:
            if self.template is not None and not self.template.alive:
                await self.template.close()
                self.template = None
            if self.template is None and not self._closed:
                isolation = plan_isolation(self.sandbox)
                candidate = template.WorkerTemplate(isolation, self.limits, template.python_argv_for_template(
                    str(WORKER_SCRIPT)))
                try:
                    await candidate.start()
                except (EnvironmentFailure, OSError) as error:
                    self.template_error = str(error)
                    import warnings

                    warnings.warn(f"recursive-llm: pre-started workers are fresh interpreters ({error})",
                                  RuntimeWarning, stacklevel=2)
                    return None
                self.template = candidate
            return self.template

    def take(self) -> WorkerEnvironment | None:
        """A live spare (the caller owns it from now on), or None; the pool starts a replacement."""
        spare = None
        while spare is None and not self._spares.empty():
            candidate = self._spares.get_nowait()
            if candidate.alive:
                spare = candidate
            else:
                self.failed += 1
                self._close_later(candidate)
        if spare is None:
            self.missed += 1
        else:
            self.taken += 1
        self.fill()
        return spare

    def _close_later(self, worker: WorkerEnvironment) -> None:
        task = asyncio.get_running_loop().create_task(worker.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        spares = []
        while not self._spares.empty():
            spares.append(self._spares.get_nowait())
        # All at once: each close may wait up to 2 s for its worker to leave (more on a loaded
        # machine), and a server's shutdown should not wait for them one after another.
        await asyncio.gather(*(spare.close() for spare in spares), return_exceptions=True)
        async with self._template_lock:
            if self.template is not None:
                await self.template.close()
                self.template = None
        if self._loop is not None and _pools.get(id(self._loop)) is self:
            del _pools[id(self._loop)]


async def _unloaded(kind, prompts, model, context):  # pragma: no cover - a spare runs no code
    raise EnvironmentFailure("a pre-started worker got a call before it was loaded")


class PooledWorker(Environment):
    """The environment of one run that takes a spare from `pool` when it starts (or has its own
    worker forked by the pool's template, or started, when none is ready); everything else goes to
    that worker."""

    name = "worker"
    launched = None  # a spare has booted already (a worker of its own is started within `start`)

    def __init__(self, pool: WorkerPool, context: Any, handler: SubCallHandler, *,
                 sandbox: str = WorkerPolicy.sandbox, **options: Any) -> None:
        self._pool = pool
        self._context = context
        self._handler = handler
        self._planned = plan_isolation(sandbox)  # the plan of any worker for this sandbox mode
        self._options = {"sandbox": sandbox, **options}  # a worker of its own, when it starts one
        self.environment: WorkerEnvironment | None = None
        self.pooled = False

    @property
    def isolation(self) -> IsolationPlan:
        return self.environment.isolation if self.environment is not None else self._planned

    async def start(self) -> None:
        spare = self._pool.take()
        context, self._context = self._context, None
        if spare is not None:
            self.environment = spare
            try:
                await spare.load(context, self._handler)
                self.pooled = True
                return
            except (EnvironmentFailure, ConnectionError, OSError):
                await spare.close()  # a spare that broke: start a worker of our own
        # None ready (more runs at once than spares): the pool's template still forks one for this
        # run, which costs a fork instead of an interpreter's start.
        template = self._pool.template if self._pool.template is not None and self._pool.template.alive else None
        self.environment = WorkerEnvironment(context, self._handler, template=template, **self._options)
        await self.environment.start()

    def rebind(self, handler: SubCallHandler) -> None:
        self._handler = handler
        if self.environment is not None:
            self.environment.rebind(handler)

    def _worker(self) -> WorkerEnvironment:
        if self.environment is None:
            raise EnvironmentFailure("the worker is not running: call start() first")
        return self.environment

    async def execute(self, code: str, timeout: float | None, wall_timeout: float | None = None) -> CellResult:
        return await self._worker().execute(code, timeout, wall_timeout)

    async def get_variable(self, name: str) -> dict:
        return await self._worker().get_variable(name)

    async def close(self) -> None:
        if self.environment is not None:
            await self.environment.close()


_pools: dict[int, WorkerPool] = {}  # id(event loop) -> its pool


def install(size: int, *, sandbox: str = WorkerPolicy.sandbox, memory_mb: int = WorkerPolicy.memory_mb,
            max_captured_chars: int = CAPTURED_CHARS) -> WorkerPool:
    """Give the running event loop a pool of `size` pre-started workers (and start filling it).
    Runs on this loop whose policy matches take their workers from it."""
    loop = asyncio.get_running_loop()
    pool = WorkerPool(size, sandbox=sandbox, limits=Limits(memory_mb=memory_mb), max_captured_chars=max_captured_chars)
    pool._loop = loop
    previous = _pools.get(id(loop))
    _pools[id(loop)] = pool
    if previous is not None:
        loop.create_task(previous.close())
    pool.fill()
    return pool


def current() -> WorkerPool | None:
    """The running event loop's pool, if it has one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    pool = _pools.get(id(loop))
    return pool if pool is not None and pool._loop is loop and not pool._closed else None


def serve_with_pool(app, *, size: int, sandbox: str = WorkerPolicy.sandbox) -> None:
    """`rlm serve`'s hook: a pool of `size` (at most 32) pre-started workers on the server's event
    loop from startup to shutdown. Runs with other worker settings start their own workers."""
    import os

    holder: list[WorkerPool] = []
    if os.environ.get("RLM_WORKER_POOL", "1") == "0":  # off (benchmarks compare both)
        return

    async def start() -> None:
        holder.append(install(min(size, 32), sandbox=sandbox))

    async def stop() -> None:
        for pool in holder:
            await pool.close()

    app.router.on_startup.append(start)
    app.router.on_shutdown.append(stop)
