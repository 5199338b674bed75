"""`rlm mcp` driven by the official MCP SDK's own stdio client."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer
from scripted_root import root_then_sub

mcp = pytest.importorskip("mcp", reason="the server extra (mcp) is not installed")

TURNS = ["```repl\nprint(len(context))\n```", "FINAL(it is about revenue)"]


def tool_result(result) -> dict:
    if result.structured_content is not None:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)


def test_mcp_tools_over_stdio(tmp_path):
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    root = tmp_path / "root"
    root.mkdir()
    (root / "report.txt").write_text("Revenue grew in every quarter.\n" * 20)
    (tmp_path / "outside.txt").write_text("secret")

    async def scenario(base_url: str):
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "recursive_llm", "mcp", "--model", "m", "--base-url", base_url,
                                          "--root", str(root)],
            env={"PYTHONPATH": os.environ["PYTHONPATH"], "RLM_HOME": os.environ["RLM_HOME"]})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = (await session.list_tools()).tools
                tools = sorted(tool.name for tool in listed)
                described = {(tool.name, name): spec.get("description") for tool in listed
                             for name, spec in tool.input_schema["properties"].items()}
                loaded = tool_result(await session.call_tool("load_context", {"paths": ["report.txt"]}))
                answer = tool_result(await session.call_tool("ask", {"question": "What is it about?",
                                                                     "context_id": loaded["context_id"]}))
                inline = tool_result(await session.call_tool("ask", {"question": "And this?", "text": "a note"}))
                escape = await session.call_tool("load_context", {"paths": ["../outside.txt"]})
                unknown = await session.call_tool("ask", {"question": "q", "context_id": "ctx-nope"})
                return tools, described, loaded, answer, inline, escape, unknown

    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        tools, described, loaded, answer, inline, escape, unknown = asyncio.run(
            asyncio.wait_for(scenario(server.base_url), 120))
    assert tools == ["ask", "load_context"]
    # every argument of every tool is described in its input schema (what clients show, models read)
    assert set(described) == {("load_context", "text"), ("load_context", "paths"), ("ask", "question"),
                              ("ask", "context_id"), ("ask", "text"), ("ask", "max_iterations")}
    assert all(description and len(description) > 20 for description in described.values()), described
    assert "str of 620 characters" in loaded["description"]
    assert answer["answer"] == "it is about revenue" and answer["stopped_reason"] == "final"
    assert answer["usage"]["calls"] == 2 and inline["answer"] == "it is about revenue"
    assert Store().find_run(answer["run_id"]) == answer["run_id"]
    assert escape.is_error and "outside this server's root" in escape.content[0].text
    assert str(Path.home()) not in escape.content[0].text
    assert unknown.is_error and "unknown context_id" in unknown.content[0].text


def _mcp_session(root: Path, base_url: str, calls):
    """Run `calls(session)` against `rlm mcp --root root` through the SDK's stdio client."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async def scenario():
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "recursive_llm", "mcp", "--model", "m", "--base-url", base_url,
                                          "--root", str(root)],
            env={"PYTHONPATH": os.environ["PYTHONPATH"], "RLM_HOME": os.environ["RLM_HOME"]})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await calls(session)

    return asyncio.run(asyncio.wait_for(scenario(), 120))


@pytest.fixture
def rooted(tmp_path):
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "report.txt").write_text("Revenue grew in every quarter.\n")
    secret = tmp_path / "secret.env"
    secret.write_text("OPENAI_API_KEY=sk-live-MCPSECRET-123456\n")
    secret.chmod(0o600)
    return root, secret


def test_mcp_refuses_symlinks_out_of_the_root_and_bad_names(rooted):
    root, secret = rooted
    (root / "link.env").symlink_to(secret)
    (root / "up").symlink_to(root.parent, target_is_directory=True)

    async def calls(session):
        results = {}
        for name in ("link.env", "up/secret.env", "docs/report.txt\x00", "x" * 5000, str(secret)):
            results[name] = await session.call_tool("load_context", {"paths": [name]})
        results["text"] = tool_result(await session.call_tool("load_context", {"text": str(secret)}))
        return results

    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        results = _mcp_session(root, server.base_url, calls)
    for name in ("link.env", "up/secret.env", str(secret)):
        assert results[name].is_error and "outside this server's root" in results[name].content[0].text, name
    assert "symlink" in results["link.env"].content[0].text
    assert results["docs/report.txt\x00"].is_error and "NUL" in results["docs/report.txt\x00"].content[0].text
    assert results["x" * 5000].is_error and "too long" in results["x" * 5000].content[0].text
    # text is text: a path given as `text` is not read
    assert f"str of {len(str(secret))} characters" in results["text"]["description"]
    assert "MCPSECRET" not in json.dumps(results["text"])


def test_mcp_directory_with_a_symlink_out_of_it_does_not_load_the_target(rooted):
    root, secret = rooted
    (root / "docs" / "link").symlink_to(secret)

    async def calls(session):
        return tool_result(await session.call_tool("load_context", {"paths": ["docs"]}))

    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        loaded = _mcp_session(root, server.base_url, calls)
    assert "MCPSECRET" not in json.dumps(loaded)
    assert "1 item" in loaded["description"] or "documents" in loaded["description"]


def test_mcp_ask_whose_run_failed_is_a_tool_error(rooted):
    root, _ = rooted

    async def calls(session):
        return await session.call_tool("ask", {"question": "q", "text": "a note"})

    with FakeLLMServer(faults=["500"] * 200, fault_kinds=()) as server:
        failed = _mcp_session(root, server.base_url, calls)
    assert failed.is_error and "without an answer" in failed.content[0].text


def test_mcp_ceilings_are_the_serve_ceilings_checked_at_once():
    """`rlm mcp`'s limits are the same schema as `rlm serve`'s (`serving/limits.py`): the serve
    ceilings by default, an operator's value checked when the server is made, and a request's
    `max_iterations` lowers the ceiling, never raises it."""
    from recursive_llm.errors import ConfigError
    from recursive_llm.serving.limits import serve_ceilings
    from recursive_llm.serving.mcp import MCPConfig, limits_for

    config = MCPConfig(root=Path.cwd(), rlm={"max_iterations": 6, "model": "m"})
    assert config.limits == serve_ceilings(max_iterations=6) and config.rlm == {"model": "m"}
    assert limits_for(config, 3).max_iterations == 3 and limits_for(config, 50).max_iterations == 6
    with pytest.raises(ConfigError, match="the timeout_s ceiling must be a finite number"):
        MCPConfig(root=Path.cwd(), rlm={"timeout": float("nan")})
