"""docs/SERVING.md's client table, one test per row: each client package itself, in its default
configuration unless the table says otherwise, against a real `rlm serve` process backed by a fake
model server whose scripted root model reads the input with code (so an answer can only be right
if the input reached the run) and follows the client's instructions and schemas."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import is_root
from test_server import TOKEN, Served

DOCUMENT = "Project notes.\n\nThe team met on Tuesday.\n\nThe staging server is called kestrel.\n"
QUESTION = "What is the staging server called?"
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no fetch of its price list


def capable_root(messages: list[dict], model: str) -> str:
    """A root model that finds the name in `context` with code, then answers as it is asked to: as
    JSON when a schema is required (the schema's first property), in DSPy's field markers when the
    client's instructions ask for them, else plainly."""
    if not is_root(messages):
        return "sub"
    turn = sum(1 for m in messages if m["role"] == "assistant")
    prompt = "\n".join(str(m["content"]) for m in messages)
    if turn == 0:
        return ("```repl\nimport re\nfound = re.search(r'server is called (\\w+)', str(context))\n"
                "answer = found.group(1) if found else 'not found'\n```")
    schema = re.search(r'matches this JSON schema.*?"properties": \{\s*"(\w+)"', prompt, re.S)
    if schema and turn == 1:
        return f"```repl\nanswer = {{{schema.group(1)!r}: answer}}\n```"
    if "[[ ## completed ## ]]" in prompt and turn == 1:
        return "```repl\nanswer = '[[ ## answer ## ]]\\n' + answer + '\\n\\n[[ ## completed ## ]]'\n```"
    return "FINAL_VAR(answer)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    with FakeLLMServer(responder=capable_root) as backend:
        served = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
        yield served
        served.stop()


def test_openai_python_chat_stream_usage_parse_responses(server):
    from pydantic import BaseModel

    class Server(BaseModel):
        name: str

    client = server.client()
    plain = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": DOCUMENT},
                                                                  {"role": "user", "content": QUESTION}])
    chunks = list(client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": QUESTION}],
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"context": DOCUMENT}))
    parsed = client.chat.completions.parse(model="rlm", messages=[{"role": "user", "content": QUESTION}],
                                           response_format=Server, extra_body={"context": DOCUMENT})
    response = client.responses.create(model="rlm", input=f"{DOCUMENT}\n{QUESTION}")
    typed = client.responses.parse(model="rlm", input=QUESTION, text_format=Server, extra_body={"context": DOCUMENT})
    with client.responses.stream(model="rlm", input=QUESTION, extra_body={"context": DOCUMENT}) as events:
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events.get_final_response()
    assert plain.choices[0].message.content == "kestrel"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "kestrel"
    assert chunks[-1].usage.total_tokens > 0
    assert parsed.choices[0].message.parsed == Server(name="kestrel")
    assert response.output_text == "kestrel" and typed.output_parsed == Server(name="kestrel")
    assert deltas == "kestrel" and final.usage.total_tokens > 0


def test_litellm_completion_and_responses(server):
    litellm = pytest.importorskip("litellm")
    common = {"model": "openai/rlm", "api_base": server.url + "/v1", "api_key": TOKEN}
    chat = litellm.completion(messages=[{"role": "user", "content": f"{DOCUMENT}\n{QUESTION}"}], **common)
    response = litellm.responses(input=f"{DOCUMENT}\n{QUESTION}", **common)
    assert chat.choices[0].message.content == "kestrel"
    assert response.output[0].content[0].text == "kestrel"


def test_langchain_chat_openai_plain_structured_and_responses(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel

    class Server(BaseModel):
        name: str

    common = {"model": "rlm", "base_url": server.url + "/v1", "api_key": TOKEN}
    chat = langchain_openai.ChatOpenAI(**common)
    plain = chat.invoke([("system", "Answer with the name only."), ("human", f"{DOCUMENT}\n{QUESTION}")])
    calling = chat.with_structured_output(Server, method="function_calling").invoke(f"{DOCUMENT}\n{QUESTION}")
    schema = chat.with_structured_output(Server).invoke(f"{DOCUMENT}\n{QUESTION}")  # json_schema, the default
    responses = langchain_openai.ChatOpenAI(**common, use_responses_api=True).invoke(f"{DOCUMENT}\n{QUESTION}")
    assert plain.content == "kestrel"
    assert calling == Server(name="kestrel") and schema == Server(name="kestrel")
    assert responses.text == "kestrel"


def test_openai_agents_sdk_default_responses_model(server):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(AsyncOpenAI(base_url=server.url + "/v1", api_key=TOKEN), use_for_tracing=False)
    agent = agents.Agent(name="notes", instructions="Answer with the name only.", model="rlm")  # Responses API

    async def both():
        result = await agents.Runner.run(agent, f"{DOCUMENT}\n{QUESTION}")
        streamed = agents.Runner.run_streamed(agent, f"{DOCUMENT}\n{QUESTION}")
        kinds = [event.type async for event in streamed.stream_events()]
        return result.final_output, streamed.final_output, kinds

    plain, streamed, kinds = asyncio.run(both())
    assert plain == "kestrel" and streamed == "kestrel" and "raw_response_event" in kinds


def test_pydantic_ai_text_and_its_default_structured_output(server):
    pytest.importorskip("pydantic_ai")
    from pydantic import BaseModel
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class Server(BaseModel):
        name: str

    provider = OpenAIProvider(base_url=server.url + "/v1", api_key=TOKEN)
    text = Agent(OpenAIChatModel("rlm", provider=provider)).run_sync(f"{DOCUMENT}\n{QUESTION}")
    typed = Agent(OpenAIChatModel("rlm", provider=provider), output_type=Server).run_sync(f"{DOCUMENT}\n{QUESTION}")
    responses = Agent(OpenAIResponsesModel("rlm", provider=provider)).run_sync(f"{DOCUMENT}\n{QUESTION}")
    typed_responses = Agent(OpenAIResponsesModel("rlm", provider=provider), output_type=Server).run_sync(
        f"{DOCUMENT}\n{QUESTION}")
    assert text.output == "kestrel" and typed.output == Server(name="kestrel") and responses.output == "kestrel"
    assert typed_responses.output == Server(name="kestrel")


def test_the_table_names_every_client_tested_here():
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "docs" / "SERVING.md").read_text()
    for client in ("openai (Python)", "`llm`", "LiteLLM", "LangChain", "OpenAI Agents SDK", "pydantic-ai",
                   "DSPy", "LlamaIndex", "openai (npm)", "Vercel AI SDK"):
        assert f"| {client}" in table, client
