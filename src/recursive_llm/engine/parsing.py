"""Parse a model reply into its reasoning, code blocks and a final answer.

Only the model's own reply is parsed here. Text printed by a program or stored in the input never
reaches this module, so a `FINAL(...)` inside the context cannot end a run.

The rules (README: "How a reply is read"):
- Reasoning is never parsed: `<think>`, `<thinking>` and `<reasoning>` blocks (an unclosed one runs
  to the end of the reply; a `</think>` with no opening tag closes reasoning that the chat
  template opened) are set aside, kept in the trajectory, and neither run nor taken as an answer.
  Providers' separate reasoning fields never reach this module at all.
- Code is in fenced blocks labelled `repl`, `python`, `python3`, `py` or `py3` (any case), fenced
  with three or more backticks or tildes; an unclosed last block counts.
- `FINAL(answer)` or `FINAL_VAR(name)` must start a line outside code blocks; markdown around it
  (`**FINAL(42)**`, `` `FINAL(42)` ``, `> FINAL(42)`, `- FINAL(42)`) is allowed. The first one in
  the reply counts; text after it is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LANGUAGES = r"(?:repl|python3?|py3?)"
_CODE_BLOCK = re.compile(
    rf"^[ \t]*(?P<fence>`{{3,}}|~{{3,}})[ \t]*{_LANGUAGES}\b[^\n`]*\n(?P<code>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.DOTALL | re.MULTILINE | re.IGNORECASE,
)
_ANY_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
                        re.DOTALL | re.MULTILINE)
_REASONING = re.compile(r"<(?P<tag>think|thinking|reasoning)\b[^>]*>(?P<text>.*?)(?:</(?P=tag)\s*>|\Z)",
                        re.DOTALL | re.IGNORECASE)
_ORPHAN_CLOSE = re.compile(r"</(?:think|thinking|reasoning)\s*>", re.IGNORECASE)
# Markdown a model may put before FINAL on its line: emphasis, inline code, a quote, a list bullet.
_DECORATION = r"[ \t]*(?:[*_`>#]+[ \t]*|[-+][ \t]+)*"
_FINAL_MARK = re.compile(rf"^{_DECORATION}(?P<kind>FINAL_VAR|FINAL)\(", re.MULTILINE)
_VARIABLE = re.compile(r"\s*[\"'`]?(?P<name>[A-Za-z_][A-Za-z0-9_]*)[\"'`]?\s*\)")


@dataclass(frozen=True)
class FinalAnswer:
    """`FINAL(text)` carries `text`; `FINAL_VAR(name)` carries `variable`."""

    text: str | None = None
    variable: str | None = None


@dataclass(frozen=True)
class ParsedReply:
    code_blocks: list[str]
    final: FinalAnswer | None
    reasoning: str | None = None  # the reasoning blocks' text, set aside
    visible: str = ""  # the reply without its reasoning: what goes back into the conversation


def split_reasoning(reply: str) -> tuple[str, str | None]:
    """`(the reply without reasoning, the reasoning text or None)`."""
    parts: list[str] = []
    orphan = _ORPHAN_CLOSE.search(reply)
    if orphan is not None and not _REASONING.search(reply[:orphan.start()]):
        parts.append(reply[:orphan.start()])  # the template opened <think>; the reply only closes it
        reply = reply[orphan.end():]
    parts += [match.group("text") for match in _REASONING.finditer(reply)]
    visible = _REASONING.sub("", reply)
    reasoning = "\n\n".join(part.strip() for part in parts if part.strip())
    return visible, reasoning or None


def find_code_blocks(reply: str) -> list[str]:
    """The code blocks of a reply, in order (an unclosed last block counts)."""
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


_FENCED_BODY = re.compile(r"^(`{3,}|~{3,})[\w+-]*[ \t]*\n(?P<inner>.*?)\n?[ \t]*\1$", re.DOTALL)


def _unquote(body: str) -> str:
    body = body.strip()
    fenced = _FENCED_BODY.match(body)  # FINAL(```json\n{...}\n```)
    if fenced:
        return fenced.group("inner").strip()
    for quote in ('"""', "'''", '"', "'", "`"):
        if len(body) >= 2 * len(quote) and body.startswith(quote) and body.endswith(quote):
            return body[len(quote):-len(quote)].strip()
    return body


def find_final(reply: str) -> FinalAnswer | None:
    """The first `FINAL_VAR(name)` or `FINAL(answer)` that starts a line outside code blocks."""
    prose = _strip_fences(reply)
    for match in _FINAL_MARK.finditer(prose):
        rest = prose[match.end():]
        if match.group("kind") == "FINAL_VAR":
            variable = _VARIABLE.match(rest)
            if variable:
                return FinalAnswer(variable=variable.group("name"))
            continue  # FINAL_VAR(<not a name>): not an answer
        return FinalAnswer(text=_unquote(_balanced_body(rest)))
    return None


def parse_reply(reply: str) -> ParsedReply:
    """Reasoning set aside first: nothing in it is code or an answer."""
    visible, reasoning = split_reasoning(reply)
    return ParsedReply(code_blocks=find_code_blocks(visible), final=find_final(visible), reasoning=reasoning,
                       visible=visible)
