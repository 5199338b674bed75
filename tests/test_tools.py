"""User tools (issue 14, item 2): functions of the user's that model code calls from the REPL; they
run in the host, through the real worker process."""

from __future__ import annotations

import os

import pytest

from recursive_llm import RLM
from recursive_llm.errors import ConfigError
from recursive_llm.record.events import read_trajectory
from recursive_llm.testing import ScriptedModel

KEY = "sk-tool-test-0123456789abcdef"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def lookup_price(sku: str, currency: str = "EUR") -> dict:
    """The price of one product, from the shop's API (needs the API key)."""
    assert os.environ.get("OPENAI_API_KEY") == KEY  # the host has the key
    return {"sku": sku, "price": 12.5 if sku == "A-1" else 3.0, "currency": currency}


async def stock_level(sku: str) -> int:
    """Units in stock (an async function works too)."""
    return {"A-1": 7}.get(sku, 0)


def broken(x: int) -> int:
    """Always fails."""
    raise LookupError(f"no record {x}")


def test_a_tool_is_called_from_the_worker_and_runs_in_the_host(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    code = ("import os\nprint('key in worker:', 'OPENAI_API_KEY' in os.environ)\n"
            "p = lookup_price('A-1', currency='USD')\nn = stock_level('A-1')\nprint(p, n)\n"
            "try:\n    broken(3)\nexcept ToolError as e:\n    print('tool error:', e)\n"
            "try:\n    lookup_price()\nexcept ToolError as e:\n    print('bad call:', e)")
    root = ScriptedModel([repl(code), "FINAL(done)"])
    result = RLM(model=root, tools=[lookup_price, stock_level, broken]).completion("q", "text")
    assert result.answer == "done"
    system = root.calls[0][0]["content"]
    assert "`lookup_price(sku: str, currency: str = 'EUR') -> dict`" in system
    assert "The price of one product" in system and "`stock_level(sku: str) -> int`" in system
    shown = root.calls[1][-1]["content"]
    assert "key in worker: False" in shown
    assert "{'sku': 'A-1', 'price': 12.5, 'currency': 'USD'} 7" in shown
    assert "tool error: broken raised LookupError: no record 3" in shown
    assert "bad call: lookup_price(sku: str, currency: str = 'EUR') -> dict: missing a required argument" in shown
    tools = result.usage.to_dict()["tools"]
    assert tools["lookup_price"]["calls"] == 2 and tools["lookup_price"]["errors"] == 1
    assert tools["broken"] == {**tools["broken"], "calls": 1, "errors": 1}
    events = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "tool_call"]
    assert [e["name"] for e in events] == ["lookup_price", "stock_level", "broken", "lookup_price"]
    from recursive_llm.record.store import Store

    calls = [c for c in Store().run_tree(result.run_id)["calls"] if c["purpose"] == "tool"]
    assert [(c["model"], c["status"]) for c in calls] == [("tool:lookup_price", "ok"), ("tool:stock_level", "ok"),
                                                          ("tool:broken", "error"), ("tool:lookup_price", "error")]
    assert calls[0]["response"] == '{"sku": "A-1", "price": 12.5, "currency": "USD"}'


def test_a_tool_call_is_bounded_by_call_timeout_s():
    import time

    def slow() -> str:
        """Takes long."""
        time.sleep(5)
        return "late"

    root = ScriptedModel([repl("try:\n    slow()\nexcept ToolError as e:\n    print(e)"), "FINAL(done)"])
    result = RLM(model=root, tools=[slow], call_timeout_s=0.5).completion("q", "text")
    assert result.answer == "done" and "slow did not return within 0.5 s" in root.calls[1][-1]["content"]


def test_budgets_hold_a_tool_call_ends_at_the_runs_deadline():
    """A tool that never returns is cut off where the run's `timeout_s` runs out (not at the 300 s
    `call_timeout_s`), and the run stops on its time budget, with the call recorded as failed."""
    import asyncio
    import re

    async def wait_forever() -> str:
        """Never returns by itself."""
        await asyncio.sleep(3600)
        return "late"

    events: list = []
    root = ScriptedModel([repl("try:\n    wait_forever()\nexcept ToolError as e:\n    print(e)"), "FINAL(late)"])
    result = RLM(model=root, tools=[wait_forever], timeout_s=8, on_event=events.append).completion("q", "text")
    assert result.stopped_reason == "timeout" and result.answer != "late"
    [call] = [e for e in events if e["type"] == "tool_call"]
    cut = re.fullmatch(r"wait_forever did not return within ([\d.]+) s", call["error"])
    assert cut and float(cut.group(1)) <= 8
    assert result.usage.to_dict()["tools"]["wait_forever"]["errors"] == 1


