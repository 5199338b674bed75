"""One TLS context per process for the provider clients: which certificate authorities are trusted.

In this order, as curl, requests and the bare SDKs read them:
1. SSL_CERT_FILE, then REQUESTS_CA_BUNDLE: a PEM bundle (a path that cannot be read is an error
   naming the variable), then SSL_CERT_DIR: a directory of hashed certificates;
2. the operating system's trust store: `truststore` on macOS and Windows (the system's verifier);
   on Linux the system's CA bundle and directory (/etc/ssl/certs, where `update-ca-certificates`
   puts a CA), loaded once into the context. `truststore` on Linux loads them again on every
   handshake, which OpenSSL before 3.4 accumulates (sethmlarson/truststore#212; httpcore2 makes the
   same choice);
3. certifi's bundle when the system has none (a minimal container).

Building one loads the CA bundle, about 17 ms. Each run makes its own clients (an async HTTP
client belongs to the event loop that made it), so without sharing every run paid that again.
"""

from __future__ import annotations

import os
import platform
import re
import ssl
from functools import lru_cache

from ..errors import ModelError

# Where Linux distributions keep the system bundle when OpenSSL's compiled-in paths are not usable
# (a Python built with its own OpenSSL), as truststore looks for it.
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
                  "/etc/pki/tls/cert.pem", "/etc/ssl/cert.pem", "/etc/ssl/ca-bundle.pem")


@lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """The verifying context every provider client uses (see the module's docstring)."""
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(variable):
            return _from_variable(variable, cafile=os.environ[variable])
    if os.environ.get("SSL_CERT_DIR"):
        return _from_variable("SSL_CERT_DIR", capath=os.environ["SSL_CERT_DIR"])
    if platform.system() in ("Darwin", "Windows"):
        import truststore

        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cafile, capath = system_store()
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _from_variable(variable: str, **where: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(**where)
    except (OSError, ssl.SSLError) as error:
        path = os.environ[variable]
        raise ModelError(f"{variable}={path} cannot be used as certificate authorities ({error}): point it at a "
                         f"PEM bundle (a directory of hashed certificates for SSL_CERT_DIR) or unset it",
                         retryable=False) from None


def system_store() -> tuple[str | None, str | None]:
    """(CA bundle, CA directory) of this Linux system, either None when absent."""
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if capath and not any(re.fullmatch(r"[0-9a-fA-F]{8}\.\d+", name) for name in os.listdir(capath)):
        capath = None  # no hashed certificates: OpenSSL would find nothing there
    if not cafile and not capath:
        cafile = next((path for path in SYSTEM_BUNDLES if os.path.isfile(path)), None)
    return cafile, capath


def is_certificate_error(error: BaseException | None) -> bool:
    """Whether `error` or what caused it is a failed certificate verification (never retried)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ssl.SSLCertVerificationError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
