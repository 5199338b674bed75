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
    """httpx's default context, made once: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's CA bundle
    (what `httpx.create_ssl_context()` does, without importing httpx, which with the SDK transport
    is not otherwise loaded: 6 MB and its CLI's imports)."""
    import os

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
