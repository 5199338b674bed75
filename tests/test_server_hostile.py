"""`rlm serve` against hostile requests (issue 15): a real server process on 127.0.0.1, the official
openai client or raw httpx / sockets, a fake model server behind it. Every test here failed before
its fix: file reads through earlier messages, NaN limits, malformed bodies, symlinks out of the
root, the token in argv, one cache for every client, idle connections held for ever."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub
from test_server import TOKEN, TURNS, Served

SECRET = "sk-live-SECRETVALUE-0123456789"
QUESTION = {"role": "user", "content": "What does the context say?"}


@pytest.fixture
def backend():
    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        yield server


@pytest.fixture
def tree(tmp_path):
    """An allowed root with a report, a secret file (0600) and a .env next to it, outside the root."""
    root = tmp_path / "allowed"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "report.txt").write_text("The quarterly report says revenue grew.\n")
    secret = tmp_path / "secret.env"
    secret.write_text(f"OPENAI_API_KEY={SECRET}\n")
    secret.chmod(0o600)
    return root, secret


@pytest.fixture
def served(backend, tree):
    server = Served(backend_url=backend.base_url, root=tree[0], env={"RLM_SERVE_TOKEN": TOKEN})
    yield server
    server.stop()


def sent_to_model(backend) -> str:
    return json.dumps(backend.requests, ensure_ascii=False)


def post(served, body: bytes | dict, token: str = TOKEN) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(served.url + "/v1/chat/completions", content=content, timeout=60,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


# -- 1. text over the network is text ---------------------------------------------------------------
def test_an_earlier_message_naming_a_file_is_text_never_read(served, backend, tree):
    root, secret = tree
    client = served.client()
    for name in (str(secret), "/etc/shadow", str(secret.parent), str(root / "docs" / "report.txt")):
        reply = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": name}, QUESTION])
        assert reply.choices[0].message.content == "the answer is 42"
        assert reply.model_extra["rlm"]["error"] is None
    seen = sent_to_model(backend)
    assert SECRET not in seen and "root:" not in seen and "revenue grew" not in seen
    # the model saw the path as a string of its own length, not a file's contents
    assert f"str of {len(str(secret))} characters" in seen
    # and whether a path exists is not told apart: a missing one answers the same
    missing = client.chat.completions.create(model="rlm", messages=[
        {"role": "user", "content": str(secret.parent / "nope.env")}, QUESTION])
    assert missing.choices[0].message.content == "the answer is 42"


def test_several_earlier_messages_naming_files_are_text(served, backend, tree):
    _, secret = tree
    reply = served.client().chat.completions.create(model="rlm", messages=[
        {"role": "user", "content": str(secret)}, {"role": "assistant", "content": "/etc/passwd"}, QUESTION])
    assert reply.choices[0].message.content == "the answer is 42"
    seen = sent_to_model(backend)
    assert SECRET not in seen
    assert "root:x:0:0" not in seen
    assert "list[str] of 2 items" in seen


# -- 2. NaN and other non-limits -------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("name", ["max_llm_calls", "timeout_s", "max_iterations", "max_cost_usd", "max_tokens",
                                  "max_depth"])
def test_non_finite_limits_are_refused_before_any_call(served, backend, literal, name):
    raw = ('{"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": "text", '
           f'"rlm": {{"{name}": {literal}}}}}').encode()
    refused = post(served, raw)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "finite" in message or "too large" in message
    assert backend.requests == []


@pytest.mark.parametrize("value", [True, "5", 0, -1, [3], {"n": 1}, None, 2.5])
def test_limits_that_are_not_positive_numbers_are_refused_naming_the_field(served, backend, value):
    refused = post(served, {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": "text",
                            "rlm": {"max_iterations": value}})
    assert refused.status_code == 400 and "rlm.max_iterations" in refused.json()["error"]["message"]
    assert backend.requests == []


def test_serve_limits_clamp_a_request_and_refuse_nan():
    from recursive_llm.errors import ConfigError
    from recursive_llm.serving.limits import clamp, serve_ceilings

    ceilings = serve_ceilings(max_iterations=5, max_llm_calls=5, timeout_s=3.0)
    clamped = clamp(ceilings, {"max_llm_calls": 10**9, "timeout_s": 1.5, "max_cost_usd": 0.25})
    assert (clamped.max_llm_calls, clamped.timeout_s, clamped.max_cost_usd, clamped.max_iterations) == (5, 1.5, 0.25, 5)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="rlm.max_llm_calls must be a finite"):
            clamp(ceilings, {"max_llm_calls": bad})
    with pytest.raises(ConfigError, match="the timeout_s ceiling must be a finite"):
        serve_ceilings(timeout_s=float("nan"))


SERVE = ["serve", "--model", "m", "--base-url", "http://127.0.0.1:9"]
ASK = ["ask", "q", "--context", "x", "--model", "m", "--base-url", "http://127.0.0.1:9"]


@pytest.mark.parametrize("command", [[*SERVE, "--max-body-mb"], [*SERVE, "--shutdown-grace"], [*SERVE, "--idle-timeout"],
                                     [*SERVE, "--body-timeout"],
                                     [*SERVE, "--timeout"], [*SERVE, "--max-cost"], [*ASK, "--max-file-mb"],
                                     [*ASK, "--timeout"], [*ASK, "--temperature"]], ids=lambda c: c[0] + c[-1])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_command_line_limits_refuse_non_finite_numbers(command, value):
    """The operator's flags too: `--max-body-mb nan` and `--max-file-mb nan` were tracebacks,
    `--shutdown-grace nan` a server started with a NaN grace."""
    from click.testing import CliRunner

    from recursive_llm.cli.main import main

    done = CliRunner().invoke(main, [*command, value])
    assert done.exit_code == 2, done.output
    assert "must be a finite number" in done.output and "Traceback" not in done.output


def test_temperature_and_max_tokens_out_of_range_are_400(served, backend):
    for extra in ({"temperature": -1}, {"temperature": 9}, {"max_tokens": 0}, {"max_tokens": -5}):
        refused = post(served, {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": "t",
                                **extra})
        assert refused.status_code == 400, (extra, refused.text)
    assert backend.requests == []


# -- malformed requests: 400 with the reason, never a bare 500 --------------------------------------
def test_malformed_requests_get_400_with_the_reason(served, backend):
    ask = {"model": "rlm", "messages": [{"role": "user", "content": "q"}]}
    cases = {
        "NUL byte": {**ask, "context": {"files": ["docs/report.txt\x00.png"]}},
        "too long a name": {**ask, "context": {"files": ["a" * 5000]}},
        "255 bytes per part": {**ask, "context": {"files": ["docs/" + "b" * 300]}},
    }
    for reason, body in cases.items():
        refused = post(served, body)
        assert refused.status_code == 400 and reason in refused.json()["error"]["message"], (reason, refused.text)
    deep = b'{"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": ' + \
        b"[" * 100_000 + b"]" * 100_000 + b"}"
    modest = b'{"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": ' + \
        b"[" * 200 + b'"x"' + b"]" * 200 + b"}"
    surrogate = b'{"model": "rlm", "messages": [{"role": "user", "content": "q \\ud800 r"}], "context": "t"}'
    surrogate_key = b'{"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": {"\\udfff": 1}}'
    for raw, reason in ((deep, "nested"), (modest, "nested"), (surrogate, "lone surrogate"),
                        (surrogate_key, "lone surrogate"), (b'{"model": "rlm", "messages": [', "not valid JSON"),
                        (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                        (b'{"model": "rlm", "messages": "hello"}', "invalid request")):
        refused = post(served, raw)
        assert refused.status_code == 400, (reason, refused.status_code, refused.text[:300])
        assert reason in refused.json()["error"]["message"], (reason, refused.text[:300])
    assert backend.requests == []
    assert "Traceback" not in served.stop()


# -- symlinks out of the allowed root ---------------------------------------------------------------
def test_a_context_file_that_is_a_symlink_out_of_the_root_is_refused(served, backend, tree):
    root, secret = tree
    (root / "link.env").symlink_to(secret)
    (root / "up").symlink_to(root.parent, target_is_directory=True)
    (root / "docs" / "inside").symlink_to(root / "docs" / "report.txt")  # a link within the root is fine
    client = served.client()
    for name in ("link.env", "up/secret.env", "docs/../link.env"):
        with pytest.raises(openai.BadRequestError, match="outside the allowed root") as refused:
            client.chat.completions.create(model="rlm", messages=[QUESTION], extra_body={"context": {"files": [name]}})
        assert str(root) not in refused.value.body["message"]
    reply = client.chat.completions.create(model="rlm", messages=[QUESTION],
                                           extra_body={"context": {"files": ["docs/inside"]}})
    assert reply.choices[0].message.content == "the answer is 42"
    assert SECRET not in sent_to_model(backend)


def test_a_symlink_deeper_inside_an_allowed_directory_is_not_followed_out(served, backend, tree):
    root, secret = tree
    (root / "docs" / "link").symlink_to(secret)  # docs/link -> ../../secret.env
    (root / "docs" / "outside").symlink_to(secret.parent, target_is_directory=True)
    reply = served.client().chat.completions.create(model="rlm", messages=[QUESTION],
                                                    extra_body={"context": {"files": ["docs"]}})
    assert reply.choices[0].message.content == "the answer is 42"
    seen = sent_to_model(backend)
    assert "revenue grew" in seen or "documents" in seen
    assert SECRET not in seen


# -- the token: never only in argv ------------------------------------------------------------------
def test_the_token_comes_from_the_environment_or_a_file_never_argv(backend, tree, tmp_path):
    root, _ = tree
    by_env = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
    try:
        cmdline = Path(f"/proc/{by_env.process.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline
        assert by_env.client().models.list().data
        with pytest.raises(openai.AuthenticationError):
            by_env.client(token="wrong-token-value").models.list()
    finally:
        by_env.stop()
    token_file = tmp_path / "tokens"
    token_file.write_text("# one token per client\nclient-one-token-abc\nclient-two-token-def\n")
    by_file = Served("--token-file", str(token_file), backend_url=backend.base_url, root=root,
                     env={"RLM_SERVE_TOKEN": ""})
    try:
        assert b"client-one" not in Path(f"/proc/{by_file.process.pid}/cmdline").read_bytes()
        assert by_file.client(token="client-one-token-abc").models.list().data
        assert by_file.client(token="client-two-token-def").models.list().data
        with pytest.raises(openai.AuthenticationError):
            by_file.client(token="client-three").models.list()
    finally:
        by_file.stop()
    by_argv = Served("--token", TOKEN, backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": ""})
    try:
        assert by_argv.client().models.list().data  # still works...
    finally:
        assert "process list" in by_argv.stop()  # ...but says why it should not be used


def test_the_call_cache_is_per_client(backend, tree, tmp_path):
    root, _ = tree
    token_file = tmp_path / "tokens"
    token_file.write_text("alice-token-0001\nbob-token-00002\n")
    server = Served("--token-file", str(token_file), backend_url=backend.base_url, root=root,
                    env={"RLM_SERVE_TOKEN": ""})
    request = dict(model="rlm", temperature=0, messages=[{"role": "user", "content": "Who signed the contract?"}],
                   extra_body={"context": "The contract was signed by Alice and Bob on 3 May."})
    try:
        alice = server.client(token="alice-token-0001").chat.completions.create(**request)
        bob = server.client(token="bob-token-00002").chat.completions.create(**request)
        alice_again = server.client(token="alice-token-0001").chat.completions.create(**request)
    finally:
        server.stop()
    assert alice.model_extra["rlm"]["cached_calls"] == 0
    assert bob.model_extra["rlm"]["cached_calls"] == 0  # nothing learned about what alice asked
    assert alice_again.model_extra["rlm"]["cached_calls"] == 4  # her own cache still works
    assert bob.choices[0].message.content == "the answer is 42"


# -- idle and slow connections are closed -----------------------------------------------------------
def _closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the test's own limit: 30 s)."""
    sock.settimeout(30)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def test_idle_and_slow_connections_are_closed(backend, tree):
    root, _ = tree
    server = Served("--idle-timeout", "1", backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
    try:
        def connect() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

        with connect() as silent:  # connects and says nothing
            assert _closed_by_server(silent) == b""
        with connect() as slow_headers:  # a request line and one header, then nothing (slowloris)
            slow_headers.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            assert _closed_by_server(slow_headers) == b""
        with connect() as slow_body:  # whole headers, then a tenth of the body it announced
            slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                              + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                              + b'{"model": ')
            answer = _closed_by_server(slow_body)
            assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer
        with connect() as kept_alive:  # one whole request, then idle on the kept-alive connection
            kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_by_server(kept_alive).startswith(b"HTTP/1.1 200")
        # and the server still serves
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr


