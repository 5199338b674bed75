"""Token and cost accounting shared by model clients, the scheduler and results."""

from __future__ import annotations

from dataclasses import dataclass, field


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
