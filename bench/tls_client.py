"""TLS for the harness (``python -m bench tls``): the load tools' OpenSSL configuration, the
readiness request, the check before load, the negotiated parameters, a connection counter.

The cipher is pinned on the client side: the load tool (wrk) and the probe that reports what it
negotiates (``openssl s_client``) run with ``OPENSSL_CONF`` pointing at
``CLIENT_OPENSSL_CONF``, which makes OpenSSL offer TLS 1.3 with TLS_AES_128_GCM_SHA256 only, so
every server negotiates that one (h2load would not do: it sets its own TLS 1.3 list). Pinning
it on the servers instead is not possible for both: Python's ``ssl`` has no call for the TLS
1.3 suites (``set_ciphers`` is TLS 1.2 and below), so trio-mesh offers OpenSSL's three and,
preferring its own order, picks TLS_AES_256_GCM_SHA384 for a client that offers all three.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import subprocess
from pathlib import Path

from . import nginx

TLS_VERSION = "TLSv1.3"
TLS_CIPHER = "TLS_AES_128_GCM_SHA256"

# libssl loads the file named by OPENSSL_CONF when it initialises (the default since OpenSSL
# 1.1.1), and applies ``system_default`` to every SSL_CTX the process makes (wrk's, s_client's),
# unless the program sets its own list afterwards, as h2load does.
CLIENT_OPENSSL_CONF = f"""\
# written by bench/ (python -m bench tls): what the load tools offer
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = {TLS_VERSION}
Ciphersuites = {TLS_CIPHER}
"""


def write_client_conf(directory: Path) -> Path:
    path = directory / "client-openssl.cnf"
    path.write_text(CLIENT_OPENSSL_CONF)
    return path


def client_env(conf: Path) -> dict[str, str]:
    return {"OPENSSL_CONF": str(conf)}


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https_status(port: int, path: str = "/small", timeout: float = 2.0) -> int | None:
    """Status of one ``GET path`` over TLS (Connection: close), for readiness; None on failure.
    Unverified: the check before load verifies the certificate."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with _unverified().wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(request.encode())
                data = b""
                while b"\r\n" not in data and len(data) < 8192:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
    except (OSError, ssl.SSLError):
        return None
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def check(port: int, ca: Path, path: str = "/small", timeout: float = 5.0) -> str | None:
    """What the load relies on, checked with the stdlib's client; None when right.

    - the certificate verifies against the run's CA for 127.0.0.1 (the URL's host);
    - two GETs on one connection, each 200 with exactly the upstream's body, kept alive;
    - ``Connection: close``: the answer, then the server closes (so wrk reconnects: one
      connection, one handshake, per request);
    - a second connection offering the first one's session is not resumed (no cache, no
      tickets): every connection is a full handshake.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    expected = nginx.SMALL_BODY.encode()
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    try:
        for n in range(2):
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or body != expected:
                return f"request {n + 1}: {response.status}, body {body[:40]!r} ({len(body)} B)"
            if response.will_close:
                return f"request {n + 1}: the connection was not kept alive"
        assert isinstance(conn.sock, ssl.SSLSocket)
        session = conn.sock.session
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        if response.status != 200 or response.read() != expected:
            return f"Connection: close request: {response.status}"
        sock = conn.sock
        if sock is not None and sock.recv(1) != b"":
            return "Connection: close: the server sent more instead of closing"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                if s.session_reused:
                    return "a session was resumed: handshakes would not all be full ones"
    except OSError as exc:
        return f"second connection: {type(exc).__name__}: {exc}"
    return None


def negotiated(port: int, conf: Path, timeout: float = 20.0) -> dict[str, str] | str:
    """What the load tools' OpenSSL configuration negotiates with the server on ``port``:
    ``openssl s_client -brief`` under the same ``OPENSSL_CONF`` (wrk prints nothing of it, and
    like wrk, s_client sets no TLS 1.3 suites of its own, so the configuration's apply; h2load
    sets its ``--tls13-ciphers`` list, which overrides them). ``{"protocol", "cipher",
    "temp_key"}``, or why not."""
    argv = ["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{port}"]
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **client_env(conf)},
            stdin=subprocess.DEVNULL,  # EOF at once: connect, print, close
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return f"openssl s_client did not finish: {' '.join(argv)}"
    text = out.stderr + out.stdout
    found = {
        key: m.group(1).strip()
        for key, label in (
            ("protocol", "Protocol version"),
            ("cipher", "Ciphersuite"),
            ("temp_key", "Server Temp Key"),
        )
        if (m := re.search(rf"^{label}: (.+)$", text, re.M))
    }
    if "protocol" not in found or "cipher" not in found:
        return f"openssl s_client exited {out.returncode}: {text.strip()[-300:]}"
    return found


def passive_opens() -> int:
    """TCP connections accepted on this host so far (``Tcp: PassiveOpens``, /proc/net/snmp):
    the delta over a run counts the connections the load opened, plus any other process's."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    tcp = [line.split()[1:] for line in lines if line.startswith("Tcp:")]
    header, values = tcp[0], tcp[1]
    return int(values[header.index("PassiveOpens")])
