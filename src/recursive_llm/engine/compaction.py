"""Keeping the root conversation inside the root model's window.

When the conversation reaches `LoopPolicy.compact_at` of the window, the turns after the first
question are replaced by the root model's own summary of them, and kept whole in the REPL as
`history` (a list of {"role", "content"}), so nothing is lost to the code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import prompts
from .budget import prompt_token_bound
from ..config import CallPolicy, LoopPolicy
from ..errors import BudgetExceeded, ModelError
from ..models.base import Message, ModelClient
from ..caps import truncate_output
from .scheduler import CallSite, Scheduler

if TYPE_CHECKING:
    from ..environments.base import Environment


# The estimate (an offline GPT tokenizer, times the ratio the provider's count of the last root call
# gave) is taken this much higher: a turn's code and output tokenize worse than the prompt that set
# the ratio (SmolLM2 under llama.cpp: up to 2.6% more from one call to the next, docs/BENCHMARKS.md).
ESTIMATE_MARGIN = 1.05


def history_code(turns: list[Message]) -> str:
    """REPL code that appends `turns` to the list `history` (the text travels base64-encoded, so
    no quoting can break it)."""
    payload = base64.b64encode(json.dumps(turns, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return ("import base64 as _b64, json as _json\n_earlier = globals().get('history')\n"
            "history = (_earlier if isinstance(_earlier, list) else []) + "
            f"_json.loads(_b64.b64decode('{payload}').decode('utf-8'))\ndel _b64, _json, _earlier")


def message_tokens(messages: list[Message]) -> list[int]:
    """Each message's tokens as we count them offline (a GPT tokenizer), plus its framing."""
    from ..context.tokens import count_tokens

    return [count_tokens(str(m["content"])) + 4 for m in messages]


def clipped_to(head: list[Message], turns: list[Message], tokens: int) -> list[Message]:
    """`head + turns`, with the longest turns cut in the middle until the whole fits in `tokens`
    (one turn's output can outgrow what is left of a small window)."""
    room = tokens - sum(message_tokens(head))
    cap = max(len(str(m["content"])) for m in turns)
    while sum(message_tokens(turns)) > room and cap > 200:
        cap //= 2
        turns = [{**m, "content": truncate_output(str(m["content"]), cap)} for m in turns]
    return head + turns


class Compactor:
    """One run's compaction: knows the root window and how the provider counts tokens."""

    def __init__(self, root_client: ModelClient, scheduler: Scheduler, loop: LoopPolicy, calls: CallPolicy,
                 site: Callable[[str], CallSite], emit: Callable[..., None]) -> None:
        self.root_client = root_client
        self.scheduler = scheduler
        self.loop = loop
        self.calls = calls
        self.site = site
        self.emit = emit
        self._last_sent: tuple[int, int] | None = None  # (messages, prompt tokens the provider counted)

    def note_sent(self, messages: int, prompt_tokens: int) -> None:
        """What the provider counted for the last root call (calibrates our offline count)."""
        self._last_sent = (messages, prompt_tokens)

    def window(self) -> int | None:
        from ..models.windows import context_window_for

        return (self.loop.root_context_window or getattr(self.root_client, "context_window", None)
                or context_window_for(self.root_client.name))

    def tokenizer_ratio(self, counted: list[int]) -> float:
        """The provider's prompt tokens per token we count (an offline GPT tokenizer), from the last
        root call: other models' tokenizers and chat templates count more (SmolLM2: 12% to 24%),
        with ESTIMATE_MARGIN on top."""
        if self._last_sent is None or self._last_sent[1] <= 0:
            return ESTIMATE_MARGIN
        sent, reported = self._last_sent
        ours = sum(counted[:sent])
        return (max(1.0, reported / ours) if ours else 1.0) * ESTIMATE_MARGIN

    async def keep_within_window(self, env: Environment, messages: list[Message], *, iteration: int, query: str) -> None:
        """Compact `messages` in place when they near the window: a single turn too (its output
        alone can outgrow a small window). No turn yet, or an unknown window, and nothing happens;
        a failed summary is tried again next turn."""
        window = self.window()
        if self.loop.compact_at is None or window is None or len(messages) < 4:
            return
        limit = int(window * self.loop.compact_at) - (self.calls.max_output_tokens or 0)
        if prompt_token_bound(messages) <= limit:  # a bound on the tokens: below it, no need to count
            return
        counted = message_tokens(messages)
        ratio = self.tokenizer_ratio(counted)
        before = int(sum(counted) * ratio)
        if before <= limit:
            return
        turns = messages[2:]
        summary_tokens = min(self.calls.max_output_tokens or window // 8, window // 8)
        request = clipped_to(messages[:2], turns + [{"role": "user", "content": prompts.COMPACT_REQUEST}],
                             int((window - summary_tokens) / ratio))
        try:
            summary = (await self.scheduler.call(self.root_client, request, self.site("compact"),
                                                 max_output_tokens=summary_tokens)).text
        except (BudgetExceeded, ModelError) as exc:
            self.emit("compaction_failed", error=str(exc))
            return
        # Only now, so that a failed compaction (tried again next turn) does not store the turns twice.
        stored = await env.execute(history_code(turns), self.loop.cell_timeout_s)
        kept = "" if stored.error is None else prompts.HISTORY_LOST_NOTE
        messages[2:] = [{"role": "assistant", "content": summary},
                        {"role": "user", "content": prompts.COMPACTED_MESSAGE.format(
                            turns=len(turns), iteration=iteration - 1, query=query) + kept}]
        after = int(sum(message_tokens(messages)) * ratio)
        self.emit("compaction", iteration=iteration, turns=len(turns), window=window,
                  tokens_before=before, tokens_after=after, history_kept=stored.error is None)
