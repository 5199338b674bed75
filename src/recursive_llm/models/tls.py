"""One TLS context per process for the provider clients.

Building one loads the CA bundle, about 17 ms. Each run makes its own clients (an async HTTP
client belongs to the event loop that made it), so without sharing every run paid that again.
Connections are still per client; only the verified-certificates setup is shared.
"""

from __future__ import annotations

import ssl
from functools import lru_cache


@lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default context (its CA bundle, SSL_CERT_FILE / SSL_CERT_DIR honoured), made once."""
    import httpx

    return httpx.create_ssl_context()
