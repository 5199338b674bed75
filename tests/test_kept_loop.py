"""`RLM.completion` keeps its event loop, and the configured models' HTTP clients on it, from one
call to the next (kept_loop.py): the provider's connections are reused. Against the test server
through the real HTTP clients."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from recursive_llm import RLM
from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub

CODE = "r = llm_query_batched([f'#{i}' for i in range(8)])\nprint(sum(x.startswith('sub:') for x in r))"
TURNS = ["```repl\n" + CODE + "\n```", "FINAL_VAR(r)"]


@pytest.fixture(autouse=True)
def rlm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RLM_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("transport", ["httpx", "sdk"])
def test_the_next_completion_reuses_the_providers_connections(transport, monkeypatch):
    monkeypatch.setenv("RLM_OPENAI_TRANSPORT", transport)
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.02) as server:
        rlm = RLM(model="m", base_url=server.base_url, api_key="k", store=None)
        first = rlm.completion("q", "text")
        opened = server.connections
        second = rlm.completion("q", "text")
        assert server.connections == opened  # the second run sent its calls over the first run's connections
        rlm.close()
        third = rlm.completion("q", "text")  # closed: still usable, over new connections
        assert server.connections > opened
        rlm.close()
    assert [r.answer.count("sub:") for r in (first, second, third)] == [8, 8, 8]


def test_as_a_context_manager_the_connections_are_closed_at_the_end():
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.02) as server:
        with RLM(model="m", base_url=server.base_url, api_key="k", store=None) as rlm:
            rlm.completion("q", "text")
            assert rlm._kept_loop.is_running_here() is False  # (no loop runs in this thread now)
        assert rlm._kept_loop._runner is None


SCRIPT = """
import os, sys
from recursive_llm import RLM
rlm = RLM(model="m", base_url=sys.argv[1], api_key="k", store=None)
print(rlm.completion("q", "text").answer.count("sub:"), flush=True)
if sys.argv[2] == "fork":  # a child of a process that has used the kept loop: a loop of its own
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(30)  # a child on its parent's loop hangs: fail in 30 s, not at the test's timeout
        os._exit(0 if rlm.completion("q", "text").answer.count("sub:") == 8 else 1)
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
print(rlm.completion("q", "text").answer.count("sub:"), flush=True)
if sys.argv[2] == "dropped":  # collected before the exit: its loop is only noted, the exit closes it
    import gc
    del rlm
    gc.collect()
"""


@pytest.mark.parametrize("ending", ["exit", "dropped", "fork"])
def test_a_process_that_never_closes_its_rlm_ends_cleanly(ending, tmp_path):
    """Nothing to close by hand: at exit the kept clients are closed (no "Unclosed client session"),
    and a forked child never uses its parent's connections."""
    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.02) as server:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), server.base_url, ending],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RLM_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ["8", "child 0", "8"] if ending == "fork" else ["8", "8"]
    assert done.stdout.split("\n")[:-1] == expected, done.stdout
    assert "Unclosed" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_closing_from_inside_another_event_loop_still_closes_the_kept_one():
    """A finalizer can run anywhere, an async app's loop among them."""
    import asyncio

    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.02) as server:
        rlm = RLM(model="m", base_url=server.base_url, api_key="k", store=None)
        rlm.completion("q", "text")
        kept = rlm._kept_loop._runner.get_loop()

        async def elsewhere() -> None:
            rlm.close()

        asyncio.run(elsewhere())
    assert kept.is_closed() and rlm._kept_loop._runner is None
    assert not rlm.root_client._http_clients._held  # its HTTP client was closed on it, not dropped


def test_a_collected_rlm_is_closed_by_the_next_call_not_by_the_collector():
    """A finalizer runs at whatever allocation triggers the garbage collector, in any thread: one that
    ran the loop to close it inside the start of a new thread deadlocked that thread's starter."""
    import gc

    from recursive_llm.engine import kept_loop

    with FakeLLMServer(responder=root_then_sub(TURNS), latency=0.02) as server:
        dropped = RLM(model="m", base_url=server.base_url, api_key="k", store=None)
        dropped.completion("q", "text")
        kept = dropped._kept_loop
        loop = kept._runner.get_loop()
        del dropped
        gc.collect()
        assert not loop.is_closed() and kept in kept_loop._dropped  # noted by the finalizer, nothing more
        other = RLM(model="m", base_url=server.base_url, api_key="k", store=None)
        other.completion("q", "text")  # a safe place: closes the collected RLM's loop first
        assert loop.is_closed() and kept not in kept_loop._dropped
        other.close()