# -- a run whose client went away is not left `running` --------------------------------------------
def test_a_stream_the_client_drops_leaves_an_interrupted_run(tree):
    from recursive_llm.record.store import Store

    root, _ = tree
    slow = ["```repl\nnotes = [llm_query('a'), llm_query('b'), llm_query('c')]\n```", "FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(slow), latency=0.5) as backend:
        server = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
        try:
            seen: list[str] = []  # the run's copy of its input, as soon as a watcher sees it
            stop_watching = threading.Event()

            def watch() -> None:
                while not stop_watching.is_set() and not seen:
                    seen.extend(_loaded_worker_dirs(server.process.pid))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {TOKEN}"},
                              json={"model": "rlm", "stream": True, "messages": [QUESTION], "context": "text"}) as sent:
                lines = sent.iter_lines()  # kept: a dropped iterator closes the response, hanging up early
                for line in lines:
                    if '"type": "iteration"' in line:
                        break  # the first root call is under way; then the cell (its sub-calls take 1.5 s)
                deadline = time.time() + 30
                while time.time() < deadline and not seen:
                    time.sleep(0.05)
            stop_watching.set()
            watcher.join()
            had_input = list(seen)
            deadline = time.time() + 30  # hung up: the run is stopped and its copy removed
            while time.time() < deadline and ([r["status"] for r in Store().list_runs()] != ["interrupted"]
                                              or _loaded_worker_dirs(server.process.pid)):
                time.sleep(0.1)
            runs, left = Store().list_runs(), _loaded_worker_dirs(server.process.pid)
        finally:
            server.stop()
    assert had_input and not left, (had_input, left)
    assert [r["status"] for r in runs] == ["interrupted"]
    assert "disconnected" in Store().run_tree(runs[0]["run_id"])["runs"][0]["error"]


