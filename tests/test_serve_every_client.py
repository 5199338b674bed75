"""Issue 28: `rlm serve` serves every client as it comes. One request is at most one paid run (a
failed run is not retried, a client that leaves stops its run), the input is found where each
client puts it, the Responses API, and errors in the clients' shapes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from recursive_llm.serving.messages import query_and_input
from recursive_llm.record.store import Store
from recursive_llm.testing import FakeLLMServer
from scripted_root import is_root, root_then_sub
from test_serve_clients import llm_configured
from test_server import TOKEN, TURNS, Served, backend, served  # noqa: F401  (fixtures)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIND_KESTREL = ["```repl\nimport re\nfound = re.search(r'server is called (\\w+)', context)\n"
                "answer = found.group(1) if found else 'not found'\n```", "FINAL_VAR(answer)"]


def roots_started(backend: FakeLLMServer) -> int:
    """Runs started at the model server: root conversations at their first turn."""
    return sum(1 for r in backend.requests
               if is_root(r["messages"]) and not any(m["role"] == "assistant" for m in r["messages"]))


def first_root_prompt(backend: FakeLLMServer) -> str:
    first = next(r["messages"] for r in backend.requests if is_root(r["messages"]))
    return "\n".join(str(m["content"]) for m in first)


def serve(backend: FakeLLMServer, tmp_path: Path, *args: str) -> Served:
    root = tmp_path / "allowed"
    root.mkdir(exist_ok=True)
    return Served(*args, backend_url=backend.base_url, root=root, env={"RLM_SERVE_TOKEN": TOKEN})


# -- 2. one request, one paid run --------------------------------------------------------------------
def test_a_failed_run_costs_one_run_with_the_sdks_default_retries(tmp_path):
    """Every model call fails (the server's own retries included): a client that does not retry
    measures what one run costs at the model server; the SDK's defaults (2 retries) cost the same."""
    with FakeLLMServer(faults=["500"] * 200, fault_kinds=()) as backend:
        server = serve(backend, tmp_path)
        try:
            def ask(question: str) -> dict:
                return {"model": "rlm", "messages": [{"role": "user", "content": question}], "extra_body": {"context": "x"}}
            with pytest.raises(openai.APIStatusError):
                server.client().chat.completions.create(**ask("q"))  # max_retries=0
            one_run = backend.request_count
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN)  # the SDK's default: 2 retries
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(**ask("another q"))
            chat = backend.request_count - one_run
            with pytest.raises(openai.APIStatusError) as failed_too:
                client.responses.create(model="rlm", input="q", extra_body={"context": "x"})
            responses = backend.request_count - one_run - chat
        finally:
            server.stop()
    assert failed.value.status_code == 502 and failed.value.response.headers["x-should-retry"] == "false"
    assert failed_too.value.status_code == 502
    assert one_run > 0 and chat == one_run and responses == one_run


