"""Removing secrets from text that leaves the host's trust: the errors of the user's tools (they
reach model code, which can send them anywhere in a sub-call) and everything `rlm serve` answers.

A secret here is:
- the value of a host environment variable whose name says so (`KEY`, `TOKEN`, `SECRET`,
  `PASSWORD`, `PASSWD`, `CREDENTIAL`; at least 8 characters), read when the `Redactor` is made;
- a secret the caller names (the run's API keys, the server's tokens);
- text shaped like one: an `sk-...` key, a URL's password (`https://user:password@host`), the
  credentials after `Bearer` or `Basic`, the value of a URL parameter named like a secret
  (`?key=`, `&api_key=`, `access_token=`, `password=`, `signature=`, ...).

Each becomes `[redacted]`. A secret that is none of these (a password in a variable named
`DB_URL`, say) passes: what a tool's error may carry is documented in docs/SECURITY.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

MARK = "[redacted]"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL")
MIN_ENV_SECRET = 8  # shorter values of such variables ("1", "true") are not worth hiding
SHAPES = [
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), MARK),
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"), MARK),  # user:password@ in a URL
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=\-]{8,}"), rf"\1\2{MARK}"),
    (re.compile(r"(?i)([?&;][a-z0-9_.\-]*(?:key|token|secret|passw(?:or)?d|sig|signature|auth)[a-z0-9_.\-]*=)"
                r"[^&#\s'\"]+"), rf"\1{MARK}"),
]


def environment_secrets() -> list[str]:
    """The values of the host's environment variables whose names say they are secrets."""
    return [value for name, value in os.environ.items()
            if len(value) >= MIN_ENV_SECRET and SECRET_NAME.search(name)]


class Redactor:
    """`redact(text)`: `text` with every secret it knows (see the module) replaced by `[redacted]`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        known = {secret for secret in [*environment_secrets(), *secrets] if secret}
        self._secrets = sorted(known, key=len, reverse=True)  # a longer secret before any part of it

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MARK)
        for shape, replacement in SHAPES:
            text = shape.sub(replacement, text)
        return text
