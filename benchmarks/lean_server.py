"""A lean OpenAI-compatible chat server for speed benchmarks: every POST is answered after a fixed
latency with one short completion, on one asyncio loop with hand-rolled HTTP/1.1 (keep-alive,
Content-Length bodies). It spends a few tens of microseconds per request where the full simulator
(`recursive_llm.testing.fake_server`, threads and `http.server`) spends about a millisecond, so on a
2-core machine it leaves the client's CPU as the only cost beside the latency, as a remote
provider does. It answers nothing else the simulator does (no faults, no streaming, no scripts).

Run: python benchmarks/lean_server.py [--latency 0.1]   (prints "lean server: <base url>")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

REPLY = json.dumps({"id": "chatcmpl-lean", "object": "chat.completion", "created": 0, "model": "lean",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(REPLY)).encode() + b"\r\n\r\n" + REPLY)
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
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
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(latency)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_connection(r, w, latency), "127.0.0.1", 0,
                                        limit=MAX_HEADER_BYTES, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"lean server: http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    asyncio.run(main(parser.parse_args().latency))
