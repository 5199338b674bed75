"""`rlm serve`'s settings as one frozen value (`ServeConfig`), checked once before it serves
(`check`: every number by `config.check_number`), and the model names it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..cli.options import SERVE_DEFAULTS
from ..config import CallPolicy, Limits, WorkerPolicy, check_number
from ..errors import ConfigError
from . import tokens as serve_tokens
from .limits import serve_ceilings


@dataclass(frozen=True)
class ServeConfig:
    model: str | None = None
    sub_model: str | None = None
    base_url: str | None = None
    host: str = SERVE_DEFAULTS["host"]
    port: int = SERVE_DEFAULTS["port"]
    token: str | None = None  # one client token; `tokens` holds more (one per client, for the cache)
    tokens: tuple[str, ...] = ()
    allowed_root: Path | None = None
    max_concurrent: int = SERVE_DEFAULTS["max_concurrent"]
    max_body_bytes: int = SERVE_DEFAULTS["max_body_mb"] * 1_000_000
    sandbox: str = WorkerPolicy.sandbox
    # The most a request may use; a request can ask for less (its "rlm" field), never more.
    limits: Limits = field(default_factory=serve_ceilings)
    extra_models: tuple[str, ...] = ()
    max_retries: int = CallPolicy.max_retries
    call_timeout_s: float | None = CallPolicy.call_timeout_s
    shutdown_grace_s: float = SERVE_DEFAULTS["shutdown_grace_s"]
    # A connection that sends nothing (or not a whole request's headers) for this long is closed;
    # a body that stops arriving for this long gets 408; an idle keep-alive connection is closed.
    idle_timeout_s: float = SERVE_DEFAULTS["idle_timeout_s"]
    # A request's whole body must arrive within this (a body trickled in under the idle timeout
    # held its connection for ever); more open connections than `max_connections` get 503.
    body_timeout_s: float = SERVE_DEFAULTS["body_timeout_s"]
    max_connections: int = SERVE_DEFAULTS["max_connections"]
    access_log: bool = False  # one line per request on stderr (`rlm serve` turns it on)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call (CORS); "*": any

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            object.__setattr__(self, "limits", serve_ceilings(**self.limits))
        tokens = tuple(dict.fromkeys(([self.token] if self.token else []) + [t for t in self.tokens if t]))
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "token", tokens[0] if tokens else None)
        object.__setattr__(self, "extra_models", tuple(self.extra_models))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))

    def check(self) -> None:
        """ConfigError naming the first setting that cannot be served with."""
        serve_tokens.check_tokens(self.tokens, self.host)
        if self.allowed_root is not None and not self.allowed_root.is_dir():
            raise ConfigError(f"--allowed-root {self.allowed_root} is not a directory")
        try:
            for flag, count in (("--max-concurrent", self.max_concurrent), ("--max-connections", self.max_connections)):
                check_number(flag, count, integer=True, minimum=1, inclusive=True, allow_none=False)
            for flag, seconds in (("--idle-timeout", self.idle_timeout_s), ("--body-timeout", self.body_timeout_s)):
                check_number(f"{flag} (seconds)", seconds, allow_none=False)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.max_connections < self.max_concurrent:
            raise ConfigError("--max-connections must be at least --max-concurrent")

    def client_of(self, authorization: str) -> str | None:
        """The cache namespace of the client whose token this header carries (`tokens.client_of`)."""
        return serve_tokens.client_of(self.tokens, authorization)


def allowed_models(config: ServeConfig) -> list[str]:
    """The root models a request may name as `rlm/<model>`: the default one and `--also-model`s."""
    from ..models.resolver import default_model_name

    names = [config.model or default_model_name(), *config.extra_models]
    return list(dict.fromkeys(names))


def served_names(config: ServeConfig) -> list[str]:
    """The model names `GET /v1/models` lists."""
    return ["rlm", *(f"rlm/{name}" for name in allowed_models(config))]
