"""The map-reduce program of the weak-model fallback, as it runs in the REPL (`_map_reduce`).

Chunk the input (a table becomes rows of text), ask the sub-model about each chunk with a prompt
that lets it say NOT FOUND, and combine what the chunks found. `None` means no chunk answered:
the host ends the run with `stopped_reason="not_found"` (see recursive_llm.engine.fallback).

`strict=True` is for a sub-model known to be weak (the embedded SmolLM2-135M): only chunks that
share a word with the question are asked (a stated fact shares words with a question about it),
and an answer must be grounded: one of its words that is not in the question must be in the chunk
(a 135M model otherwise invents names, numbers and biographies). Stdlib only: the worker imports it.
"""

from __future__ import annotations

import re

from ...context.document import split_at_lines

TYPE_CHECKING = False  # not typing's: the worker imports this module
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Ask = Callable[[list[str]], list[str]]

NOT_FOUND = "NOT FOUND"
MAX_STRICT_CHUNKS = 64  # strict: the chunks asked at most (the ones sharing most words with the question)
_TABLE_ROWS = 20_000  # rows of each table rendered as text
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset("""a about after all also an and any are as at be been but by can could did do does doing
done for from had has have he her his how i if in into is it its me my no nor not of on or our she so some
than that the their them then there these they this those to too us was we were what when where which who
whom whose why will with would you your tell say says said give list name please text yes true false""".split())
# What a model writes when the text does not answer (besides NOT FOUND itself).
_NOT_FOUND_PHRASES = ("not found", "nothing relevant", "not mentioned", "does not mention", "doesn't mention",
                      "does not say", "doesn't say", "does not contain", "doesn't contain", "does not provide",
                      "doesn't provide", "not provided", "not specified", "not stated", "no information",
                      "not available", "cannot be determined", "can't be determined", "is not given")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """The stems of a text's words that carry meaning (no stop words), lower case."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and (len(w) > 2 or w.isdigit())}


def says_not_found(reply: str) -> bool:
    """A reply that says the text does not answer (or an empty one)."""
    lowered = " ".join(reply.lower().split())
    return not lowered or any(phrase in lowered for phrase in _NOT_FOUND_PHRASES)


def grounded(answer: str, chunk: str, query: str) -> bool:
    """Some word of the answer that is not in the question is in the chunk (or the answer has none:
    "yes", a word of the question itself)."""
    new = content_words(answer) - content_words(query)
    return not new or bool(new & content_words(chunk))


def as_rows_text(table: Any) -> str:
    """A table input as lines of text, one row each: `[name] column: value; column: value`."""
    parts = []
    for name, info in table.tables.items():
        rows = table.sql(f'SELECT * FROM "{name}" LIMIT {_TABLE_ROWS}', max_rows=_TABLE_ROWS)
        shown = f"the first {len(rows):,} of {info['rows']:,}" if info["rows"] > len(rows) else f"{len(rows):,}"
        lines = [f"Table {name} ({shown} rows)"]
        lines += [f"[{name}] " + "; ".join(f"{col}: {value}" for col, value in zip(rows.columns, row)) for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def part_prompt(query: str, chunk: str, number: int, total: int) -> str:
    where = f"part {number} of {total} of a longer text" if total > 1 else "a text"
    return (f"Here is {where}:\n\n{chunk}\n\nQuestion: {query}\n"
            f"Answer in a few words, using only this text. If this text does not answer the question, "
            f"reply exactly: {NOT_FOUND}")


def chunks_to_ask(text: str, query: str, chunk_chars: int, strict: bool) -> list[str]:
    """The chunks to ask about: every chunk; strict, those sharing a word with the question, most first."""
    chunks = split_at_lines(text, chunk_chars) or [""]
    if not strict:
        return chunks
    wanted = content_words(query)
    scored = [(len(wanted & content_words(chunk)), index) for index, chunk in enumerate(chunks)]
    best = sorted((item for item in scored if item[0] > 0), key=lambda item: -item[0])[:MAX_STRICT_CHUNKS]
    print(f"map-reduce fallback: {len(best)} of {len(chunks)} chunk(s) share a word with the question"
          + (f" (asking the {MAX_STRICT_CHUNKS} that share most)" if len(best) == MAX_STRICT_CHUNKS else ""))
    return [chunks[index] for _, index in sorted(best, key=lambda item: item[1])]


def found_in(notes: list[str], chunks: list[str], query: str, strict: bool) -> list[str]:
    """The replies that answer: not an error, not NOT FOUND, and (strict) grounded in their chunk."""
    found = []
    for note, chunk in zip(notes, chunks):
        if note.startswith("Error:") or says_not_found(note):
            continue
        if strict and not grounded(note, chunk, query):
            print(f"map-reduce fallback: set aside an answer not found in its chunk: {note.strip()[:200]!r}")
            continue
        found.append(note.strip())
    return found


def run(text: str, query: str, chunk_chars: int, ask: Ask, strict: bool = False) -> str | None:
    """The whole program; `ask` is the REPL's llm_query_batched. None: nothing answers the question."""
    chunks = chunks_to_ask(text, query, chunk_chars, strict)
    print(f"map-reduce fallback: {len(text):,} characters, asking about {len(chunks)} chunk(s)")
    if not chunks or not text.strip():
        print(f"map-reduce fallback: {NOT_FOUND}: no part of the input shares a word with the question; a weak "
              f"model is asked only about parts that do")
        return None
    notes = ask([part_prompt(query, chunk, i + 1, len(chunks)) for i, chunk in enumerate(chunks)])
    failed = [n for n in notes if n.startswith("Error:")]
    found = found_in(notes, chunks, query, strict)
    print(f"map-reduce fallback: {len(found)} chunk(s) answered, {len(failed)} failed")
    if failed and not found:
        raise RuntimeError(f"{len(failed)} of {len(notes)} chunk(s) could not be asked; first error: {failed[0]}")
    if not found:
        print(f"map-reduce fallback: {NOT_FOUND}: no part of the input answers the question")
        return None
    if len({" ".join(f.lower().split()) for f in found}) == 1:
        return found[0]
    return combine(found, query, chunk_chars, ask)


def combine(found: list[str], query: str, chunk_chars: int, ask: Ask) -> str | None:
    """One answer from the chunks' answers (condensed until they fit one prompt)."""
    combined = "\n\n".join(f"[notes {i + 1}] {n}" for i, n in enumerate(found))
    while len(combined) > chunk_chars and len(found) > 1:
        groups = split_at_lines(combined, chunk_chars) or [""]
        found = ask([f"Condense these notes, keeping every fact relevant to: {query}\n\n{g}" for g in groups])
        combined = "\n\n".join(found)
    answer = ask([f"Notes taken from the parts of a longer text:\n\n{combined}\n\nQuestion: {query}\n"
                  f"Using only these notes, answer in a few words. If they do not answer it, reply exactly: "
                  f"{NOT_FOUND}"])[0]
    if answer.startswith("Error:"):
        raise RuntimeError(f"combining the chunks' answers failed: {answer}")
    return None if says_not_found(answer) else answer.strip()
