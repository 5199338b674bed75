"""`rlm export` (issue 30): every model call of a run as one tree, root turns as SFT examples, and
rewards from the bench families or the user's scorer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recursive_llm import RLM
from recursive_llm.record.export import call_records, export_records, sft_examples
from recursive_llm.record.store import Store
from recursive_llm.testing import ScriptedModel

# Each run's first turn, by its query: the root starts a child, the child a grandchild, the
# grandchild asks a plain sub-call at depth 3; the root also asks two plain sub-calls.
FIRST_TURNS = {
    "top question": "print(llm_query_batched(['a', 'b']))\nprint(rlm_query('middle task'))",
    "middle task": "print(rlm_query('bottom task'))",
    "bottom task": "print(llm_query('leaf question'))",
}


def root_reply(messages: list[dict]) -> str:
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    query = next(q for q in FIRST_TURNS if q in first_user)
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return f"```repl\n{FIRST_TURNS[query]}\n```"
    if turns == 1 and query == "top question":
        return "```repl\nprint('one more turn')\n```"
    return f"FINAL(answer to {query})"


def depth_two_run(store: Store, query: str = "top question") -> str:
    rlm = RLM(model=ScriptedModel(default=root_reply), sub_model=ScriptedModel(default="leaf", name="sub"),
              max_depth=3, store=store, cell_timeout_s=30)
    result = rlm.completion(query, "some text")
    assert result.answer == f"answer to {query}", result.error
    return result.run_id


def test_calls_export_of_a_depth_two_run_is_one_tree_over_every_call(tmp_path):
    store = Store(tmp_path / "rlm.db")
    run_ids = [depth_two_run(store), depth_two_run(store)]
    with store._locked() as db:
        rows = {root: db.execute("SELECT count(*) FROM calls WHERE root_id = ?", (root,)).fetchone()[0]
                for root in run_ids}
    for run_id in run_ids:
        tree = store.run_tree(run_id)
        records = call_records(tree)
        ids = [r["id"] for r in records]
        assert len(records) == rows[run_id] and len(set(ids)) == len(ids)  # every call row exactly once
        assert {r["depth"] for r in records} == {0, 1, 2, 3} and len({r["run_id"] for r in records}) == 3
        assert all(r["parent_id"] in ids for r in records if r["parent_id"] is not None)
        assert [r["purpose"] for r in records if r["parent_id"] is None] == ["root"]  # one root per top-level run
        assert [r["run_id"] for r in records if r["parent_id"] is None] == [run_id]
        by_id = {r["id"]: r for r in records}
        for record in records:  # every record reaches the run's first turn: one tree, no cycles
            seen, node = set(), record
            while node["parent_id"] is not None:
                assert node["id"] not in seen
                seen.add(node["id"])
                node = by_id[node["parent_id"]]
            assert node["run_id"] == run_id
        _check_parents(tree, records)


def _check_parents(tree: dict, records: list[dict]) -> None:
    """Sub-calls hang under the turn whose code made them; a child's first turn under its call site."""
    by_id = {r["id"]: r for r in records}
    runs = {run["run_id"]: run for run in tree["runs"]}
    for record in records:
        parent = by_id.get(record["parent_id"])
        if record["purpose"] == "sub":
            assert parent["run_id"] == record["run_id"] and parent["iteration"] == record["iteration"]
            assert parent["purpose"] == "root"
    child_first_turns = [r for r in records if r["purpose"] == "root" and r["iteration"] == 1 and r["depth"] > 0]
    assert len(child_first_turns) == 2
    for turn in child_first_turns:
        parent = by_id[turn["parent_id"]]
        assert parent["run_id"] == runs[turn["run_id"]]["parent_run_id"] and parent["iteration"] == 1
    top_turns = [r for r in records if r["purpose"] == "root" and r["depth"] == 0]
    assert top_turns[1]["parent_id"] == top_turns[0]["id"] and top_turns[2]["parent_id"] == top_turns[1]["id"]
    assert all(r["completion"] is not None and r["usage"]["prompt_tokens"] is not None for r in records)
    assert all(r["messages"] for r in records) and "reward" not in records[0]


def test_sft_export_is_root_turns_as_chat_examples(tmp_path):
    store = Store(tmp_path / "rlm.db")
    tree = store.run_tree(depth_two_run(store))
    examples = sft_examples(tree)
    root_turns = [c for c in tree["calls"] if c["purpose"] == "root"]
    assert len(examples) == len(root_turns) == 3 + 2 + 2
    for example in examples:
        assert set(example) == {"messages"}
        assert [m["role"] for m in example["messages"][:2]] == ["system", "user"]
        assert example["messages"][-1]["role"] == "assistant"
    assert len(sft_examples(tree, all_depths=False)) == 3


