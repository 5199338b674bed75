"""Where `rlm serve` finds a request's question, instructions and input in its messages.

Chat clients put the input in different places: `llm` joins piped text and the question with a
space in one user message, DSPy and LlamaIndex wrap a document and the question in a template
(instructions after the question), LangChain's "stuff" chains put the document in the system
message. No split of a message into "input" and "question" holds for all of them, so none is made:

1. a system or developer message of at most `INSTRUCTION_CHARS` is the client's **instructions**:
   the root model gets it whole, before the request; a longer one is a document: it goes into the
   input whole, and the root model is told so (with a `context` field every one is instructions);
2. without a `context` field, the **input** is every user, assistant and tool message before the
   last user message (and any long system message), in order; when there is none, the last user
   message itself;
3. the **request** is the last user message. The root model sees it whole when it has at most
   `REQUEST_CHARS`; a longer one is also put into the input whole, and the root model sees its
   beginning and its end (where clients put the question) with that said.

Nothing is dropped or cut out of the input: a needle in the last paragraph of a piped file stays in
the input. Text is always text, never a path.
"""

from __future__ import annotations

INSTRUCTION_CHARS = 8_000  # a longer system message is a document, not instructions
REQUEST_CHARS = 4_000  # a longer last user message is input too; the root model sees its two ends
HEAD_CHARS, TAIL_CHARS = 1_000, 2_000  # what it sees of a long one


class NoQuestion(ValueError):
    """The messages hold no (non-empty) user message."""


def query_and_input(texts: list[tuple[str, str]], has_context: bool) -> tuple[str, list[str]]:
    """The query for the root model and the input texts (empty when the request has a `context`
    field) from the messages as (role, text) pairs, by the rules in this module's docstring."""
    users = [i for i, (role, _) in enumerate(texts) if role == "user"]
    if not users or not texts[users[-1]][1].strip():
        raise NoQuestion("the last user message is the question, and there is none (or it is empty)")
    last = users[-1]
    instructions, documents = _instructions_and_documents(texts, INSTRUCTION_CHARS if not has_context else None)
    earlier = [text for i, (role, text) in enumerate(texts) if i < last and role in ("user", "assistant", "tool")
               and text.strip()]
    request = texts[last][1]
    inputs = [] if has_context else documents + earlier
    long_request = len(request) > REQUEST_CHARS
    if not has_context and (long_request or not inputs):
        inputs.append(request)
    shown = _excerpt(request, "the last item of the input" if len(inputs) > 1 else "the input") \
        if long_request and inputs else request
    notes = []
    if documents:
        notes.append(f"(The client's system message{'s' if len(documents) > 1 else ''} of "
                     f"{', '.join(f'{len(d):,}' for d in documents)} characters {'are' if len(documents) > 1 else 'is'}"
                     f" part of the input, not shown here.)")
    parts = [*instructions, *notes, shown]
    return "\n\n".join(part for part in parts if part.strip()), inputs


def _instructions_and_documents(texts: list[tuple[str, str]], limit: int | None) -> tuple[list[str], list[str]]:
    """The system/developer messages that are instructions, and those longer than `limit` (None: every
    one is instructions, as when the request's `context` field holds the input)."""
    system = [text for role, text in texts if role in ("system", "developer") and text.strip()]
    return ([t for t in system if limit is None or len(t) <= limit],
            [t for t in system if limit is not None and len(t) > limit])


def _excerpt(request: str, where: str) -> str:
    """The two ends of a long request, saying that the whole of it is in the input."""
    return (f"The request is the user's message of {len(request):,} characters; it is {where} (read it "
            f"there whole). It begins:\n{request[:HEAD_CHARS]}\n[...]\nand ends:\n{request[-TAIL_CHARS:]}")
