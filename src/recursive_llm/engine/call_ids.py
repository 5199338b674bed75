"""The ids of model calls, one scheme for the store, `rlm export --format calls` and the HTTP
headers each request carries (docs/TRAINING.md), so a trainer's proxy can join what it saw to the
export.

- A call's id is `<run_id>:<n>` (`call_id`); every attempt of a retried call shares it.
- The export's `id` of a call row is its call id, or `<call id>/attempt<k>/row<r>` when several
  rows share the call id (`record_id`).
- A call's parent is a root turn (`purpose` "root" or "final"): for a sub-call, the turn of its
  cell; for a root turn (or a compaction), the run's previous turn; for a child run's first turn,
  the parent run's turn whose code started it; none for the first turn of a top-level run. The
  export derives it from the stored rows (export.py), a running run from `CallTree`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scheduler import CallSite

ROOT_TURNS = ("root", "final")  # the root model's own turns (a final-answer request is one too)
REQUEST_ID, PARENT_ID, RUN_ID, DEPTH, PURPOSE = (
    "X-RLM-Request-Id", "X-RLM-Parent-Id", "X-RLM-Run-Id", "X-RLM-Depth", "X-RLM-Purpose")


def call_id(run_id: str, number: int) -> str:
    """The id of a run's `number`th call (counted over the whole run tree's scheduler)."""
    return f"{run_id}:{number}"


def record_id(call: str | None, run_id: str, row: int, attempt: int | None, shared: bool) -> str:
    """The export's id of one stored call row: its call id, unless other rows share it."""
    if call is None:
        return f"{run_id}/row{row}"
    return f"{call}/attempt{attempt}/row{row}" if shared else call


def request_headers(site: "CallSite", request_id: str, parent_id: str | None) -> dict[str, str]:
    """The headers a request of call `request_id` carries (no parent header for a tree's first turn)."""
    headers = {REQUEST_ID: request_id, RUN_ID: site.run_id, DEPTH: str(site.depth), PURPOSE: site.purpose}
    if parent_id is not None:
        headers[PARENT_ID] = parent_id
    return headers


class CallTree:
    """The root turns of the runs a scheduler serves, to give each new call its parent's id."""

    def __init__(self) -> None:
        self._turns: dict[str, list[tuple[int | None, str, str]]] = {}  # run -> (iteration, purpose, call id)

    def _turn(self, run_id: str | None, iteration: int | None = None) -> str | None:
        """The run's root turn at `iteration` if given and found, else its latest turn."""
        turns = self._turns.get(run_id or "", [])
        if iteration is not None:
            found = next((call for at, purpose, call in turns if at == iteration and purpose == "root"), None)
            if found is not None:  # the first, as the export takes it
                return found
        return turns[-1][2] if turns else None

    def parent(self, site: "CallSite") -> str | None:
        if site.purpose == "sub":
            return self._turn(site.run_id, site.iteration)
        own = self._turn(site.run_id)
        if own is None and site.parent_run_id is not None:  # a child run's first turn
            return self._turn(site.parent_run_id, site.parent_iteration)
        return own

    def started(self, site: "CallSite", call: str) -> str | None:
        """Note call `call` (a root turn is a parent of what follows); returns its parent's id."""
        parent = self.parent(site)
        if site.purpose in ROOT_TURNS:
            self._turns.setdefault(site.run_id, []).append((site.iteration, site.purpose, call))
        return parent