def test_rewards_from_a_scorer_and_from_a_bench_task(tmp_path):
    from recursive_llm.bench.tasks import niah

    store = Store(tmp_path / "rlm.db")
    tree = store.run_tree(depth_two_run(store))
    scored = export_records(tree, "calls", scorer=lambda answer, run: float(answer.endswith("top question")))
    assert {r["reward"] for r in scored} == {1.0}
    with pytest.raises(ValueError, match="finite number"):
        export_records(tree, "sft", scorer=lambda answer, run: "yes")
    with pytest.raises(ValueError, match="scorer failed"):
        export_records(tree, "sft", scorer=lambda answer, run: 1 / 0)
    task = niah(8_000, seed=2)
    run_id = depth_two_run(store)
    store.label_task(run_id, {"family": "niah", "size_tokens": 8_000, "seed": 2})
    wrong = store.run_tree(run_id)
    assert {e["reward"] for e in export_records(wrong, "sft")} == {0.0}
    wrong["runs"][0]["answer"] = f"It is {task.answer}."  # the family regenerates the task and scores it
    assert {e["reward"] for e in export_records(wrong, "chat")} == {1.0}


def test_a_scorer_is_imported_from_the_current_directory(tmp_path, monkeypatch):
    from recursive_llm.record.export import load_scorer

    (tmp_path / "scores_here.py").write_text("def one(answer, run):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert load_scorer("scores_here:one")(None, {}) == 1.0
    with pytest.raises(ValueError, match="module:function"):
        load_scorer("scores_here")
    with pytest.raises(ValueError, match="defines nothing_here"):
        load_scorer("scores_here:nothing_here")


def rlm_cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "recursive_llm", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=home)


def test_bench_then_export_from_the_command_line(tmp_path):
    """The offline path docs/TRAINING.md shows: `rlm bench` against the simulator, then `rlm export`."""
    done = rlm_cli("bench", "--model", "simulator", "--tasks", "niah", "--sizes", "8k", "--methods", "rlm",
                   "--out", str(tmp_path / "bench"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = json.loads((tmp_path / "bench" / "results.jsonl").read_text().splitlines()[0])["run_id"]
    calls = rlm_cli("export", run_id, "--format", "calls", home=tmp_path)
    assert calls.returncode == 0, calls.stderr
    records = [json.loads(line) for line in calls.stdout.splitlines()]
    assert records and {r["reward"] for r in records} == {1.0}
    assert sum(r["parent_id"] is None for r in records) == 1
    (tmp_path / "my_scores.py").write_text("def half(answer, run):\n    return 0.5\n")
    sft = rlm_cli("export", run_id, "--format", "sft", "--scorer", "my_scores:half", home=tmp_path)
    assert sft.returncode == 0 and {json.loads(line)["reward"] for line in sft.stdout.splitlines()} == {0.5}
    bad = rlm_cli("export", run_id, "--scorer", "no_such_module:f", home=tmp_path)
    assert bad.returncode != 0 and "--scorer 'no_such_module:f' cannot be loaded" in bad.stderr


class TokenModel(ScriptedModel):
    """A client whose provider returned token ids and logprobs with each reply."""

    async def complete(self, messages, **kwargs):
        completion = await super().complete(messages, **kwargs)
        completion.token_ids, completion.logprobs = [11, 12], [-0.5, -0.25]
        return completion


def test_token_ids_and_logprobs_are_stored_and_exported_when_the_provider_returned_them(tmp_path):
    store = Store(tmp_path / "rlm.db")
    root = TokenModel(["```repl\nprint(llm_query('x'))\n```", "FINAL(ok)"])
    result = RLM(model=root, sub_model=ScriptedModel(default="leaf", name="sub"), store=store).completion("q", "t")
    records = call_records(store.run_tree(result.run_id))
    root_turns = [r for r in records if r["purpose"] == "root"]
    assert len(root_turns) == 2 and all(r["token_ids"] == [11, 12] and r["logprobs"] == [-0.5, -0.25]
                                        for r in root_turns)
    assert [r for r in records if r["purpose"] == "sub" and "token_ids" not in r and "logprobs" not in r]
