"""Helpers shared by the benchmark scripts: real text to measure on, and this process's memory."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_text(size: int, ascii_only: bool = True) -> str:
    """`size` characters of Python's own standard library sources (real text that ships everywhere),
    repeated when needed. With `ascii_only`, only files without non-ASCII characters: one character
    beyond Latin-1 makes CPython store a whole string with 4 bytes per character."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if ascii_only and not text.isascii():
            continue
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    corpus = "".join(parts)
    return (corpus * (size // len(corpus) + 1))[:size]


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process; unlike ru_maxrss, not inherited across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def start_and_round_trip(make_environment, repeats: int, cells: int = 200) -> tuple[list[float], list[float]]:
    """Seconds to start an environment, and per trivial cell, over `repeats` fresh environments."""
    import time

    starts, trips = [], []
    for _ in range(repeats):
        environment = make_environment()
        started = time.perf_counter()
        await environment.start()
        starts.append(time.perf_counter() - started)
        for _ in range(cells):
            started = time.perf_counter()
            await environment.execute("x = 1", 10)
            trips.append(time.perf_counter() - started)
        await environment.close()
    return starts, trips


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def bare_openai(base_url: str, prompts: int, width: int) -> float:
    """Seconds for `prompts` chat calls from the official openai client alone, `width` in flight:
    the HTTP stack's share, with no framework around it."""
    import asyncio
    import time

    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    semaphore = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with semaphore:
            await client.chat.completions.create(model="bench", messages=[{"role": "user", "content": str(i)}])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(prompts)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def bare_asyncio(base_url: str, prompts: int, width: int) -> float:
    """The same calls from no HTTP library at all: `width` lanes, each one keep-alive connection
    (opened by its first call, as the others open theirs) on an `asyncio.Protocol` that writes the
    request in one piece and wakes its lane once Content-Length bytes of body are in. No pool, no
    timeouts, no TLS, no chunked bodies: not a client anyone should ship, but the floor under every
    Python asyncio client on this machine. Only for plain-HTTP servers that send Content-Length
    (the simulator and the lean server do)."""
    import asyncio
    import json
    import time
    from urllib.parse import urlsplit

    url = urlsplit(base_url.rstrip("/") + "/chat/completions")
    loop = asyncio.get_running_loop()

    class Lane(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer, self.reply = b"", None

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:"))
            if len(self.buffer) >= head_end + 4 + length:
                body, self.buffer = self.buffer[head_end + 4:head_end + 4 + length], b""
                self.reply.set_result((int(head[0].split()[1]), body))

        def connection_lost(self, error: Exception | None) -> None:
            if self.reply is not None and not self.reply.done():
                self.reply.set_exception(error or ConnectionError("the server closed the connection"))

    calls = iter(range(prompts))

    async def lane() -> None:
        transport, protocol = None, None
        for i in calls:
            if transport is None:
                transport, protocol = await loop.create_connection(Lane, url.hostname, url.port)
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": str(i)}]}).encode()
            protocol.reply = loop.create_future()
            transport.write(f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer x\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            status, content = await protocol.reply
            assert status == 200, status
            json.loads(content)
        if transport is not None:
            transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(width)))
    return time.perf_counter() - started


def start_serve(backend_url: str, concurrent: int, *, src: str, env: dict | None = None):
    """`rlm serve` in front of `backend_url` on a free loopback port, once /health answers:
    (the process, its URL)."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {**os.environ, "RLM_HOME": tempfile.mkdtemp(prefix="rlm-serve-bench-"), "PYTHONPATH": src,
                **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "recursive_llm", "serve", "--port", str(port), "--model", "m",
                                "--base-url", backend_url, "--max-concurrent", str(concurrent)],
                               stderr=subprocess.DEVNULL, env=full_env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("rlm serve did not start")


async def serve_burst(url: str, requests: int, concurrent: int) -> tuple[float, list[float], int]:
    """`requests` chat requests to `rlm serve`, `concurrent` at a time: (wall, latencies of the answered, failed)."""
    import asyncio
    import time

    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    gate = asyncio.Semaphore(concurrent)

    async def one(i: int) -> float | None:
        async with gate:
            started = time.perf_counter()
            try:
                await client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": f"q{i}"}],
                                                     extra_body={"context": f"document {i} " * 50})
            except openai.APIError:
                return None
            return time.perf_counter() - started

    started = time.perf_counter()
    latencies = await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - started
    await client.close()
    ok = [x for x in latencies if x is not None]
    return wall, ok, requests - len(ok)
