"""A model simulator for benchmarks, load and fault tests: an OpenAI-compatible HTTP server on
127.0.0.1 with scripted policies instead of a network, so that measurements need no real model.

It is `recursive_llm.testing.FakeLLMServer` (latency or a latency distribution, tokens per second,
a concurrency limit with 429s, injected faults) with a responder that plays each role:
- as an RLM's root model (its system prompt describes the REPL), it writes the code a capable
  model would write for the task family (grep for the needle, read the hits with sub-calls, answer);
- as a sub-model or a plain model (baselines), it reads its prompt like a perfect reader within its
  window: it finds the facts the question asks for in the prompt it was given, and nothing else.
What the numbers show is therefore how each *method* uses a window, not how clever a model is.

    python -m recursive_llm.bench.simulator --port 8100 --latency 0.2 --jitter 0.05
"""

from __future__ import annotations

import argparse
import random
import re

from ..testing.fake_server import FakeLLMServer, serve_forever
from . import hotpotqa_policies

_KEY = re.compile(r"special magic number for (\w+)")
NO_SUB_CALLS_MARK = "Sub-calls are disabled in this run"


def _key(text: str) -> str | None:
    match = _KEY.search(text)
    return match.group(1) if match else None


def _facts(text: str, key: str | None) -> list[str]:
    if key is None:
        return []
    return list(dict.fromkeys(re.findall(rf"special magic number for {re.escape(key)} is (\d+)", text)))


_LOG_CODE = re.compile(r"ERROR events with code (E\d+)")
_FUNCTION = re.compile(r"defines the top-level function `(\w+)`")


def root_policy(messages: list[dict]) -> str:
    """The RLM root model: explore with code, then answer with a REPL variable."""
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    question = first_user.split("About your input")[0]
    turn = sum(1 for m in messages if m["role"] == "assistant")
    sub_calls = NO_SUB_CALLS_MARK not in messages[0]["content"]
    if hotpotqa_policies.is_hotpotqa_prompt(question):
        if turn == 0:
            return hotpotqa_policies.root_code(question, sub_calls) or "FINAL(not a task I know)"
        if not sub_calls and (reply := hotpotqa_policies.root_next_turn(messages, question, turn)):
            return reply
        return "FINAL_VAR(result)"
    if turn > 0:
        return "FINAL_VAR(result)"
    if match := _LOG_CODE.search(question):  # counting is code's job: no sub-calls needed
        return (f"```repl\nhits = grep(r'ERROR \\[{match.group(1)}\\]', max_results=5)\nresult = str(hits.total)\n"
                f"print(result)\n```")
    if match := _FUNCTION.search(question):
        return ("```repl\nimport re\n"
                f"m = re.search(r'^def {match.group(1)}\\(', context, re.M)\n"
                "start = context.rfind('### ', 0, m.start()) + 4 if m else -1\n"
                "result = context[start:context.index(chr(10), start)] if m else 'not found'\nprint(result)\n```")
    key = _key(question) or "unknown"
    if not sub_calls:
        return ("```repl\nimport re\nfound = list(dict.fromkeys(re.findall(r'special magic number for "
                f"{key} is (\\d+)', context if isinstance(context, str) else '\\n'.join(map(str, context)))))\n"
                "result = ', '.join(found) or 'not found'\nprint(result)\n```")
    return (f"```repl\nhits = grep(r'special magic number for {key}\\b', max_results=50)\nprint(hits.total)\n"
            f"notes = llm_query_batched([f'What is the special magic number for {key}? Text: {{h.text}}' "
            "for h in hits])\n"
            "result = ', '.join(n for n in notes if n[:1].isdigit()) or 'not found'\nprint(result)\n```")


def reader_policy(messages: list[dict]) -> str:
    """A sub-model or plain model: answers only from what its prompt contains."""
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    question = messages[-1]["content"] if messages else ""
    if hotpotqa_policies.is_hotpotqa_prompt(prompt):
        return hotpotqa_policies.read(prompt, question)
    notes = "Update the notes" in question  # the iterative summary agent keeps the facts verbatim
    if match := _LOG_CODE.search(prompt):
        lines = list(dict.fromkeys(re.findall(rf"^.* ERROR \[{match.group(1)}\] .*$", prompt, re.MULTILINE)))
        return ("Notes:\n" + "\n".join(lines)) if notes else str(len(lines))
    if match := _FUNCTION.search(prompt):
        found = re.search(rf"### (\S+)\n(?:(?!### ).*\n)*?def {match.group(1)}\(", prompt)
        if notes:
            return f"Notes:\n### {found.group(1)}\ndef {match.group(1)}(" if found else "Notes: nothing yet."
        return found.group(1) if found else "not found"
    key = _key(question.split("Text:")[0]) or _key(prompt[-2000:]) or _key(prompt)
    facts = _facts(prompt, key)
    if notes:
        return "Notes: " + " ".join(f"The special magic number for {key} is {v}." for v in facts) if facts \
            else "Notes: nothing yet."
    return ", ".join(facts) if facts else "none found"


def responder(messages: list[dict], model: str) -> str:
    if messages and messages[0]["role"] == "system" and "REPL" in messages[0]["content"]:
        return root_policy(messages)
    return reader_policy(messages)


def simulator(latency: float = 0.0, jitter: float = 0.0, seed: int = 0, **options) -> FakeLLMServer:
    """The simulator (not started): `latency` ± uniform `jitter` seconds per request."""
    draw = random.Random(seed)
    delay = (lambda: max(0.0, latency + draw.uniform(-jitter, jitter))) if jitter else latency
    return FakeLLMServer(responder=responder, latency=delay, seed=seed, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    args = parser.parse_args()
    serve_forever(simulator(args.latency, args.jitter, port=args.port, tokens_per_second=args.tokens_per_second,
                            max_concurrency=args.max_concurrency, fault_rate=args.fault_rate, retry_after="0.5"),
                  "simulator")


if __name__ == "__main__":
    main()
