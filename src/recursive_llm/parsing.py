"""Parse a model reply into code blocks and a final answer.

Only the model's own reply is parsed here. Text printed by a program or stored in the input never
reaches this module, so a `FINAL(...)` inside the context cannot end a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ```repl or ```python (any case), up to the closing fence on its own line.
_CODE_BLOCK = re.compile(
    r"^[ \t]*```[ \t]*(?:repl|python|py)[ \t]*\n(?P<code>.*?)(?:^[ \t]*```[ \t]*$|\Z)",
    re.DOTALL | re.MULTILINE | re.IGNORECASE,
)
_ANY_FENCE = re.compile(r"^[ \t]*```[^\n]*\n.*?(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_FINAL_VAR = re.compile(r"^[ \t]*FINAL_VAR\(\s*[\"']?(?P<name>[A-Za-z_][A-Za-z0-9_]*)[\"']?\s*\)", re.MULTILINE)
_FINAL = re.compile(r"^[ \t]*FINAL\((?P<body>.*)", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class FinalAnswer:
    """`FINAL(text)` carries `text`; `FINAL_VAR(name)` carries `variable`."""

    text: str | None = None
    variable: str | None = None


@dataclass(frozen=True)
class ParsedReply:
    code_blocks: list[str]
    final: FinalAnswer | None


def find_code_blocks(reply: str) -> list[str]:
    """The ```repl / ```python blocks of a reply, in order (an unclosed last block counts)."""
    return [m.group("code").rstrip() for m in _CODE_BLOCK.finditer(reply) if m.group("code").strip()]


def _strip_fences(reply: str) -> str:
    """The reply with every fenced block removed, so FINAL inside code is not read as an answer."""
    return _ANY_FENCE.sub("", reply)


def _balanced_body(text: str) -> str:
    """The text up to the parenthesis closing `FINAL(`; the whole rest if it never closes."""
    depth = 1
    quote: str | None = None
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'" and (index == 0 or not text[index - 1].isalnum()):
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return text[:index]
    # Unbalanced (or a stray quote confused us): fall back to the last ')' if there is one.
    last = text.rfind(")")
    return text[:last] if last >= 0 else text


def _unquote(body: str) -> str:
    body = body.strip()
    for quote in ('"""', "'''", '"', "'"):
        if len(body) >= 2 * len(quote) and body.startswith(quote) and body.endswith(quote):
            return body[len(quote):-len(quote)].strip()
    return body


def find_final(reply: str) -> FinalAnswer | None:
    """A `FINAL_VAR(name)` or `FINAL(answer)` that starts a line outside code blocks."""
    prose = _strip_fences(reply)
    match = _FINAL_VAR.search(prose)
    if match:
        return FinalAnswer(variable=match.group("name"))
    match = _FINAL.search(prose)
    if match:
        return FinalAnswer(text=_unquote(_balanced_body(match.group("body"))))
    return None


def parse_reply(reply: str) -> ParsedReply:
    return ParsedReply(code_blocks=find_code_blocks(reply), final=find_final(reply))


def truncate_output(text: str, limit: int) -> str:
    """Cut `text` to `limit` characters, keeping head and tail, with a visible note of what was cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return (f"{text[:head]}\n... [output truncated: {omitted:,} of {len(text):,} characters omitted; "
            f"print less, or slice/summarize in code] ...\n{text[-tail:] if tail else ''}")