def _send_and_hang_up(url: str, route: str, body: dict, until=lambda: True) -> None:
    """A client that sends a streamed request, waits for `until()` without reading a byte of the
    answer, and hangs up (a reset: what a killed client or a proxy's timeout does)."""
    import struct
    from urllib.parse import urlsplit

    data = json.dumps(body).encode()
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        deadline = time.time() + 30
        while time.time() < deadline and not until():
            time.sleep(0.02)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _settled(url: str) -> tuple[int, list[str]]:
    """/health's active count once it is 0 (or 30 s passed), and the runs' statuses once none is `running`."""
    from recursive_llm.record.store import Store

    deadline = time.time() + 30
    while time.time() < deadline and (httpx.get(url + "/health", timeout=10).json()["active"]
                                      or any(r["status"] == "running" for r in Store().list_runs())):
        time.sleep(0.1)
    return httpx.get(url + "/health", timeout=10).json()["active"], _statuses()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/responses"])
def test_a_stream_dropped_before_its_first_chunk_gives_its_slot_back_and_stops_its_run(tree, route):
    """Issue: a streamed request whose client leaves before reading any chunk might keep its slot.
    It does not: with --max-concurrent 1, after each hang-up (at once, and while its run's first model
    call is in flight) /health counts no active request, every run that started is `interrupted`, and
    a request sent after is admitted and answered (not a 429). Each stream's access-log line names
    its run (before, a Responses stream its client left was logged `run=-`)."""
    from recursive_llm.record.store import Store

    slow = ["```repl\nnotes = [llm_query('a'), llm_query('b'), llm_query('c')]\n```", "FINAL(done)"]
    chat = route.endswith("completions")
    body = ({"model": "rlm", "messages": [QUESTION], "context": "text"} if chat
            else {"model": "rlm", "input": QUESTION["content"], "context": "text"})
    with FakeLLMServer(responder=root_then_sub(slow), latency=0.5) as backend:
        server = Served("--max-concurrent", "1", backend_url=backend.base_url, root=tree[0],
                        env={"RLM_SERVE_TOKEN": TOKEN})
        try:
            _send_and_hang_up(server.url, route, {**body, "stream": True})  # before the server answers
            at_once = _settled(server.url)
            _send_and_hang_up(server.url, route, {**body, "stream": True}, until=lambda: backend.request_count > 0)
            in_flight = _settled(server.url)
            after = httpx.post(server.url + route, json=body, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        finally:
            stderr = server.stop()
    assert at_once[0] == 0 and set(at_once[1]) <= {"interrupted"}, at_once
    assert in_flight[0] == 0 and in_flight[1].count("interrupted") == len(at_once[1]) + 1, in_flight
    assert after.status_code == 200, after.text
    assert "Traceback" not in stderr
    for run in Store().list_runs():
        assert f"POST {route} 200 run={run['run_id']} " in stderr, (run["run_id"], stderr[-2000:])


def _loaded_worker_dirs(host_pid: int) -> list[str]:
    """The worker directories of `host_pid` that hold a request's input (a pre-started spare's
    input directory is empty until a request loads it), in the temporary directory or in the worker
    template's spool there (environments/prestart/template.py)."""
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), f"rlm-worker-{host_pid}-*")
    return [d for d in glob.glob(pattern) + glob.glob(os.path.join(pattern, f"rlm-worker-{host_pid}-*"))
            if os.path.isdir(os.path.join(d, "input")) and os.listdir(os.path.join(d, "input"))]


