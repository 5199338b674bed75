"""One question of the memory acceptance scenario (tests/test_memory.py), run as its own process.

`python tests/memory_scenario.py N CORPUS_DIR`: question N (1, 2 or 3) over the directory, with a
scripted root model and a sub-model that reads the fee out of each contract it is shown. Prints one
JSON object: the answer, the sub-call tokens and prompts, and the root's first user message.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from recursive_llm import RLM
from recursive_llm.testing import ScriptedModel

ASK = "Read this contract and reply with its termination fee as fee=<dollars>.\n\n"

QUESTIONS = {
    1: ("What is the total termination fee over all contracts?", """
fees_found = llm_query_batched([ASK + doc for doc in context])
fees = {doc.path: int(reply.split("=")[1]) for doc, reply in zip(context, fees_found)}
remember("termination_fees", fees, "termination fee in dollars per contract document (path -> fee)")
FINAL(sum(fees.values()))
"""),
    2: ("Which contract carries the largest fee for ending it early?", """
fees = memory["termination_fees"]
print(memory.info("termination_fees")["question"])
FINAL(max(fees, key=fees.get))
"""),
    3: ("Sum of the termination fees, now that some contracts were amended?", """
fees = dict(memory["termination_fees"])
changes = memory.changed("termination_fees")
for path in changes["removed"]:
    fees.pop(path, None)
redo = [doc for doc in context if doc.path in set(changes["new"]) | set(changes["changed"])]
for doc, reply in zip(redo, llm_query_batched([ASK + doc for doc in redo])):
    fees[doc.path] = int(reply.split("=")[1])
remember("termination_fees", fees, "termination fee in dollars per contract document (path -> fee)")
FINAL(sum(fees.values()))
"""),
}


def read_fee(messages: list[dict]) -> str:
    return "fee=" + re.search(r"Termination fee: \$(\d+)", messages[-1]["content"]).group(1)


def main(number: int, corpus: Path) -> None:
    question, code = QUESTIONS[number]
    root = ScriptedModel([f"```repl\nASK = {ASK!r}\n{code}\n```"], name="root")
    sub = ScriptedModel(default=read_fee, name="sub")
    result = RLM(model=root, sub_model=sub, memory="contracts").completion(question, corpus)
    subs = result.usage.by_depth.get(1)
    print(json.dumps({"answer": result.answer, "error": result.error,
                      "sub_tokens": subs.prompt_tokens + subs.completion_tokens if subs else 0,
                      "sub_prompts": len(sub.calls), "first_user": root.calls[0][1]["content"]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
