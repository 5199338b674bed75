"""Token and cost accounting shared by model clients, the scheduler and results."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models.base import Completion

# What a provider reports is checked against what is possible before it counts (`checked_usage`).
# The floor of a text's tokens: no token of o200k_base or cl100k_base is longer than 128 bytes
# (measured over both vocabularies: 100,000 spaces are 782 tokens), so N bytes are at least
# ceil(N / 128) tokens whatever the text. That floor is loose (English is about 4 bytes a token),
# so a report under one token per SUSPICIOUS_BYTES_PER_TOKEN bytes, which honest providers give
# only for text that is mostly runs of whitespace or punctuation, is checked against the text's
# offline o200k_base count: no major provider's tokenizer needs fewer than half of the tokens
# o200k_base needs (it is among the most compact; Claude's, Llama 3's, Qwen's need as many or more),
# so a count below half of it is raised to half of it.
MAX_BYTES_PER_TOKEN = 128
SUSPICIOUS_BYTES_PER_TOKEN = 8
# At most one token per byte (byte-level BPE, byte fallback) plus a chat template's tokens per
# message (budget.prompt_token_bound) plus what a provider adds on its own (a system prompt of its
# own, tool scaffolding): this allowance.
PROVIDER_PROMPT_ALLOWANCE = 4096
MAX_REPORTED_TOKENS = 10**9  # a call's count above this is no count (and would overflow the store)


@dataclass
class TokenUsage:
    """Usage of one model call (or a sum of calls)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    cached_calls: int = 0  # answered from the store (cache or resume): no tokens paid, not in `calls`
    # Of `prompt_tokens`: read from the provider's prompt cache, and written to it (Anthropic).
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    hedged: int = 0  # calls sent a second time because they straggled (`hedge_after`); not in `calls`

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "TokenUsage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls
        self.cost_usd += other.cost_usd
        self.cached_calls += other.cached_calls
        self.cached_prompt_tokens += other.cached_prompt_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.hedged += other.hedged

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cost_usd": round(self.cost_usd, 8),
            "cached_calls": self.cached_calls,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "hedged": self.hedged,
        }


@dataclass
class ToolUsage:
    """Calls of one user tool (they cost no tokens)."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"calls": self.calls, "errors": self.errors, "seconds": round(self.seconds, 4)}


@dataclass
class UsageSummary:
    """Usage of a whole run, broken down per model and per depth; user tools' calls per tool."""

    by_model: dict[str, TokenUsage] = field(default_factory=dict)
    by_depth: dict[int, TokenUsage] = field(default_factory=dict)
    tools: dict[str, ToolUsage] = field(default_factory=dict)

    def record_tool(self, name: str, seconds: float, *, failed: bool) -> None:
        usage = self.tools.setdefault(name, ToolUsage())
        usage.calls += 1
        usage.errors += int(failed)
        usage.seconds += seconds

    def record(self, model: str, depth: int, usage: TokenUsage) -> None:
        self.by_model.setdefault(model, TokenUsage()).add(usage)
        self.by_depth.setdefault(depth, TokenUsage()).add(usage)

    @property
    def total(self) -> TokenUsage:
        total = TokenUsage()
        for usage in self.by_model.values():
            total.add(usage)
        return total

    def to_dict(self) -> dict:
        return {
            "total": self.total.to_dict(),
            "by_model": {name: u.to_dict() for name, u in sorted(self.by_model.items())},
            "by_depth": {str(d): u.to_dict() for d, u in sorted(self.by_depth.items())},
            "tools": {name: u.to_dict() for name, u in sorted(self.tools.items())},
        }


def reported_count(value: Any) -> int:
    """A provider's token count as a whole number of at least 0: a non-negative int (bools, strings,
    NaN, infinities and other junk are 0; finite floats are truncated), at most MAX_REPORTED_TOKENS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(max(int(value), 0), MAX_REPORTED_TOKENS)


def _size(texts: list[str]) -> int:
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)


def _floor(reported: Any, texts: list[str]) -> int:
    """The fewest tokens `texts` can be: ceil(bytes / 128), or half their offline o200k_base count
    when `reported` is suspiciously low (see SUSPICIOUS_BYTES_PER_TOKEN). Runs in a thread."""
    size = _size(texts)
    floor = -(-size // MAX_BYTES_PER_TOKEN)
    if reported_count(reported) * SUSPICIOUS_BYTES_PER_TOKEN < size:
        from .context.tokens import TokenizerUnavailable, count_tokens

        try:
            floor = max(floor, sum(count_tokens(text) for text in texts) // 2)
        except TokenizerUnavailable:
            pass
    return floor


def _is_plausible(reported: Any, texts: list[str]) -> bool:
    """A whole count at least one token per SUSPICIOUS_BYTES_PER_TOKEN bytes (no count needed)."""
    return (type(reported) is int and 0 <= reported <= MAX_REPORTED_TOKENS
            and reported * SUSPICIOUS_BYTES_PER_TOKEN >= _size(texts))


async def checked_usage(completion: "Completion", messages: list[dict],
                        max_output_tokens: int | None) -> "Completion":
    """`completion` with its usage clamped to what is possible for the prompt that was sent and the
    reply that came back (issue 25: negative counts let a 50,000-token budget make 42 calls instead
    of 5, and 10M cached tokens of a 50K prompt made a cost of -93.89 USD). Every provider's
    completion passes through here (`Scheduler._attempt`) before it counts against a budget or is
    recorded:

    - prompt: at least the floor of the sent text (`_floor`), at most one token per byte plus the
      template's tokens per message plus PROVIDER_PROMPT_ALLOWANCE;
    - completion: at least the floor of the text and reasoning that came back, at most the output
      cap the call was sent with (the most a provider may produce);
    - cached and cache-written tokens: never negative, together never more than the prompt.

    Counting tokens offline (only for a suspiciously low report) runs in a thread, off the loop."""
    from .engine.budget import prompt_token_bound

    sent = [str(m.get("content", "")) for m in messages]
    received = [text for text in (completion.text, completion.reasoning) if text]
    prompt_floor = 0 if _is_plausible(completion.prompt_tokens, sent) else None
    output_floor = 0 if _is_plausible(completion.completion_tokens, received) else None
    if prompt_floor is None or output_floor is None:
        prompt_floor, output_floor = await asyncio.to_thread(
            lambda: (_floor(completion.prompt_tokens, sent) if prompt_floor is None else 0,
                     _floor(completion.completion_tokens, received) if output_floor is None else 0))
    prompt = _clamp(completion.prompt_tokens, prompt_floor, prompt_token_bound(messages) + PROVIDER_PROMPT_ALLOWANCE)
    output = _clamp(completion.completion_tokens, output_floor, max_output_tokens or MAX_REPORTED_TOKENS)
    cached = min(reported_count(completion.cached_prompt_tokens), prompt)
    written = min(reported_count(completion.cache_write_tokens), prompt - cached)
    return replace(completion, prompt_tokens=prompt, completion_tokens=output, cached_prompt_tokens=cached,
                   cache_write_tokens=written)


def _clamp(value: Any, floor: int, ceiling: int) -> int:
    return min(max(reported_count(value), floor), max(ceiling, floor))