def test_a_client_that_retries_a_failed_run_anyway_gets_its_failure_without_a_new_run(tmp_path):
    """Clients that retry every 5xx without saying so (the Vercel AI SDK sends no retry count): the
    same request from the same client soon after a failed run gets that failure again, with no new
    run; a different request runs; a request whose run answered runs again when sent again."""
    plain = {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": "x"}
    with FakeLLMServer(faults=["500"] * 200, fault_kinds=()) as backend:
        server = serve(backend, tmp_path)
        try:
            post = lambda body: httpx.post(server.url + "/v1/chat/completions", json=body,  # noqa: E731
                                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            first = post(plain)
            one_run = backend.request_count
            again = post(plain)
            replayed = backend.request_count - one_run
            post({**plain, "context": "y"})
            other = backend.request_count - one_run
        finally:
            server.stop()
    assert first.status_code == again.status_code == 502
    assert again.json()["error"]["message"] == first.json()["error"]["message"]
    assert one_run > 0 and replayed == 0 and other == one_run
    with FakeLLMServer(responder=lambda messages, model: "FINAL(fine)") as backend:
        server = serve(backend, tmp_path)
        try:
            answers = [post(plain).json()["choices"][0]["message"]["content"] for _ in range(2)]
        finally:
            server.stop()
    assert answers == ["fine", "fine"] and roots_started(backend) == 2


def test_a_client_that_gives_up_stops_its_run(tmp_path):
    """A client with a 1.5 s timeout and the SDK's default 2 retries, and a run of 20 turns of 0.6 s:
    the three attempts are one run, stopped (recorded `interrupted`) after the last one gave up,
    before its end; a stream whose client leaves stops its run too."""
    turns = ["```repl\nprint(len(context))\n```"] * 40 + ["FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.6) as backend:
        server = serve(backend, tmp_path)
        try:
            since = time.time()
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, timeout=1.5)  # 2 retries
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                               extra_body={"context": "some text"})
            with pytest.raises(openai.APITimeoutError):
                with server.client(timeout=1.5).responses.create(model="rlm", input="q", stream=True,
                                                                 extra_body={"context": "other text"}) as events:
                    for _ in events:
                        pass
            time.sleep(6)  # the grace a retrying client gets (3 s), and then some
            calls = backend.request_count
            time.sleep(2)
            later = backend.request_count
            runs = Store().list_runs(since=since)
        finally:
            server.stop()
    assert roots_started(backend) == 2  # one run per request, the retries included
    assert later == calls  # both stopped
    assert sorted(run["status"] for run in runs) == ["interrupted", "interrupted"]
    longest = max(sum(m["role"] == "assistant" for m in r["messages"]) for r in backend.requests)
    assert longest < 19  # neither reached its end (20 turns, the serve ceiling)


def test_a_full_server_says_when_to_retry_from_the_runs_in_flight():
    from recursive_llm.serving.runs import RunClock

    clock = RunClock()
    assert clock.retry_after() == "1"
    first = clock.start()
    clock._started[first] -= 5.5  # a run that has been going for 5.5 s, and none has ended yet
    assert clock.retry_after() == "6"
    clock.end(first)  # it took 5.5 s: the next one, 1 s in, likely needs 4.5 more
    second = clock.start()
    clock._started[second] -= 1
    assert clock.retry_after() == "5"


# -- 3. the input, where each client puts it -------------------------------------------------------
@pytest.mark.skipif(shutil.which("llm") is None, reason="simonw's llm CLI is not installed (pip install llm)")
@pytest.mark.parametrize("piped", ["hello", "last-paragraph"])
def test_llm_finds_a_needle_in_the_last_paragraph_of_a_piped_file(tmp_path, piped):
    text = (EXAMPLES / "hello.txt").read_text() if piped == "hello" else \
        "Intro paragraph.\n\nMiddle paragraph about billing.\n\nThe staging server is called kestrel.\n"
    with FakeLLMServer(responder=root_then_sub(FIND_KESTREL)) as backend:
        server = serve(backend, tmp_path)
        try:
            env = llm_configured(tmp_path, server)
            (tmp_path / "notes.txt").write_text(text)
            done = subprocess.run(["bash", "-c", f"cat {tmp_path / 'notes.txt'} | llm -m rlm --no-stream "
                                                 f"'What is the staging server called?'"],
                                  capture_output=True, text=True, env=env, timeout=120)
        finally:
            server.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kestrel"
    assert "What is the staging server called?" in first_root_prompt(backend)


# The messages the clients send (captured from dspy 3's ChatAdapter and llama-index's default text-QA
# template through OpenAILike(is_chat_model=True)), with a document and a question filled in.
DOC = "\n\n".join(f"Paragraph {i} of the handbook." for i in range(300)) + "\n\nThe staging server is called kestrel."
DSPY = [{"role": "system", "content": "Your input fields are:\n1. `context` (str):\n2. `question` (str):\nYour output "
         "fields are:\n1. `answer` (str):\nAll interactions will be structured in the following way, with the "
         "appropriate values filled in.\n\n[[ ## context ## ]]\n{context}\n\n[[ ## question ## ]]\n{question}\n\n"
         "[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]\nIn adhering to this structure, your objective is: "
         "\n        Given the fields `context`, `question`, produce the fields `answer`."},
        {"role": "user", "content": f"[[ ## context ## ]]\n{DOC}\n\n[[ ## question ## ]]\nWhat is the staging "
         "server called?\n\nRespond with the corresponding output fields, starting with the field `[[ ## answer "
         "## ]]`, and then ending with the marker for `[[ ## completed ## ]]`."}]
LLAMA_INDEX = [{"role": "system", "content": "You are an expert Q&A system that is trusted around the world.\nAlways "
                "answer the query using the provided context information, and not prior knowledge.\nSome rules to "
                "follow:\n1. Never directly reference the given context in your answer.\n2. Avoid statements like "
                "'Based on the context, ...' or 'The context information ...' or anything along those lines."},
               {"role": "user", "content": f"Context information is below.\n---------------------\n{DOC}\n"
                "---------------------\nGiven the context information and not prior knowledge, answer the query.\n"
                "Query: What is the staging server called?\nAnswer: "}]
STUFFED_SYSTEM = [{"role": "system", "content": "Use the following pieces of context to answer the question.\n\n" + DOC},
                  {"role": "user", "content": "What is the staging server called?"}]


@pytest.mark.parametrize("messages", [DSPY, LLAMA_INDEX, STUFFED_SYSTEM], ids=["dspy", "llama-index", "system-doc"])
def test_each_clients_message_shape_keeps_instructions_question_and_input(messages):
    texts = [(m["role"], m["content"]) for m in messages]
    query, inputs = query_and_input(texts, has_context=False)
    assert "What is the staging server called?" in query
    assert any("The staging server is called kestrel." in text for text in inputs)  # the whole document
    assert "Paragraph 150 of the handbook" not in query  # the document is not in the root prompt
    system = messages[0]["content"]
    if len(system) < 8_000:
        assert system in query  # the client's instructions, intact


def test_dspy_shape_through_the_server(tmp_path):
    with FakeLLMServer(responder=root_then_sub(FIND_KESTREL)) as backend:
        server = serve(backend, tmp_path)
        try:
            reply = server.client().chat.completions.create(model="rlm", messages=DSPY)
        finally:
            server.stop()
    assert reply.choices[0].message.content == "kestrel"
    prompt = first_root_prompt(backend)
    assert "What is the staging server called?" in prompt and "[[ ## completed ## ]]" in prompt
    assert "Paragraph 150 of the handbook" not in prompt


def test_one_short_message_is_the_question_and_the_input():
    query, inputs = query_and_input([("user", "Just this?")], has_context=False)
    assert (query, inputs) == ("Just this?", ["Just this?"])
    query, inputs = query_and_input([("system", "Be brief."), ("user", "q")], has_context=True)
    assert (query, inputs) == ("Be brief.\n\nq", [])


# -- 1. the Responses API ----------------------------------------------------------------------------
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


def test_responses_api_plain_items_instructions_schema_and_stream(served, backend):
    client = served.client()
    plain = client.responses.create(model="rlm", input="What is it about?", extra_body={"context": "a report"})
    items = client.responses.create(
        model="rlm", instructions="Answer in one line.",
        input=[{"role": "user", "content": "The staging server is called kestrel."},
               {"role": "user", "content": [{"type": "input_text", "text": "What is it called?"}]}])
    with client.responses.stream(model="rlm", input="q", extra_body={"context": "a report"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert plain.output_text == "the answer is 42" and plain.status == "completed"
    assert plain.usage.total_tokens > 0 and plain.usage.input_tokens > 0
    assert items.output_text == "the answer is 42" and items.instructions == "Answer in one line."
    roots = [r["messages"] for r in backend.requests if is_root(r["messages"])]
    assert any("Answer in one line." in m[-1]["content"] and "What is it called?" in m[-1]["content"] for m in roots)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == "the answer is 42" and final.usage.total_tokens > 0


def test_responses_api_json_schema(tmp_path):
    with FakeLLMServer(responder=lambda messages, model: 'FINAL({"city": "Lyon"})') as backend:
        server = serve(backend, tmp_path)
        try:
            reply = server.client().responses.create(
                model="rlm", input="Which city?", extra_body={"context": "Lyon."},
                text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}})
        finally:
            server.stop()
    assert json.loads(reply.output_text) == {"city": "Lyon"}


def test_responses_api_errors_in_its_shape(tmp_path):
    with FakeLLMServer(faults=["500"] * 200, fault_kinds=()) as backend:
        server = serve(backend, tmp_path)
        try:
            client = server.client()
            events = [e for e in client.responses.create(model="rlm", input="q", stream=True,
                                                         extra_body={"context": "x"})]
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="rlm", input="q", previous_response_id="resp_1")
        finally:
            server.stop()
    assert events[-1].type == "response.failed" and events[-1].response.error.message.startswith("the run")
    assert "previous_response_id" in str(refused.value)