# -- issue 25: transport-level attacks ---------------------------------------------------------------
def _heavy_body() -> bytes:
    """A chat request whose context is a 7.4 MB dict of 120,000 small entries: cheap to send,
    expensive to parse and walk."""
    context = {f"key-{i}": [i, "a value of some text", {"n": i, "ok": True}] for i in range(120_000)}
    body = json.dumps({"model": "rlm", "messages": [QUESTION], "context": context}).encode()
    assert len(body) > 7_000_000
    return body


def test_a_full_server_refuses_heavy_bodies_before_parsing_them_and_health_stays_fast(tree):
    """Every slot busy, six 7.4 MB dict contexts at once: each is answered 429 without being parsed,
    and /health answers within 1 s while they are in flight (it took 7-10 s when every body was
    parsed before the capacity check). The run holding the slot finishes and none is left running."""
    from recursive_llm.record.store import Store

    root, _ = tree
    slow = ["```repl\nprint(llm_query('a'))\n```", "FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(slow), latency=2.0) as backend:  # holds the slot for 6 s
        server = Served("--max-concurrent", "1", backend_url=backend.base_url, root=root,
                        env={"RLM_SERVE_TOKEN": TOKEN})
        try:
            holder = threading.Thread(target=lambda: post(served=server, body={
                "model": "rlm", "messages": [QUESTION], "context": "text"}), daemon=True)
            holder.start()
            deadline = time.time() + 30
            while time.time() < deadline and httpx.get(server.url + "/health", timeout=10).json()["active"] < 1:
                time.sleep(0.05)
            heavy, statuses = _heavy_body(), []
            senders = [threading.Thread(target=lambda: statuses.append(post(server, heavy).status_code), daemon=True)
                       for _ in range(6)]
            slowest = 0.0
            with httpx.Client(timeout=30) as probe:  # made before: its own setup is not the server's latency
                probe.get(server.url + "/health")
                for sender in senders:
                    sender.start()
                while any(sender.is_alive() for sender in senders):
                    started = time.perf_counter()
                    assert probe.get(server.url + "/health").status_code == 200
                    slowest = max(slowest, time.perf_counter() - started)
                    time.sleep(0.05)
            holder.join(60)
            runs = Store().list_runs()
        finally:
            stderr = server.stop()
    assert slowest < 1.0, f"/health took {slowest:.2f} s while the heavy bodies were in flight"
    assert statuses == [429] * 6, statuses
    assert [r["status"] for r in runs] == ["final"], runs  # finished, not left running
    assert "Traceback" not in stderr


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback_and_no_500(served):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b'{"model": "rlm"')
            time.sleep(0.3)
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200
    stderr = served.stop()
    assert "Traceback" not in stderr and "ClientDisconnect" not in stderr, stderr[-3000:]
    posts = [line for line in stderr.splitlines() if "POST /v1/chat/completions" in line]
    assert len(posts) == 3 and all(" 499 " in line for line in posts), posts


