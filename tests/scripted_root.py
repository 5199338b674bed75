"""A scripted root policy for HTTP tests: behaves like a capable root model, by conversation state."""

from __future__ import annotations


def is_root(messages: list[dict]) -> bool:
    return bool(messages) and messages[0]["role"] == "system" and "REPL" in messages[0]["content"]


def root_then_sub(root_turns: list[str], sub_reply=lambda prompt: f"sub:{prompt}"):
    """A responder: root conversations get `root_turns` by turn number, sub-calls get `sub_reply`."""

    def respond(messages: list[dict], model: str) -> str:
        if is_root(messages):
            turn = sum(1 for m in messages if m["role"] == "assistant")
            return root_turns[min(turn, len(root_turns) - 1)]
        return sub_reply(messages[-1]["content"])

    return respond


def hanging_second_turn(root_turns: list[str], gate):
    """`root_then_sub(root_turns)`, whose second root call hangs while the file `gate` exists (a
    test presses Ctrl-C meanwhile, then removes the gate to let a resumed run through)."""
    import time

    base = root_then_sub(root_turns)

    def respond(messages: list[dict], model: str) -> str:
        if is_root(messages) and sum(1 for m in messages if m["role"] == "assistant") == 1:
            while gate.exists():
                time.sleep(0.05)
        return base(messages, model)

    return respond
