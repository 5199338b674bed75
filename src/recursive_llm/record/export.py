"""Training data from stored runs (`rlm export`): every model call of a run as one tree, root turns
as chat examples, and a reward where the run's task has a known answer.

Formats:
- "calls": one record per model call (root turns, sub-calls, child runs' calls; `token_ids` and
  `logprobs` when the provider returned them), each with `id`
  and `parent_id`: a root turn's parent is the run's previous root turn (the turn whose code
  produced what this turn reads); a sub-call's parent is the root turn whose code made it; a
  child run's first root turn's parent is the parent run's turn that started the child; the first
  root turn of a top-level run has none.
- "sft": each successful root turn as `{"messages": [...]}` (its prompt and its reply), the
  conversational shape TRL's `SFTTrainer` reads.
- "chat": one conversation per run (its last root call and reply), with the run's outcome.

Rewards: `--scorer module:function` (the user's own code, named on their command line; called as
`function(answer, run_record) -> float`), else the `rlm bench` task family recorded with the run
(its answer is regenerated from family, size and seed). Nothing named inside the store is ever
imported: a store only selects among the bench families by name.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from ..engine.call_ids import ROOT_TURNS, record_id

FORMATS = ("chat", "sft", "calls")
Scorer = Callable[[Any, dict[str, Any]], float]


def load_scorer(spec: str) -> Scorer:
    """`module:function` -> the function (imported from the current directory or sys.path)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--scorer {spec!r}: give it as module:function, e.g. my_scores:exact_match")
    if os.getcwd() not in sys.path:  # the `rlm` script's sys.path lacks the current directory
        sys.path.insert(0, os.getcwd())
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--scorer {spec!r} cannot be loaded ({type(error).__name__}: {error}); "
                         f"check the module is importable from here and defines {name}") from None
    if not callable(function):
        raise ValueError(f"--scorer {spec!r} is not a function")
    return function


def bench_scorer(task: dict[str, Any]) -> Callable[[str | None], float] | None:
    from ..bench.families import FAMILIES

    """The scorer of a bench task `{"family", "size_tokens", "seed"}` (the family rebuilds the task
    and its known answer), or None for an unknown family."""
    family = FAMILIES.get(str(task.get("family")))
    if family is None:
        return None
    return family(int(task["size_tokens"]), int(task["seed"])).score


def reward(tree: dict[str, Any], scorer: Scorer | None) -> float | None:
    """The top-level run's reward, or None when neither a scorer nor a known task gives one."""
    top = next(run for run in tree["runs"] if run["parent_run_id"] is None)
    if scorer is not None:
        try:
            value = scorer(top["answer"], dict(top))
        except Exception as error:  # the user's code: say whose failure it is
            raise ValueError(f"the scorer failed on run {top['run_id']}: {type(error).__name__}: {error}") from None
    elif top.get("task"):
        score = bench_scorer(top["task"])
        if score is None:
            return None
        value = score(top["answer"])
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the scorer returned {value!r} for run {top['run_id']}; it must return a finite number")
    return float(value)


def _ids(calls: list[dict[str, Any]]) -> list[str]:
    """A unique id per call row: its call id, with the attempt when retries share it (call_ids.py)."""
    counts: dict[Any, int] = {}
    for call in calls:
        counts[call["call_id"]] = counts.get(call["call_id"], 0) + 1
    return [record_id(c["call_id"], c["run_id"], c["id"], c["attempt"], counts[c["call_id"]] > 1) for c in calls]


def _turns(tree: dict[str, Any], ids: dict[int, str]) -> dict[str, list[tuple[dict, str]]]:
    """Per run, its root turns in order (the last row of each retried call: its outcome)."""
    last_rows: dict[Any, dict] = {}
    for call in tree["calls"]:
        if call["purpose"] in ROOT_TURNS:
            last_rows[call["call_id"] or call["id"]] = call
    turns: dict[str, list[tuple[dict, str]]] = {}
    for call in sorted(last_rows.values(), key=lambda c: c["id"]):
        turns.setdefault(call["run_id"], []).append((call, ids[call["id"]]))
    return turns


def _turn_before(turns: list[tuple[dict, str]], row_id: int, iteration: int | None = None) -> str | None:
    """The run's root turn at `iteration` if given and found, else the last turn before row `row_id`."""
    if iteration is not None:
        for call, call_id in turns:
            if call["iteration"] == iteration and call["purpose"] == "root":
                return call_id
    earlier = [call_id for call, call_id in turns if call["id"] < row_id]
    return earlier[-1] if earlier else None


