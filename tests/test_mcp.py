"""`rlm mcp` driven by the official MCP SDK's own stdio client."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from recursive_llm.store import Store
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
                tools = sorted(tool.name for tool in (await session.list_tools()).tools)
                loaded = tool_result(await session.call_tool("load_context", {"paths": ["report.txt"]}))
                answer = tool_result(await session.call_tool("ask", {"question": "What is it about?",
                                                                     "context_id": loaded["context_id"]}))
                inline = tool_result(await session.call_tool("ask", {"question": "And this?", "text": "a note"}))
                escape = await session.call_tool("load_context", {"paths": ["../outside.txt"]})
                unknown = await session.call_tool("ask", {"question": "q", "context_id": "ctx-nope"})
                return tools, loaded, answer, inline, escape, unknown

    with FakeLLMServer(responder=root_then_sub(TURNS)) as server:
        tools, loaded, answer, inline, escape, unknown = asyncio.run(asyncio.wait_for(scenario(server.base_url), 120))
    assert tools == ["ask", "load_context"]
    assert "str of 620 characters" in loaded["description"]
    assert answer["answer"] == "it is about revenue" and answer["stopped_reason"] == "final"
    assert answer["usage"]["calls"] == 2 and inline["answer"] == "it is about revenue"
    assert Store().find_run(answer["run_id"]) == answer["run_id"]
    assert escape.is_error and "outside this server's root" in escape.content[0].text
    assert str(Path.home()) not in escape.content[0].text
    assert unknown.is_error and "unknown context_id" in unknown.content[0].text
