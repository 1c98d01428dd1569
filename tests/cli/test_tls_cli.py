"""TLS as operators run it: ``trio-mesh run`` with a TLS listener, real load tools (wrk, h2load)
over TLS, and certificate rotation by SIGHUP while the load runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cli.test_http_cli import TIMEOUT, Mesh, running
from tests.tls_pki import Pair, Pki

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("h2load") is None, reason="needs wrk and h2load"
)


def tls_config(tmp_path: Path, cert: Path, key: Path, protocol: str = "Auto") -> Path:
    doc = {
        "servers": [
            {
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "tls",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "tls_context": {
                                    "status": True,
                                    "cert_chain": str(cert),
                                    "private_key": str(key),
                                },
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {
                                            "downstream_protocol": protocol,
                                            "router_config_name": "r",
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "d",
                                "domains": ["*"],
                                "routers": [
                                    {
                                        "match": {"prefix": "/"},
                                        "direct_response": {"status": 200, "body": "tls\n"},
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def install(pair: Pair, cert: Path, key: Path) -> None:
    """Put ``pair`` in place as an operator would: new files renamed over the old ones."""
    for src, dst in ((pair.cert, cert), (pair.key, key)):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def served_cert(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=TIMEOUT)


def same_cert(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


def wait_for_line(mesh: Mesh, pattern: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while True:
        line = mesh._next("stderr", deadline)
        if line is None:
            pytest.fail(f"the proxy exited:\n{mesh.text}")
        if re.search(pattern, line):
            return line


def wrk(port: int, seconds: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", *extra, f"https://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT + 10)
    assert proc.returncode == 0, out
    assert "Socket errors" not in out, out  # connect, read, write or timeout errors
    assert "Non-2xx" not in out, out
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    assert requests > 100, out
    return out


def test_sighup_rotates_the_certificate_under_wrk(tmp_path: Path, pki: Pki) -> None:
    """Keep-alive wrk and a wrk that makes a new handshake per request (Connection: close)
    run while SIGHUP swaps the certificate three times: not one failed request; each new handshake
    after a reload sees the new certificate."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server, cert, key)
    rotated = pki.ca.issue("rotated", cn="localhost", dns=("localhost",), ips=("127.0.0.1",))
    with running(tls_config(tmp_path, cert, key)) as mesh:
        port = mesh.ready()["tls"]
        assert same_cert(served_cert(port), pki.server.cert_pem)
        keepalive = wrk(port, 4)
        handshakes = wrk(port, 4, "-H", "Connection: close")
        try:
            for pair in (rotated, pki.server, rotated):
                install(pair, cert, key)
                mesh.proc.send_signal(signal.SIGHUP)
                wait_for_line(mesh, r"configuration reloaded")
                assert same_cert(served_cert(port), pair.cert_pem)
        finally:
            keep_out = wrk_result(keepalive)
            close_out = wrk_result(handshakes)
        assert mesh.stop() == 0
    assert "Traceback" not in mesh.text, mesh.text
    assert keep_out and close_out


def test_a_broken_certificate_on_sighup_keeps_the_old_one(tmp_path: Path, pki: Pki) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    install(pki.server, cert, key)
    with running(tls_config(tmp_path, cert, key)) as mesh:
        port = mesh.ready()["tls"]
        shutil.copyfile(pki.other_server.key, key)  # the key of another certificate
        mesh.proc.send_signal(signal.SIGHUP)
        line = wait_for_line(mesh, r"reload refused")
        assert "private_key" in line, line
        assert same_cert(served_cert(port), pki.server.cert_pem)
        assert mesh.stop() == 0


def test_h2load_over_tls(tmp_path: Path, pki: Pki) -> None:
    """nghttp2's h2load: HTTP/2 negotiated by ALPN on an Auto listener, every request served."""
    with running(tls_config(tmp_path, pki.server.cert, pki.server.key)) as mesh:
        port = mesh.ready()["tls"]
        out = subprocess.run(
            ["h2load", "-n", "2000", "-c", "10", "-m", "10", f"https://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        ).stdout
        assert "Application protocol: h2" in out, out
        assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded", out), out
        assert re.search(r"status codes: 2000 2xx", out), out
        assert mesh.stop() == 0
