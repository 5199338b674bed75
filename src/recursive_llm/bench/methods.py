"""The methods a benchmark compares, all on the same model and the same tasks.

- `rlm`: a Recursive Language Model (code + sub-calls).
- `rlm_no_subcalls`: the same REPL, but `llm_query` and `rlm_query` disabled (the paper's ablation).
- `truncated`: the plain model with the input cut to its window (the usual baseline).
- `rag`: BM25 retrieval (the same FTS5 index as `search()`) of the top passages, then one call.
- `summary`: an iterative summary agent: read the input window by window (cut at line breaks),
  keep running notes, answer from the notes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..models.base import ModelClient
from .tasks import Task

METHODS = ("rlm", "rlm_no_subcalls", "truncated", "rag", "summary")
RAG_PASSAGES = 10


@dataclass
class Outcome:
    answer: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    run_id: str | None = None


class _Meter:
    """A plain model used by the baselines, counting usage as the RLM does."""

    def __init__(self, client: ModelClient, max_output_tokens: int | None) -> None:
        self.client, self.max_output_tokens = client, max_output_tokens
        self.outcome = Outcome(None)

    async def ask(self, prompt: str) -> str:
        from ..models.pricing import cost_usd

        completion = await self.client.complete([{"role": "user", "content": prompt}],
                                                max_tokens=self.max_output_tokens, temperature=0)
        self.outcome.prompt_tokens += completion.prompt_tokens
        self.outcome.completion_tokens += completion.completion_tokens
        self.outcome.calls += 1
        self.outcome.cost_usd += cost_usd(self.client.name, completion.prompt_tokens, completion.completion_tokens)
        return completion.text


async def run_method(method: str, task: Task, *, model: str, base_url: str | None, window_tokens: int,
                     max_output_tokens: int | None = 256, rlm_options: dict[str, Any] | None = None) -> Outcome:
    from ..errors import RLMError
    from ..models.resolver import resolve_model

    started = time.perf_counter()
    try:
        if method in ("rlm", "rlm_no_subcalls"):
            from ..cli.options import make_rlm

            rlm = make_rlm({"model": model, "base_url": base_url, "sub_calls": method == "rlm", "max_iterations": 6,
                            "max_output_tokens": max_output_tokens, "temperature": 0, "cache": False},
                           **(rlm_options or {}))
            result = await rlm.acompletion(task.query, task.context)
            _label(rlm, result.run_id, task)
            total = result.usage.total
            outcome = Outcome(result.answer, total.prompt_tokens, total.completion_tokens, total.calls,
                              result.cost_usd, error=result.error, run_id=result.run_id)
        else:
            meter = _Meter(resolve_model(model, base_url=base_url), max_output_tokens)
            try:
                answer = await _BASELINES[method](meter, task, window_tokens * 4)
            finally:
                await meter.client.aclose()
            outcome = meter.outcome
            outcome.answer = answer
    except RLMError as error:
        outcome = Outcome(None, error=str(error))
    outcome.seconds = time.perf_counter() - started
    return outcome


def _label(rlm: Any, run_id: str | None, task: Task) -> None:
    """Record the task with the run, so that `rlm export` can score it (the family regenerates it)."""
    store = rlm._open_store()
    if store is not None and run_id:
        store.label_task(run_id, {"family": task.family, "size_tokens": task.size_tokens, "seed": task.seed})


def _question(task: Task, text: str) -> str:
    return f"{text}\n\nQuestion: {task.query}"


async def _truncated(meter: _Meter, task: Task, window_chars: int) -> str:
    budget = window_chars - len(task.query) - 100
    return await meter.ask(_question(task, task.context[:budget]))


async def _rag(meter: _Meter, task: Task, window_chars: int) -> str:
    import tempfile
    from pathlib import Path

    from ..context.index import SearchIndex

    with tempfile.TemporaryDirectory(prefix="rlm-bench-rag-") as scratch:
        index = SearchIndex.for_inputs([task.context], Path(scratch))
        hits = index.search(task.query, RAG_PASSAGES)
    passages, used = [], 0
    for hit in hits:
        if used + len(hit["text"]) > window_chars - len(task.query) - 200:
            break
        passages.append(hit["text"])
        used += len(hit["text"])
    return await meter.ask(_question(task, "\n---\n".join(passages)))


async def _summary(meter: _Meter, task: Task, window_chars: int) -> str:
    notes = "Notes: nothing yet."
    from ..context.document import split_at_lines

    for part in split_at_lines(task.context, max(window_chars - 2_000, 1_000)):  # whole lines, like a careful reader
        notes = await meter.ask(f"{notes}\n\nNew part of the input:\n{part}\n\n"
                                f"Update the notes with everything relevant to: {task.query}")
    return await meter.ask(_question(task, notes))


_BASELINES = {"truncated": _truncated, "rag": _rag, "summary": _summary}
