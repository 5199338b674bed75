"""`rlm serve`'s bearer tokens: who needs one (anything but loopback), reading them from a file,
their minimum shape, and matching a request's `Authorization` header to a client in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path

from ..errors import ConfigError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
LOOPBACK_CLIENT = "serve:loopback"  # the one client of a server without tokens (loopback only)


def read_token_file(path: Path) -> list[str]:
    """Tokens from a file, one per line (blank lines and `#` comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the token file {path}: {error}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"the token file {path} holds no token (one per line)")
    return tokens


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tokens(tokens: tuple[str, ...], host: str) -> None:
    """ConfigError when serving on `host` needs a token and there is none, or a token is too weak."""
    if not tokens and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without a token: set RLM_SERVE_TOKEN or "
                          f"--token-file (anyone who can reach the port could spend your API budget)")
    if any(len(t) < 8 or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError("a serve token must be at least 8 characters, with no spaces")


def client_of(tokens: tuple[str, ...], authorization: str) -> str | None:
    """The cache namespace of the client whose token this header carries, or None when it carries
    none of them. Every token is compared, in constant time."""
    if not tokens:
        return LOOPBACK_CLIENT  # no tokens: every client is one client (loopback only)
    given = authorization.encode("utf-8", "surrogateescape")
    match = None
    for token in tokens:
        if hmac.compare_digest(given, f"Bearer {token}".encode()):
            match = token
    return None if match is None else "serve:" + hashlib.sha256(match.encode()).hexdigest()[:32]