def test_a_path_cannot_write_a_forged_line_into_the_access_log(served):
    forged = "2026-01-01T00:00:00 GET /v1/models 200 run=- 0.001s"
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET /x%0a" + forged.replace(" ", "%20").encode() + b"%0d%0a HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        assert _closed_by_server(sock).startswith(b"HTTP/1.1 ")
    stderr = served.stop()
    assert not any(line.startswith(forged) for line in stderr.splitlines()), stderr
    assert "GET /x%0A2026-01-01T00:00:00%20GET%20/v1/models" in stderr


def test_a_trickled_body_is_cut_at_the_body_deadline_and_connections_are_capped(backend, tree):
    """One byte every 0.5 s stays under the 2 s idle timeout for ever; the body deadline (3 s) ends
    each such request with 408 and closes it, and a connection beyond --max-connections is answered
    503 at once instead of being held."""
    root, _ = tree
    server = Served("--idle-timeout", "2", "--body-timeout", "3", "--max-connections", "12", "--max-concurrent", "2",
                    backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
    socks: list[socket.socket] = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            sock.setblocking(False)
            socks.append(sock)
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port)) as extra:  # the 13th: refused, not held
            refused = _closed_by_server(extra)
        assert refused.startswith(b"HTTP/1.1 503") and b"too many open connections" in refused, refused[:300]
        answers = {sock: b"" for sock in socks}
        closed: set[socket.socket] = set()
        deadline = time.time() + 30  # the test's own limit; the server's deadline is 3 s
        while len(closed) < len(socks) and time.time() < deadline:
            for sock in socks:
                if sock in closed:
                    continue
                try:
                    sock.send(b" ")
                    while chunk := sock.recv(65536):
                        answers[sock] += chunk
                    closed.add(sock)  # recv returned b"": the server closed it
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(sock)
            time.sleep(0.5)
        assert len(closed) == len(socks), f"{len(socks) - len(closed)} trickling connections still open after 30 s"
        assert all(answer.startswith(b"HTTP/1.1 408") and b"took more than 3 s" in answer
                   for answer in answers.values()), list(answers.values())[:2]
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # room again
    finally:
        for sock in socks:
            sock.close()
        stderr = server.stop()
    assert "Traceback" not in stderr