def test_hanging_tools_hold_at_most_max_tool_threads(monkeypatch):
    """A sync tool past its timeout is abandoned; its thread keeps its slot until it returns, and
    past the limit a call waits for a slot within its own timeout (no thread is started for it)."""
    import threading

    from recursive_llm.engine import tools

    monkeypatch.setattr(tools, "TOOL_THREADS", tools.ToolThreads(2))
    release, alive = threading.Event(), []

    def stuck(n: int) -> int:
        """Hangs until released."""
        alive.append(sum(t.name == "rlm-tool-stuck" for t in threading.enumerate()))  # not an earlier test's
        release.wait(30)
        return n

    def quick(n: int) -> int:
        """Returns at once."""
        return n

    first = "for n in range(4):\n    try:\n        stuck(n)\n    except ToolError as e:\n        print(n, e)"
    root = ScriptedModel([repl(first), repl("print('quick:', quick(5))"), "FINAL(done)"])
    rlm = RLM(model=root, tools=[stuck, quick], call_timeout_s=0.5,
              on_event=lambda e: release.set() if e["type"] == "cell" else None)
    result = rlm.completion("q", "text")
    seen = root.calls[1][-1]["content"]
    assert result.answer == "done" and len(alive) == 2 and max(alive) <= 2, (alive, seen)
    assert "0 stuck did not return within 0.5 s\n1 stuck did not return within 0.5 s\n" in seen
    assert seen.count("stuck did not start within 0.5 s: all 2 tool threads are taken by calls that have not "
                      "returned") == 2
    assert "quick: 5" in root.calls[2][-1]["content"]  # the released threads gave their slots back


HANGING_SCRIPT = """
import time
from recursive_llm import RLM
from recursive_llm.testing import ScriptedModel

def hang() -> str:
    '''Never returns in time.'''
    time.sleep(600)
    return 'late'

code = "try:\\n    hang()\\nexcept ToolError as e:\\n    print(e)"
root = ScriptedModel([f"```repl\\n{code}\\n```", "FINAL(done)"])
print(RLM(model=root, tools=[hang], call_timeout_s=1).completion('q', 'text').answer)
"""


def test_a_hanging_tool_does_not_hold_the_process_at_exit(tmp_path):
    """The run returns at the tool's timeout and the process exits: nothing joins the tool's thread
    (asyncio's default executor's threads are joined when its loop closes and at exit)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "hang.py"
    script.write_text(HANGING_SCRIPT)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
    assert time.monotonic() - started < 60  # the tool sleeps 600 s


@pytest.mark.parametrize("bad", [lambda: 1, "not a function"])
def test_tools_that_cannot_be_named_in_the_repl_are_refused(bad):
    with pytest.raises(ConfigError):
        RLM(model=ScriptedModel([]), tools=[bad])


def test_a_tool_may_not_shadow_the_repl():
    def llm_query(prompt):
        return "forged"

    with pytest.raises(ConfigError, match="REPL's own names"):
        RLM(model=ScriptedModel([]), tools=[llm_query])


def test_import_tool_from_a_module_or_a_file(tmp_path, monkeypatch):
    from recursive_llm.engine.tools import import_tool

    (tmp_path / "shop_tools.py").write_text("def price(sku: str) -> float:\n    '''A price.'''\n    return 1.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_tool("shop_tools:price")("x") == 1.5
    assert import_tool(str(tmp_path / "shop_tools.py") + ":price")("x") == 1.5
    for bad, message in (("shop_tools", "module:function"), ("no_such_module:f", "cannot import"),
                         ("shop_tools:missing", "has no 'missing'")):
        with pytest.raises(ConfigError, match=message):
            import_tool(bad)
