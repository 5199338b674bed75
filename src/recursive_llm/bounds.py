"""`HostBounds`: what one run's model code can make the host hold, start or write.

Apart from config.py (which lists it with the other settings) because the sandboxed worker checks
these bounds too, before it sends anything (its channel checks every message it sends against
them, so it imports this module at its start): a named tuple, without config's dataclasses (35 ms
of every worker start).
"""

from __future__ import annotations

from collections import namedtuple

_DEFAULTS = {
    "max_batch_prompts": 10_000,
    "max_prompt_chars": 4_000_000,
    "max_call_chars": 64_000_000,
    "max_pending_chars": 128_000_000,
    "max_answer_chars": 1_000_000,
    "max_recorded_chars": 200_000,
    "max_message_bytes": 80_000_000,
    "max_message_values": 1_000_000,
    "max_memory_value_chars": 2_000_000,
    "max_memory_run_chars": 8_000_000,
    "max_memory_workspace_chars": 64_000_000,
    "max_memory_entries": 1_000,
}


class HostBounds(namedtuple("HostBounds", _DEFAULTS, defaults=tuple(_DEFAULTS.values()))):
    """What one run's model code can make the host hold, start or write. Past a bound, model code
    gets an error that names it; the host never grows with what a cell asks for. Immutable; a
    variant is `HOST_BOUNDS._replace(max_answer_chars=...)`.

    - `max_batch_prompts`: prompts in one `llm_query_batched` / `rlm_query_batched` call.
    - `max_prompt_chars`: one sub-call's prompt (about 1M tokens: more than any model's window).
    - `max_call_chars`: all prompts of one call together (a whole 10M-token input fits).
    - `max_pending_chars`: prompt text of the run's sub-calls being served at once, across every
      thread of model code.
    - `max_answer_chars`: a final answer (`FINAL`, `FINAL_VAR`, the `answer` dict).
    - `max_recorded_chars`: one message or response as written to the trajectory and the store
      (the rest is replaced by a note with its length; the cache key still covers all of it).
    - `max_message_bytes`: one message from the worker as sent (UTF-8 JSON). The host refuses a
      frame whose declared length is over it before reading a byte of its body (decoding a frame
      holds it about three times over), and the worker refuses to send one. A call of
      `max_call_chars` of plain text fits; text beyond ASCII takes 2 to 4 bytes a character, so
      such a call meets this bound first.
    - `max_message_values`: JSON values (lists, dicts, their items) in one message from the
      worker, counted before it is decoded (decoded, each costs 30-180 bytes: a frame of
      `[[],[],...]` would hold 20 times its size). Past it, as past `max_message_bytes`.
    - `max_memory_value_chars`: one `remember(name, value)` value, as JSON.
    - `max_memory_run_chars`: what one run (with its child runs) may add to a memory workspace.
    - `max_memory_workspace_chars` / `max_memory_entries`: what one workspace may hold (memory.py).
    """

    __slots__ = ()


HOST_BOUNDS = HostBounds()