# -- 5. shapes ---------------------------------------------------------------------------------------
def test_unknown_routes_and_models_answer_in_the_openai_shape(served):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    missing = httpx.get(served.url + "/v1/nothing", headers=headers, timeout=10)
    wrong_method = httpx.get(served.url + "/v1/chat/completions", headers=headers, timeout=10)
    model = served.client().models.retrieve("rlm")
    with pytest.raises(openai.NotFoundError) as unknown:
        served.client().models.retrieve("gpt-4")
    for response, status in ((missing, 404), (wrong_method, 405)):
        assert response.status_code == status and set(response.json()) == {"error"}, response.text
        assert "served: POST /v1/chat/completions" in response.json()["error"]["message"]
    assert model.id == "rlm" and "not served here" in str(unknown.value)


def test_legacy_completions_as_llama_index_openai_like_calls_them(served):
    """LlamaIndex's OpenAILike defaults to /v1/completions (is_chat_model=False)."""
    client = served.client()
    plain = client.completions.create(model="rlm", prompt="The report says revenue grew.\n\nWhat grew?")
    chunks = list(client.completions.create(model="rlm", prompt="q", stream=True, extra_body={"context": "text"}))
    assert plain.object == "text_completion" and plain.choices[0].text == "the answer is 42"
    assert plain.choices[0].finish_reason == "stop" and plain.usage.total_tokens > 0
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "the answer is 42"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_one_created_per_stream_and_stop_at_a_budget(tmp_path):
    turns = ["```repl\nprint(1)\n```"] * 2 + ["FINAL(best so far)"]  # two iterations, then the final ask
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.6) as backend:
        server = serve(backend, tmp_path)
        try:
            chunks = list(server.client().chat.completions.create(
                model="rlm", messages=[{"role": "user", "content": "q"}], stream=True,
                extra_body={"context": "x", "rlm": {"max_iterations": 2}}))
        finally:
            server.stop()
    assert len({chunk.created for chunk in chunks}) == 1 and len(chunks) > 3
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished[-1].choices[0].finish_reason == "stop"
    assert finished[-1].model_extra["rlm"]["stopped_reason"] == "max_iterations"


