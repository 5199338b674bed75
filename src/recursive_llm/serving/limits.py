"""What a served run may spend, for `rlm serve` and `rlm mcp` alike: the server's ceilings are a
`config.Limits` (the one schema of a run's limits, `config.LIMIT_RULES`; defaults `SERVE_CEILINGS`),
and a request may lower each of them, never raise one (`clamp`). Every number is checked by
`config.check_limit` (finite, positive, whole for counts)."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from ..cli.options import SERVE_CEILINGS
from ..config import Limits, check_limit
from ..errors import ConfigError

LIMIT_NAMES: tuple[str, ...] = tuple(item.name for item in fields(Limits))  # what a request may lower


def serve_ceilings(**values: Any) -> Limits:
    """The server's ceilings: `SERVE_CEILINGS` with the operator's `values` (limit names); a value
    that is not a limit is a ConfigError naming it."""
    unknown = sorted(set(values) - set(LIMIT_NAMES))
    if unknown:
        raise ConfigError(f"unknown limit {unknown[0]!r}; limits: {', '.join(LIMIT_NAMES)}")
    checked = {}
    for name, value in {**SERVE_CEILINGS, **values}.items():
        try:
            checked[name] = check_limit(name, value, f"the {name} ceiling")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return Limits(**checked)


def clamp(ceilings: Limits, requested: Any) -> Limits:
    """The limits of one request that asks for `requested` (a dict of limit names, or None): each
    value must be a limit (ValueError naming `rlm.<name>`) and lowers its ceiling, never raises it."""
    if requested is None:
        return ceilings
    if not isinstance(requested, dict):
        raise ValueError("rlm must be an object of limits, e.g. {\"max_iterations\": 5}")
    changes = {}
    for name, value in requested.items():
        if name not in LIMIT_NAMES:
            raise ValueError(f"unknown rlm option {str(name)[:64]!r}; allowed: {', '.join(LIMIT_NAMES)}")
        value = check_limit(name, value, f"rlm.{name}", required=True)
        ceiling = getattr(ceilings, name)
        changes[name] = value if ceiling is None else min(value, ceiling)  # lower, never raise
    return replace(ceilings, **changes)


def as_keywords(limits: Limits) -> dict[str, Any]:
    """The limits as `RLM(...)` keywords."""
    return asdict(limits)
