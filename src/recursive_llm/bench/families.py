"""Every task family `rlm bench` can run, by name: the synthetic ones (tasks.py) and the ones
built from HotpotQA (hotpotqa.py, imported when first used: it loads a 46 MB data file)."""

from __future__ import annotations

from collections.abc import Callable

from .tasks import Task, codeqa, logs, niah, niah_multi

FAMILIES: dict[str, Callable[..., Task]] = {"niah": niah, "niah_multi": niah_multi, "logs": logs, "codeqa": codeqa}


def _from_hotpotqa(name: str) -> Callable[..., Task]:
    """A family from `hotpotqa.py`, imported when first used (it loads a 46 MB data file)."""
    def build(size_tokens: int, seed: int = 0) -> Task:
        from . import hotpotqa

        return getattr(hotpotqa, name)(size_tokens, seed)
    def prepare() -> None:
        from . import hotpotqa

        hotpotqa.examples()
    build.__doc__ = f"HotpotQA family `{name}` (see recursive_llm.bench.hotpotqa)."
    build.prepare = prepare  # type: ignore[attr-defined]
    return build


FAMILIES.update({name: _from_hotpotqa(name) for name in ("oolong", "oolong_pairs", "multihop")})
