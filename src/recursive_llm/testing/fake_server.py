"""`FakeLLMServer`: a real OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1, for tests.

It answers from a `responder(messages, model) -> str`, sleeps `latency` seconds per request, and
can inject faults (429 with Retry-After, 500, 503, garbage JSON, dropped connections, hangs),
either from a queue (`faults=["429", "500"]`, one per request) or at random (`fault_rate`).

    with FakeLLMServer(responder=lambda messages, model: "hi", latency=0.1) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")

Run it standalone: `python -m recursive_llm.testing.fake_server --port 8000 --latency 0.1`.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict], str], str]
FAULT_KINDS = ("429", "500", "503", "garbage", "drop", "timeout")


def echo_responder(messages: list[dict], model: str) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {"content": ""})
    content = last_user["content"]
    if isinstance(content, list):  # Anthropic content blocks
        content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return "echo: " + str(content)[:200]


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def fake_logprobs(text: str, as_ids: bool) -> dict:
    """The `logprobs` of a chat choice, as vLLM sends it for `text` (one token per 4 characters):
    each token its text, or "token_id:<int>" with `return_tokens_as_token_ids`."""
    pieces = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
    return {"content": [{"token": f"token_id:{1000 + i}" if as_ids else piece, "logprob": -0.125 * (i % 8),
                         "bytes": list(piece.encode()), "top_logprobs": []} for i, piece in enumerate(pieces)]}


def _block_text(content: Any) -> str:
    """A message's text: a string, or the text of its content blocks."""
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return str(content)


class PromptCache:
    """The providers' prompt caches, as far as usage shows them (our model of them, not theirs):

    - OpenAI caches automatically: a request whose leading messages equal an earlier request's
      has those messages' tokens cached, in whole 128-token steps, once the prompt has 1,024 tokens.
    - Anthropic caches what the request marks: each `cache_control` block ends a prefix that is
      written. The longest prefix an earlier request wrote that ends at a mark, or up to 20 blocks
      before the last one, is read; the rest up to the last mark is written. Prompts under 1,024
      tokens are not cached. `input_tokens` is what is left.

    Token counts are the server's (about four characters per token, per message).
    """

    MIN_TOKENS, STEP, LOOKBACK = 1024, 128, 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._openai: list[list[str]] = []  # earlier requests, as their messages' keys
        self._written: set[str] = set()  # Anthropic prefixes in the cache
        self.cached_tokens = 0  # everything this server reported as read from its cache
        self.written_tokens = 0

    @staticmethod
    def _key(message: dict) -> str:
        return json.dumps([message.get("role"), _block_text(message.get("content", ""))])

    def openai(self, messages: list[dict]) -> int:
        keys = [self._key(m) for m in messages]
        tokens = [_tokens(str(m.get("content", ""))) for m in messages]
        with self._lock:
            shared = max((_common_prefix(keys, earlier) for earlier in self._openai), default=0)
            self._openai = [*self._openai[-63:], keys]
            if sum(tokens) < self.MIN_TOKENS:
                return 0
            cached = sum(tokens[:shared]) // self.STEP * self.STEP
            self.cached_tokens += cached
            return cached

    def anthropic(self, messages: list[dict]) -> tuple[int, int]:
        """(tokens read from the cache, tokens written to it) for one request."""
        tokens = [_tokens(_block_text(m.get("content", ""))) for m in messages]
        marks = [i for i, m in enumerate(messages) if isinstance(m.get("content"), list)
                 and any(isinstance(b, dict) and b.get("cache_control") for b in m["content"])]
        if not marks or sum(tokens) < self.MIN_TOKENS:
            return 0, 0
        # A mark also finds an earlier prefix ending up to 20 blocks before it (Anthropic's lookback).
        candidates = sorted({*marks, *range(max(0, marks[-1] - self.LOOKBACK), marks[-1] + 1)})
        keys = [self._key(m) for m in messages]
        prefixes = {i: "\x00".join(keys[:i + 1]) for i in candidates}
        with self._lock:
            hit = max((i for i in candidates if prefixes[i] in self._written), default=None)
            read = sum(tokens[:hit + 1]) if hit is not None else 0
            written = sum(tokens[:marks[-1] + 1]) - read
            self._written.update(prefixes[i] for i in marks)
            self.cached_tokens += read
            self.written_tokens += written
            return read, written