# -- issue 25: a client's JSON schema never fetches, stalls the server or leaves a run `running` -----
SCHEMA_REPLIES = {  # what the root model answers, by the question's marker
    "Q-backtrack": 'FINAL({"code": "' + "a" * 29 + '!"})',  # `re` backtracks 2^29 ways on it
    "Q-digits": "FINAL(" + "1" * 5_000 + ")",  # before: ValueError, a 500, the run left `running`
    "Q-deep": "FINAL(" + "[" * 100_000 + "]" * 100_000 + ")",  # before: RecursionError, the same
}


def _schema_responder(messages: list[dict], model: str) -> str:
    from scripted_root import is_root

    if not is_root(messages):
        return "sub"
    asked = messages[1]["content"]
    return next(reply for marker, reply in SCHEMA_REPLIES.items() if marker in asked)


@pytest.fixture
def schema_served(tree):
    with FakeLLMServer(responder=_schema_responder) as backend:
        server = Served(backend_url=backend.base_url, root=tree[0], env={"RLM_SERVE_TOKEN": TOKEN})
        yield server
        server.stop()


class HealthWatch:
    """Polls /health every 0.1 s while an attack is in flight; `slowest` is its slowest answer (no answer: inf)."""

    def __init__(self, url: str) -> None:
        self.url, self.times, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "HealthWatch":
        self._client = httpx.Client(timeout=5)  # one connection, opened before the attack: only answers are timed
        self._client.get(self.url + "/health")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answered = self._client.get(self.url + "/health").status_code == 200
            except httpx.HTTPError:
                answered = False
            self.times.append(time.monotonic() - started if answered else float("inf"))
            time.sleep(0.1)

    @property
    def slowest(self) -> float:
        return max(self.times)