def _parents(tree: dict[str, Any], ids: dict[int, str]) -> dict[int, str | None]:
    runs = {run["run_id"]: run for run in tree["runs"]}
    turns = _turns(tree, ids)
    parents: dict[int, str | None] = {}
    for call in tree["calls"]:
        own = turns.get(call["run_id"], [])
        if call["purpose"] == "sub":
            parents[call["id"]] = _turn_before(own, call["id"], call["iteration"])
            continue
        parent = _turn_before(own, call["id"])
        run = runs.get(call["run_id"])
        if parent is None and run is not None and run["parent_run_id"] is not None:  # a child's first turn
            parent = _turn_before(turns.get(run["parent_run_id"], []), call["id"], run.get("parent_iteration"))
        parents[call["id"]] = parent
    return parents


def call_records(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every call row of one top-level run (and its children) once, as one tree by `parent_id`."""
    calls = tree["calls"]
    ids = dict(zip((c["id"] for c in calls), _ids(calls)))
    parents = _parents(tree, ids)
    request_ids = {ids[c["id"]]: c["call_id"] for c in calls}  # what the request headers carried
    records = []
    for call in calls:
        parent = parents[call["id"]]
        record = {"id": ids[call["id"]], "parent_id": parent, "request_id": call["call_id"],
                  "parent_request_id": request_ids.get(parent) if parent else None, "run_id": call["run_id"],
                  "root_id": tree["root_id"], "depth": call["depth"], "purpose": call["purpose"],
                  "model": call["model"], "status": call["status"], "iteration": call["iteration"],
                  "cell": call["cell"], "messages": call["messages"], "completion": call["response"],
                  "usage": {"prompt_tokens": call["prompt_tokens"], "completion_tokens": call["completion_tokens"],
                            "cost_usd": call["cost_usd"]},
                  "error": call["error"], "finish_reason": call["finish_reason"], "cached": call["cached"],
                  **(call.get("reply_tokens") or {})}  # token_ids, logprobs: when the provider returned them
        records.append(record)
    return records


def sft_examples(tree: dict[str, Any], *, all_depths: bool = True) -> list[dict[str, Any]]:
    """Each successful root turn as `{"messages": [...prompt, reply]}`."""
    depth_of = {run["run_id"]: run["depth"] for run in tree["runs"]}
    examples = []
    for call in tree["calls"]:
        if call["purpose"] not in ROOT_TURNS or call["status"] != "ok" or not call["messages"]:
            continue
        if not all_depths and depth_of.get(call["run_id"]):
            continue
        examples.append({"messages": [*call["messages"], {"role": "assistant", "content": call["response"] or ""}]})
    return examples


def chat_examples(tree: dict[str, Any], *, all_depths: bool = True) -> list[dict[str, Any]]:
    """One chat conversation per run: the last root call's messages plus its reply (the whole
    conversation the model had, with code outputs as user turns), labelled with the outcome."""
    examples = []
    for run in tree["runs"]:
        if not all_depths and run["parent_run_id"] is not None:
            continue
        root_calls = [c for c in tree["calls"] if c["run_id"] == run["run_id"] and c["status"] == "ok"
                      and c["purpose"] in ROOT_TURNS and c.get("messages")]
        if not root_calls:
            continue
        last = root_calls[-1]
        messages = [*last["messages"], {"role": "assistant", "content": last["response"] or ""}]
        metadata = {"run_id": run["run_id"], "root_id": tree["root_id"], "depth": run["depth"],
                    "model": run["model"], "status": run["status"], "answer": run["answer"],
                    "iterations": run["iterations"]}
        examples.append({"messages": messages, "metadata": metadata})
    return examples


def export_records(tree: dict[str, Any], fmt: str, *, scorer: Scorer | None = None,
                   all_depths: bool = True) -> list[dict[str, Any]]:
    """One top-level run's records in `fmt` ("jsonl" is the old name of "chat"), each with the
    run's `reward` when one is known."""
    if fmt == "calls":
        records = call_records(tree)
    else:
        records = (sft_examples if fmt == "sft" else chat_examples)(tree, all_depths=all_depths)
    score = reward(tree, scorer)
    return records if score is None else [{**record, "reward": score} for record in records]
