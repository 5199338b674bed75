"""The rows of docs/SERVING.md's client table whose packages cannot share the main environment:
DSPy and LlamaIndex's `OpenAILike` (llama-index-llms-openai-like pins openai<3). `.ci/run` gives
each a venv of its own that sees everything else and runs this file there; in the main run these
tests are skipped. Each client, in its default configuration unless the table says otherwise, asks
a real `rlm serve` process a question over a document placed where the client puts it; the scripted
root model finds the needle with code in `context` (it sits in the middle of the document, where the
root model's prompt never shows it), so a right answer means the whole document reached the run,
and the prompt is checked to hold the question and the client's instructions but not the document."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recursive_llm.testing import FakeLLMServer
from test_serve_client_table import capable_root
from test_serve_every_client import first_root_prompt, roots_started, serve
from test_server import TOKEN, Served

QUESTION = "What is the staging server called?"
PARAGRAPHS = [f"Paragraph {i} of the handbook." for i in range(300)]
DOCUMENT = "\n\n".join(PARAGRAPHS[:150] + ["The staging server is called kestrel."] + PARAGRAPHS[150:])


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def missing(module: str, step: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not installed(module),
                              reason=f"{module} is not installed here: .ci/run's {step} venv step runs this test")


@pytest.fixture
def backend():
    with FakeLLMServer(responder=capable_root) as server:
        yield server


@pytest.fixture
def server(backend, tmp_path):
    served = serve(backend, tmp_path)
    yield served
    served.stop()


def requests_served(server: Served) -> list[str]:
    """The method and path of every request the server answered, and "stream" for a streamed one
    (its access log; stops it)."""
    lines = [line.split() for line in server.stop().splitlines() if " run=" in line]
    return [" ".join(words[1:3] + words[6:]) for words in lines if words[2] != "/health"]


def assert_document_in_the_input_only(backend: FakeLLMServer, *in_prompt: str) -> None:
    """One run; its root prompt has the question and what else is named, and not the document's middle."""
    prompt = first_root_prompt(backend)
    assert roots_started(backend) == 1
    assert QUESTION in prompt and all(text in prompt for text in in_prompt), prompt
    assert "Paragraph 149 of the handbook" not in prompt and "called kestrel" not in prompt


@missing("dspy", "DSPy")
def test_dspy_predict_with_its_default_chat_adapter(server, backend, tmp_path, monkeypatch):
    """`dspy.LM("openai/rlm", api_base=...)` and `dspy.Predict`, all defaults (ChatAdapter): the
    document is an input field, in the user message with the question; the instructions are the
    system message; the answer comes back in the adapter's field markers and is parsed."""
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "dspy-cache"))
    import dspy

    lm = dspy.LM("openai/rlm", api_base=server.url + "/v1", api_key=TOKEN)
    with dspy.context(lm=lm):
        prediction = dspy.Predict("context, question -> answer")(context=DOCUMENT, question=QUESTION)
    assert prediction.answer == "kestrel"
    assert_document_in_the_input_only(backend, "[[ ## completed ## ]]", "`context`, `question`")
    assert requests_served(server) == ["POST /v1/chat/completions"]


@missing("llama_index.llms.openai_like", "LlamaIndex")
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
@pytest.mark.parametrize("chat", [False, True], ids=["completions-default", "is_chat_model"])
def test_llama_index_openai_like_query_engine(server, backend, chat, streaming):
    """`OpenAILike(model=..., api_base=..., api_key=...)`: by default a completion model
    (/v1/completions, the text-QA template as one prompt), and with `is_chat_model=True` (its system
    message and the template as the user message); the document goes through a `SummaryIndex`'s
    query engine (which needs no embedding model), plain and with `streaming=True`."""
    from llama_index.core import Document, SummaryIndex
    from llama_index.llms.openai_like import OpenAILike

    options = {"is_chat_model": True} if chat else {}
    llm = OpenAILike(model="rlm", api_base=server.url + "/v1", api_key=TOKEN, **options)
    engine = SummaryIndex.from_documents([Document(text=DOCUMENT)]).as_query_engine(llm=llm, streaming=streaming)
    answer = engine.query(QUESTION)
    text = "".join(answer.response_gen) if streaming else str(answer)
    assert text == "kestrel"
    instructions = "You are an expert Q&A system" if chat else "Given the context information and not prior"
    assert_document_in_the_input_only(backend, instructions)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    assert requests_served(server) == [f"POST {path}" + (" stream" if streaming else "")]