def _typed(question: str, schema: dict) -> dict:
    return {"model": "rlm", "messages": [{"role": "user", "content": question}], "context": "some text",
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}


def _post_all(served, bodies: list[dict]) -> list[httpx.Response]:
    """The requests at once, each on its own connection."""
    replies: list = [None] * len(bodies)

    def send(index: int) -> None:
        try:
            replies[index] = httpx.post(served.url + "/v1/chat/completions", json=bodies[index], timeout=60,
                                        headers={"Authorization": f"Bearer {TOKEN}"})
        except httpx.HTTPError as error:
            replies[index] = error
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def _statuses() -> list[str]:
    from recursive_llm.record.store import Store

    return sorted(run["status"] for run in Store().list_runs())


def test_a_schema_reference_is_never_fetched_and_one_outside_the_schema_is_a_400(schema_served):
    """Before: `{"$ref": "http://127.0.0.1:PORT/x.json"}` made the server connect there (SSRF) and hang
    while it stayed silent; a file: or missing reference was a 500 with the run left `running`."""
    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(0.2)
    accepted: list = []

    def accept() -> None:
        while silent.fileno() != -1:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue
    threading.Thread(target=accept, daemon=True).start()
    port = silent.getsockname()[1]
    refs = [f"http://127.0.0.1:{port}/x.json", "file:///etc/passwd", "#/$defs/missing", "other.json"]
    try:
        with HealthWatch(schema_served.url) as health:
            replies = _post_all(schema_served, [_typed("Q-digits", {"$ref": ref}) for ref in refs])
            time.sleep(0.5)
    finally:
        silent.close()
    for reply in replies:
        assert isinstance(reply, httpx.Response) and reply.status_code == 400, reply
        assert "does not point inside the schema" in reply.json()["error"]["message"]
    assert not accepted  # nothing connected to the address the schema named
    assert health.slowest < 1.0, health.times
    assert _statuses() == []  # refused before any run started


def test_a_huge_schema_is_a_400_naming_the_bound_and_the_server_keeps_answering(schema_served):
    """Before: a 9.3 MB schema with 150,000 properties held the event loop for 51 s."""
    huge = {"type": "object", "properties": {f"property_{i:06d}": {"type": "string", "description": "a field"}
                                             for i in range(150_000)}}
    repeated = {"type": "string", "pattern": "(?:(?:a{1000}){1000}){1000}"}  # `regex` would expand it
    with HealthWatch(schema_served.url) as health:
        replies = _post_all(schema_served, [_typed("Q-digits", huge), _typed("Q-digits", repeated)])
    assert [reply.status_code for reply in replies] == [400, 400], replies
    huge_refused = replies[0].json()["error"]["message"]  # its keys pass the text bound first
    assert "the schema has more than 500,000 characters of text, the limit" in huge_refused
    assert "over the limit of 10,000" in replies[1].json()["error"]["message"]
    assert health.slowest < 1.0, health.times
    assert _statuses() == []


