"""Real server software for the transport's tests (tests/test_openai_transport.py): uvicorn serving a
tiny chat-completions app (in a process of its own), tinyproxy as a forward or reverse proxy, and a
certificate authority with a certificate for 127.0.0.1.

The app answers every POST with a completion whose text says which connection it came on and which
proxy it went through: `FINAL(port=<client port> via=<Via header>)`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


SERVED = [0]  # POSTs this process has answered
PADDING = {"/v1/huge/chat/completions": b" " * 300_000}  # a body over the bound a test sets (100,000 bytes)


async def app(scope, receive, send) -> None:
    """The ASGI app uvicorn serves (`real_http:app`): a completion (OpenAI's shape, or Anthropic's
    for /messages) saying `FINAL(port=<client port> via=<Via header> n=<POSTs served so far>
    auth=<whether an Authorization header came>)`; /v1/moved/... redirects (307) to /v1/...,
    /v1/away/... to /v1/... at another origin (`localhost` for `127.0.0.1`, the same server);
    /v1/huge/... pads its answer, /v1/bomb/... is a gzip that inflates to 5 MB."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    SERVED[0] += 1
    path, headers = scope["path"], [(b"content-type", b"application/json")]
    if path.startswith(("/v1/moved/", "/v1/away/")):
        location = path.replace("/v1/moved/", "/v1/", 1).encode()
        if path.startswith("/v1/away/"):
            location = f"http://localhost:{scope['server'][1]}".encode() + path.replace("/v1/away/", "/v1/", 1).encode()
        await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location),
                                                                              (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    via = dict(scope["headers"]).get(b"via", b"-").decode().replace(" ", "_")
    auth = "yes" if b"authorization" in dict(scope["headers"]) else "no"
    text = f"FINAL(port={scope['client'][1]} via={via} n={SERVED[0]} auth={auth})"
    if path.endswith("/messages"):
        reply = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                 "content": [{"type": "text", "text": text}], "usage": {"input_tokens": 3, "output_tokens": 1}}
    else:
        reply = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    body = json.dumps(reply).encode() + PADDING.get(path, b"")
    if path.startswith("/v1/bomb/"):
        import gzip

        body = gzip.compress(b" " * 5_000_000)
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {process.stderr.read()[-2000:]!r}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@contextlib.contextmanager
def running(command: list[str], port: int, what: str) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process, what)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def uvicorn(*options: str, scheme: str = "http") -> Iterator[str]:
    """uvicorn on 127.0.0.1 with `options` (its CLI's); yields the API's base URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "real_http:app", "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log", "--log-level", "warning", *options]
    with running(command, port, "uvicorn"):
        yield f"{scheme}://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def tinyproxy(*directives: str) -> Iterator[int]:
    """tinyproxy on 127.0.0.1 with extra config `directives`; yields its port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rlm-tinyproxy-") as folder:
        config = Path(folder) / "tinyproxy.conf"
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 200", "LogLevel Critical",
                 "Allow 127.0.0.1", *directives]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        config.write_text("\n".join(lines) + "\n")
        with running([shutil.which("tinyproxy") or "tinyproxy", "-d", "-c", str(config)], port, "tinyproxy"):
            yield port


def certificate_authority(folder: Path) -> tuple[Path, Path, Path]:
    """A new CA and a certificate it signed for 127.0.0.1 and localhost: (CA cert, server cert, server key), PEM."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, signer, *extensions) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("recursive-llm test CA", ca_key, "recursive-llm test CA", ca_key,
                     (x509.BasicConstraints(ca=True, path_length=None), True),
                     (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                    encipher_only=False, decipher_only=False), True),
                     (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False))
    server = certificate("127.0.0.1", server_key, "recursive-llm test CA", ca_key,
                         (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                       x509.DNSName("localhost")]), False),
                         (x509.BasicConstraints(ca=False, path_length=None), True),
                         (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths
