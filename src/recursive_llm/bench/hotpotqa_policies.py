"""The simulator's policies for the HotpotQA families (`oolong`, `oolong_pairs`, `multihop`).

As a reader (sub-model or plain model), the simulator is an oracle *within its prompt*: it knows
each real question's label and each bridge question's supporting sentences, and answers from the
records and paragraphs its prompt holds, nothing else. A record cut off by a window is not read;
an answer whose supporting sentences are not all in the prompt is not given (the reader names the
linking entity instead when it holds the first hop, as a careful reader would).

As an RLM's root model it writes the code a capable model writes for the family: label the records
with batched sub-calls and count or pair them in code; or search, read the hits, follow the lead.
Without sub-calls it does what code alone can: guess labels with a regex, or read search hits
itself, turn by turn.
"""

from __future__ import annotations

import re
from collections import Counter

from . import hotpotqa as data

LABEL_REQUEST = "Label each record as comparison or bridge"
LABEL_PROMPT = (LABEL_REQUEST + ": " + data.LABEL_HELP + ". Reply with one line per record: <user ID> <label>.")
OOLONG_MARK = "How many of the questions are comparison questions?"
NOTES_COUNT = re.compile(r"(\d+) comparison questions so far")
NOTES_USERS = re.compile(r"comparison questions per user so far: ([\d=, ]*)")
# What a model without sub-calls can do to label a question: guess from its words.
COMPARISON_GUESS = (r"\b(or|both|same|older|younger|first|earlier|later|larger|longer|taller|more|less|higher|"
                    r"closer)\b")
RECORD_BATCH = 200


def is_hotpotqa_prompt(text: str) -> bool:
    return (LABEL_REQUEST in text or OOLONG_MARK in text or data.PAIRS_PATTERN.search(text) is not None
            or data.MULTIHOP_PATTERN.search(text) is not None)


# ---- reading (sub-model and baselines) -------------------------------------------------------

def _comparisons(prompt: str, low: int = 0, high: int = 10**9) -> Counter[int]:
    labels = data.label_of()
    return Counter(int(user) for user, question in data.RECORD_PATTERN.findall(prompt)
                   if low <= int(user) <= high and labels.get(question.strip()) == "comparison")


def read(prompt: str, last_message: str) -> str:
    """Answer a HotpotQA-family prompt from what the prompt holds."""
    notes = "Update the notes" in last_message
    if LABEL_REQUEST in last_message:
        labels = data.label_of()
        return "\n".join(f"{user} {labels.get(question.strip(), 'unknown')}"
                         for user, question in data.RECORD_PATTERN.findall(prompt))
    if match := data.PAIRS_PATTERN.search(prompt):
        low, high, least = (int(group) for group in match.groups())
        counts = Counter({int(user): int(count) for found in NOTES_USERS.findall(prompt)
                          for user, count in re.findall(r"(\d+)=(\d+)", found)})
        counts.update(_comparisons(prompt, low, high))
        if notes:
            return "Notes: comparison questions per user so far: " + ", ".join(
                f"{user}={count}" for user, count in sorted(counts.items())) + "."
        return ", ".join(f"({a}, {b})" for a, b in data.pairs_meeting(counts, least)) or "no pairs"
    if OOLONG_MARK in prompt:
        total = sum(int(n) for n in NOTES_COUNT.findall(prompt)) + sum(_comparisons(prompt).values())
        return f"Notes: {total} comparison questions so far." if notes else str(total)
    if match := data.MULTIHOP_PATTERN.search(prompt):
        return _read_multihop(prompt, match.group(1).strip(), notes)
    return "none found"


def _read_multihop(prompt: str, question: str, notes: bool) -> str:
    example = data.example_of().get(question)
    if example is None:
        return "none found"
    support = data.supporting_sentences(example)
    present = [(title, sentence) for title, sentence in support if sentence in prompt]
    if notes:
        return "Notes: " + " ".join(sentence for _, sentence in present) if present else "Notes: nothing yet."
    if len(present) == len(support):
        return example["answer"]
    first, second = data.hops(example)
    if any(title == first for title, _ in present):
        return f"LEAD: {second}"
    return "none found"


# ---- the root model --------------------------------------------------------------------------

def root_code(question: str, sub_calls: bool) -> str | None:
    """The first code block for a HotpotQA-family question, or None if it is not one."""
    if match := data.PAIRS_PATTERN.search(question):
        low, high, least = match.groups()
        return _label_then_count(sub_calls, select="low <= int(user) <= high", setup=f"low, high = {low}, {high}\n",
                                 finish=("good = sorted(int(u) for u, c in comparisons.items() if c >= "
                                         f"{least})\nresult = ', '.join(f'({{a}}, {{b}})' for i, a in "
                                         "enumerate(good) for b in good[i + 1:]) or 'no pairs'\n"))
    if OOLONG_MARK in question:
        return _label_then_count(sub_calls, select="True", setup="",
                                 finish="result = str(sum(comparisons.values()))\n")
    if match := data.MULTIHOP_PATTERN.search(question):
        return _search_and_follow(match.group(0), match.group(1)) if sub_calls else _search_and_print(match.group(1))
    return None


def _label_then_count(sub_calls: bool, *, select: str, setup: str, finish: str) -> str:
    pick = ("import re\nfrom collections import Counter\n" + setup +
            "records = [(user, line) for line in context.splitlines() "
            "for user in re.findall(r' \\|\\| User: (\\d+) \\|\\| ', line)[:1]]\n"
            f"records = [(user, line) for user, line in records if {select}]\n")
    if sub_calls:
        label = (f"parts = ['\\n'.join(line for _, line in records[i:i + {RECORD_BATCH}]) "
                 f"for i in range(0, len(records), {RECORD_BATCH})]\n"
                 f"replies = llm_query_batched([{LABEL_PROMPT!r} + '\\n\\n' + part for part in parts])\n"
                 "comparisons = Counter(user for reply in replies "
                 "for user, label in re.findall(r'(\\d+) (comparison|bridge)', reply) if label == 'comparison')\n")
    else:
        label = (f"guess = re.compile({COMPARISON_GUESS!r}, re.I)\n"
                 "comparisons = Counter(user for user, line in records "
                 "if guess.search(line.split(' || Instance: ', 1)[1]))\n")
    return f"```repl\n{pick}{label}{finish}print(len(records), 'records;', result[:200])\n```"


def _search_and_follow(query: str, question: str) -> str:
    return ("```repl\n"
            f"query = {query!r}\n"
            f"hits = search({question!r}, k=20)\n"
            "notes = llm_query_batched([f'{query}\\n\\nDocument:\\n{h}' for h in hits])\n"
            "answers = [n for n in notes if not n.startswith(('LEAD:', 'none'))]\n"
            "leads = list(dict.fromkeys(n[5:].strip() for n in notes if n.startswith('LEAD:')))\n"
            "if not answers and leads:\n"
            "    evidence = [h for h, n in zip(hits, notes) if n.startswith('LEAD:')]\n"
            "    for lead in leads[:3]:\n"
            "        evidence += list(search(lead, k=3))\n"
            "    answers = [llm_query(query + '\\n\\nDocuments:\\n' + '\\n---\\n'.join(evidence))]\n"
            "result = answers[0] if answers else 'not found'\n"
            "print(leads, result)\n```")


def _search_and_print(question: str) -> str:
    return (f"```repl\nfor hit in search({question!r}, k=5):\n    print(hit)\n    print('---')\n```")


def root_next_turn(messages: list[dict], question: str, turn: int) -> str | None:
    """Later turns without sub-calls on `multihop`: read what the code printed, follow one lead."""
    match = data.MULTIHOP_PATTERN.search(question)
    if match is None:
        return None
    seen = "\n".join(str(m.get("content", "")) for m in messages if m["role"] == "user")
    reply = _read_multihop(seen + "\n" + match.group(0), match.group(1).strip(), notes=False)
    if reply.startswith("LEAD:") and turn < 3:
        return f"```repl\nfor hit in search({reply[5:].strip()!r}, k=3):\n    print(hit)\n    print('---')\n```"
    return f"FINAL({reply if not reply.startswith(('LEAD:', 'none')) else 'not found'})"
