"""A lean OpenAI-compatible chat server for speed benchmarks: every POST is answered after a fixed
latency with one short completion, on one asyncio loop with hand-rolled HTTP/1.1 (keep-alive,
Content-Length bodies). It spends a few tens of microseconds per request where the full simulator
(`recursive_llm.testing.fake_server`, threads and `http.server`) spends about a millisecond, so on a
2-core machine it leaves the client's CPU as the only cost beside the latency, as a remote
provider does. It answers nothing else the simulator does (no faults, no streaming, no scripts).
With `--responder module:function` (a `function(messages, model) -> str` importable from the
benchmarks directory), each body is parsed and the reply's content is what the function returns:
the same replies as the simulator, at a few more microseconds per request.

With `--tail SHARE:SECONDS` (e.g. 0.02:2.0), that share of the requests, drawn at random (`--seed`),
take SECONDS instead of the latency: a provider with stragglers (benchmarks/hedging.py).

Run: python benchmarks/lean_server.py [--latency 0.1] [--responder peer_speed:respond] [--tail 0.02:2.0]
(prints "lean server: <base url>")
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import random
import socket
import sys
from collections.abc import Callable
from pathlib import Path

Responder = Callable[[list[dict], str], str]
Latency = Callable[[], float]



def response(content: str = "ok", model: str = "lean", prompt_tokens: int = 1) -> bytes:
    """One whole HTTP response carrying a chat completion whose message is `content`; the usage
    it reports: `prompt_tokens`, and a token per 4 bytes of the content."""
    completion_tokens = max(1, len(content.encode()) // 4)
    reply = json.dumps({"id": "chatcmpl-lean", "object": "chat.completion", "created": 0, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(reply)).encode() + b"\r\n\r\n" + reply)


RESPONSE = response()
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: Latency,
                            responder: Responder | None) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError past MAX_HEADER_BYTES
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length > MAX_BODY_BYTES:
                break
            body = await reader.readexactly(length) if length else b""
            reply = RESPONSE
            if responder is not None:
                request = json.loads(body or b"{}")
                # a plausible usage (a token per 4 bytes of the body): a count far below the text
                # makes the client count the tokens itself (usage.checked_usage), loading a tokenizer
                reply = response(responder(request.get("messages", []), request.get("model", "lean")),
                                 prompt_tokens=max(1, length // 4))
            await asyncio.sleep(latency())
            writer.write(reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def load_responder(spec: str | None) -> Responder | None:
    """"module:function" from the benchmarks directory, or None."""
    if not spec:
        return None
    module, _, function = spec.partition(":")
    sys.path.insert(0, str(Path(__file__).parent))
    return getattr(importlib.import_module(module), function)


def latencies(latency: float, tail: str | None, seed: int) -> Latency:
    """Each request's latency: `latency`, or with `tail` ("SHARE:SECONDS") that share take SECONDS."""
    if not tail:
        return lambda: latency
    share, slow = tail.split(":")
    rng, share, slow = random.Random(seed), float(share), float(slow)
    return lambda: slow if rng.random() < share else latency


async def main(latency: Latency, responder: Responder | None = None) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_connection(r, w, latency, responder), "127.0.0.1", 0,
                                        limit=MAX_HEADER_BYTES, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"lean server: http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--responder", help="module:function giving each reply's content (default: \"ok\")")
    parser.add_argument("--tail", help="SHARE:SECONDS: that share of the requests take SECONDS (e.g. 0.02:2.0)")
    parser.add_argument("--seed", type=int, default=7, help="the seed of which requests are in the tail")
    options = parser.parse_args()
    asyncio.run(main(latencies(options.latency, options.tail, options.seed), load_responder(options.responder)))
