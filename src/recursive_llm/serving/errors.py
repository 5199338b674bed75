"""What a client of `rlm serve` sees when something fails: a `RequestError` becomes an OpenAI-style
error body (`error_body`), and every text sent back passes the `Redactor` (no keys, tokens or
server paths)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import redaction

if TYPE_CHECKING:
    from .config import ServeConfig


class RequestError(Exception):
    """An error that becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or {}


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Redactor(redaction.Redactor):
    """Removes secrets (redaction.py: the environment's, the server's tokens, key-shaped text) and
    the server's paths from anything sent back to a client."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(list(config.tokens))
        paths = [str(Path.home()), str(Path.cwd())]
        if config.allowed_root:
            paths.append(str(config.allowed_root.resolve()))
        from ..paths import rlm_home

        paths.append(str(rlm_home()))
        self._paths = sorted({p for p in paths if len(p) > 1}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = super().__call__(text)
        for path in self._paths:
            text = text.replace(path, "<server>")
        return text