def test_a_backtracking_pattern_never_blocks_the_server(schema_served):
    """Before: `"pattern": "^(a+)+$"` against a 29-character answer blocked /health for 16-19 s.
    `^(a|a)*$` backtracks in the `regex` module as well: its check gives up at its deadline."""
    patterns = ["^(a+)+$", "^(a|a)*$"]
    bodies = [_typed("Q-backtrack", {"type": "object", "properties": {"code": {"type": "string", "pattern": p}},
                                     "required": ["code"]}) for p in patterns]
    with HealthWatch(schema_served.url) as health:
        replies = _post_all(schema_served, bodies)
    for reply in replies:
        assert isinstance(reply, httpx.Response) and reply.status_code == 502, reply
        assert "did not match the schema after 3 tries" in reply.json()["error"]["message"]
    assert "does not match '^(a+)+$'" in replies[0].json()["error"]["message"]
    assert "took over 2 s" in replies[1].json()["error"]["message"]
    assert health.slowest < 1.0, health.times
    assert _statuses() == ["error", "error"]


def test_a_typed_answer_the_parser_cannot_take_ends_the_run_not_the_request(schema_served):
    """Before: an answer of 5,000 digits or nested 100,000 deep was a 500 and left the run `running`."""
    with HealthWatch(schema_served.url) as health:
        replies = _post_all(schema_served, [_typed("Q-digits", {"type": "integer"}),
                                            _typed("Q-deep", {"type": "array"})])
    for reply, told in zip(replies, ["a number of 5,000 digits", "nested more than 64 levels"]):
        assert isinstance(reply, httpx.Response) and reply.status_code == 502, reply
        assert "did not match the schema after 3 tries" in reply.json()["error"]["message"]
        assert told in reply.json()["error"]["message"]
    assert health.slowest < 1.0, health.times
    assert _statuses() == ["error", "error"]


def test_a_bad_schema_is_a_400_naming_the_field_the_client_sent_it_in(schema_served):
    """Before: every bad schema was reported as `response_format.json_schema.schema`, also one sent as a
    forced function's parameters or as the Responses API's `text.format`: the client was told of a
    field it never sent."""
    bad = {"$ref": "#/$defs/missing"}  # checked after admission, by answer_schema.py
    question = [{"role": "user", "content": "Q-digits"}]
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    forced = {"type": "function", "function": {"name": "answer", "parameters": bad}}
    responses_tools = [{"type": "function", "name": "other", "parameters": {"type": "object"}},
                       {"type": "function", "name": "answer", "parameters": bad}]
    sent = {  # the field each body carries the schema in -> (route, body)
        "response_format.json_schema.schema": ("/v1/chat/completions", _typed("Q-digits", bad)),
        "tools[1].function.parameters": ("/v1/chat/completions", {
            "model": "rlm", "messages": question, "context": "x", "tools": [other, forced],
            "tool_choice": {"type": "function", "function": {"name": "answer"}}}),
        "text.format.schema": ("/v1/responses", {
            "model": "rlm", "input": "Q-digits", "context": "x",
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": bad}}}),
        "tools[1].parameters": ("/v1/responses", {
            "model": "rlm", "input": "Q-digits", "context": "x", "tools": responses_tools,
            "tool_choice": {"type": "function", "name": "answer"}}),
    }
    for field, (route, body) in sent.items():
        reply = httpx.post(schema_served.url + route, json=body, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 400, (field, reply.text)
        message = reply.json()["error"]["message"]
        assert message.startswith(f"{field}: ") and "does not point inside the schema" in message, (field, message)
    not_a_schema = {"model": "rlm", "input": "Q-digits", "context": "x",
                    "text": {"format": {"type": "json_schema", "name": "answer", "schema": "an object"}}}
    reply = httpx.post(schema_served.url + "/v1/responses", json=not_a_schema, timeout=60,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 400 and reply.json()["error"]["message"].startswith("text.format.schema must be")
    assert _statuses() == []