def _common_prefix(a: list[str], b: list[str]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client gave up (a timeout test): not the server's problem
        super().handle_error(request, client_address)


class FakeLLMServer:
    def __init__(self, responder: Responder = echo_responder, *, latency: float | Callable[[], float] = 0.0,
                 faults: list[str] | None = None, fault_rate: float = 0.0,
                 fault_kinds: tuple[str, ...] = ("429", "500", "503", "garbage", "drop"), seed: int = 0,
                 retry_after: str = "0", hang_seconds: float = 30.0, port: int = 0,
                 tokens_per_second: float | None = None, max_concurrency: int | None = None,
                 reasoning: Responder | None = None, prompt_cache: bool = False,
                 usage: dict[str, Any] | None = None, logprobs: Any = None) -> None:
        """`latency`: seconds per request, or a function drawing them (a distribution);
        `prompt_cache`: the providers' prompt caches (see `PromptCache`), reported in usage;
        `reasoning`: a second responder whose text is sent as the reply's separate reasoning, the
        way reasoning models' servers do (OpenAI-compatible: `reasoning_content`; Anthropic: a
        `thinking` block before the text);
        `tokens_per_second`: generation speed, adding completion tokens / speed to each reply;
        `max_concurrency`: requests beyond it get 429 with `retry_after`, like a provider's limit;
        `usage`: forged usage, a hostile provider's: these fields replace those of the usage each reply
        reports (OpenAI's names on /chat/completions, Anthropic's on /messages), e.g.
        `{"prompt_tokens": -10**6}` or `{"prompt_tokens_details": {"cached_tokens": 10**7}}`;
        `logprobs`: forged `choices[0].logprobs`, a hostile provider's, sent when a request asks for
        logprobs (otherwise `fake_logprobs` of the reply, as vLLM does)."""
        for fault in [*(faults or []), *fault_kinds]:
            if fault not in FAULT_KINDS:
                raise ValueError(f"unknown fault {fault!r}; choose from {FAULT_KINDS}")
        self.responder = responder
        self.reasoning = reasoning
        self.prompt_cache = PromptCache() if prompt_cache else None
        self.forged_usage = dict(usage or {})
        self.forged_logprobs = logprobs
        self.latency = latency
        self.tokens_per_second = tokens_per_second
        self.max_concurrency = max_concurrency
        self.rejected = 0
        self.fault_rate = fault_rate
        self.fault_kinds = fault_kinds
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self._faults = list(faults or [])
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.request_count = 0
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []  # each request's HTTP headers (names in lower case), as `requests`
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0  # TCP connections accepted (a client that reuses its connections opens few)
        self.faults_injected: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeLLMServer":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", self._port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _next_fault(self) -> str | None:
        with self._lock:
            if self._faults:
                fault = self._faults.pop(0)
            elif self.fault_rate and self._random.random() < self.fault_rate:
                fault = self._random.choice(self.fault_kinds)
            else:
                return None
            self.faults_injected.append(fault)
            return fault

    def _enter(self, path: str, body: dict, headers: dict[str, str]) -> None:
        with self._lock:
            self.request_count += 1
            self.requests.append({"path": path, **body})
            self.request_headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK hold the body back by up to 40 ms on every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._connected()

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model",
                                                              "owned_by": "recursive-llm"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        if len(data) < length:  # the client hung up before its whole body arrived: nobody to answer
            self.close_connection = True
            return
        try:
            body = json.loads(data or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}})
            return
        fake = self.fake
        fake._enter(self.path, body, {name.lower(): value for name, value in self.headers.items()})
        try:
            if fake.max_concurrency is not None and fake.in_flight > fake.max_concurrency:
                with fake._lock:
                    fake.rejected += 1
                self._send_json(429, {"error": {"message": "too many concurrent requests", "type": "rate_limit_error"}},
                                {"Retry-After": fake.retry_after})
                return
            delay = fake.latency() if callable(fake.latency) else fake.latency
            if delay:
                time.sleep(delay)
            fault = fake._next_fault()
            if fault and self._inject(fault):
                return
            if self.path.endswith("/chat/completions"):
                self._chat(body)
            elif self.path.endswith("/messages"):
                self._anthropic(body)
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        finally:
            fake._leave()

    def _inject(self, fault: str) -> bool:
        """Answer with `fault`; False for a hang, which then answers normally."""
        if fault == "429":
            self._send_json(429, {"error": {"message": "rate limited (injected)", "type": "rate_limit_error"}},
                            {"Retry-After": self.fake.retry_after})
        elif fault in ("500", "503"):
            self._send_json(int(fault), {"error": {"message": f"server error {fault} (injected)", "type": "server_error"}})
        elif fault == "garbage":
            body = b'{"choices": [ this is not json'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif fault == "timeout":
            time.sleep(self.fake.hang_seconds)
            return False
        return True

    def _chat(self, body: dict) -> None:
        messages, model = body.get("messages", []), body.get("model", "fake-model")
        text = self.fake.responder(messages, model)
        prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in messages)
        cache = self.fake.prompt_cache
        cached = cache.openai(messages) if cache is not None else 0
        completion_tokens = _tokens(text)
        if self.fake.tokens_per_second:
            time.sleep(completion_tokens / self.fake.tokens_per_second)
        if body.get("stream"):
            self._stream_chat(text, model, prompt_tokens, completion_tokens)
            return
        message = {"role": "assistant", "content": text}
        if self.fake.reasoning is not None:
            message["reasoning_content"] = self.fake.reasoning(messages, model)
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs") is True:
            choice["logprobs"] = (self.fake.forged_logprobs if self.fake.forged_logprobs is not None else
                                  fake_logprobs(text, body.get("return_tokens_as_token_ids") is True))
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      **({"prompt_tokens_details": {"cached_tokens": cached}} if cache is not None else {}),
                      **self.fake.forged_usage},
        })

    def _stream_chat(self, text: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        pieces = [text[i:i + 16] for i in range(0, len(text), 16)] or [""]
        for index, piece in enumerate(pieces):
            delta = {"content": piece, **({"role": "assistant"} if index == 0 else {})}
            event = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        final = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}}
        self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()

    def _anthropic(self, body: dict) -> None:
        messages = list(body.get("messages", []))
        if body.get("system"):
            messages.insert(0, {"role": "system", "content": body["system"]})
        model = body.get("model", "fake-model")
        # The responder sees plain text, whether the request sent strings or content blocks.
        text = self.fake.responder([{**m, "content": _block_text(m.get("content", ""))} for m in messages], model)
        total = sum(_tokens(_block_text(m.get("content", ""))) for m in messages)
        read, written = (self.fake.prompt_cache.anthropic(messages) if self.fake.prompt_cache is not None
                         else (0, 0))
        blocks = [{"type": "text", "text": text}]
        if self.fake.reasoning is not None:
            blocks.insert(0, {"type": "thinking", "thinking": self.fake.reasoning(messages, model), "signature": "sig"})
        self._send_json(200, {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": total - read - written, "output_tokens": _tokens(text),
                      "cache_read_input_tokens": read, "cache_creation_input_tokens": written,
                      **self.fake.forged_usage},
        })


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI/Anthropic-compatible server for tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    args = parser.parse_args()
    serve_forever(FakeLLMServer(latency=args.latency, fault_rate=args.fault_rate, port=args.port), "fake server")


def serve_forever(server: FakeLLMServer, label: str) -> None:
    """Start `server`, print its URL, and keep it up until Ctrl-C (for the command-line entry points)."""
    server.start()
    print(f"{label}: {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