def test_cors_preflight_and_answers_for_an_allowed_origin(tmp_path):
    with FakeLLMServer(responder=root_then_sub(TURNS)) as backend:
        server = serve(backend, tmp_path, "--cors-origin", "http://localhost:3000")
        try:
            preflight = httpx.options(server.url + "/v1/chat/completions", timeout=10, headers={
                "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"})
            other = httpx.options(server.url + "/v1/chat/completions", timeout=10, headers={
                "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
            answer = httpx.post(server.url + "/v1/chat/completions", timeout=60, headers={
                "Origin": "http://localhost:3000", "Authorization": f"Bearer {TOKEN}"},
                json={"model": "rlm", "messages": [{"role": "user", "content": "q"}], "context": "x"})
            no_token = httpx.get(server.url + "/v1/models", timeout=10, headers={"Origin": "http://localhost:3000"})
        finally:
            server.stop()
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert no_token.status_code == 401 and no_token.headers["access-control-allow-origin"] == "http://localhost:3000"


# -- 4. parameters -----------------------------------------------------------------------------------
def test_a_forced_function_is_the_answers_schema_and_comes_back_as_its_call(tmp_path):
    tool = {"type": "function", "function": {"name": "final_result", "parameters": CITY}}
    with FakeLLMServer(responder=lambda messages, model: 'FINAL({"city": "Lyon"})') as backend:
        server = serve(backend, tmp_path)
        try:
            client = server.client()
            ask = {"model": "rlm", "messages": [{"role": "user", "content": "Which city?"}],
                   "extra_body": {"context": "Lyon."}, "tools": [tool]}
            named = client.chat.completions.create(
                **ask, tool_choice={"type": "function", "function": {"name": "final_result"}})
            required = client.chat.completions.create(**ask, tool_choice="required")
            streamed = [c for c in client.chat.completions.create(**ask, tool_choice="required", stream=True)
                        if c.choices]
            refused = {}
            for name, value in (("tool_choice", "auto"), ("n", 2), ("stop", ["\n"]), ("seed", 1), ("top_p", 0.5)):
                extra = {"tools": [tool], "tool_choice": value} if name == "tool_choice" else {name: value}
                with pytest.raises(openai.BadRequestError) as error:
                    client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                                   extra_body={"context": "x"}, **extra)
                refused[name] = str(error.value)
        finally:
            server.stop()
    for reply in (named, required):
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.function.name == "final_result" and json.loads(call.function.arguments) == {"city": "Lyon"}
    calls = [c.choices[0].delta.tool_calls for c in streamed if c.choices[0].delta.tool_calls]
    assert json.loads(calls[0][0].function.arguments) == {"city": "Lyon"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    for name, message in refused.items():
        assert f"{'tools' if name == 'tool_choice' else name}:" in message, message


def test_max_tokens_bounds_the_answer_not_the_runs_calls(tmp_path):
    long_answer = "FINAL(" + " ".join(f"word{i}" for i in range(200)) + ")"
    with FakeLLMServer(responder=lambda messages, model: long_answer) as backend:
        server = serve(backend, tmp_path)
        try:
            client = server.client()
            chat = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                                  max_tokens=10, extra_body={"context": "x"})
            newer = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                                   max_completion_tokens=10, extra_body={"context": "x"})
            whole = client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "q"}],
                                                   extra_body={"context": "x"})
            response = client.responses.create(model="rlm", input="q", max_output_tokens=16,
                                               extra_body={"context": "x"})
        finally:
            server.stop()
    for reply in (chat, newer):
        assert reply.choices[0].finish_reason == "length"
        assert reply.choices[0].message.content.startswith("word0 word1") and len(reply.choices[0].message.content) < 60
    assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.content.endswith("word199")
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert all(r.get("max_tokens") not in (10, 16) and r.get("max_completion_tokens") not in (10, 16)
               for r in backend.requests)  # the model calls were not cut


def test_a_forced_function_through_the_responses_api(tmp_path):
    tool = {"type": "function", "name": "final_result", "parameters": CITY, "strict": True}
    with FakeLLMServer(responder=lambda messages, model: 'FINAL({"city": "Lyon"})') as backend:
        server = serve(backend, tmp_path)
        try:
            client = server.client()
            ask = {"model": "rlm", "input": "Which city?", "extra_body": {"context": "Lyon."}, "tools": [tool],
                   "tool_choice": {"type": "function", "name": "final_result"}}
            reply = client.responses.create(**ask)
            events = list(client.responses.create(**ask, stream=True))
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="rlm", input="q", tools=[{"type": "web_search"}],
                                        extra_body={"context": "x"})
        finally:
            server.stop()
    call = reply.output[0]
    assert call.type == "function_call" and call.name == "final_result" and json.loads(call.arguments) == {"city": "Lyon"}
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done[0].arguments) == {"city": "Lyon"} and events[-1].type == "response.completed"
    assert "tools:" in str(refused.value)
