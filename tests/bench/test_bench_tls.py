"""``python -m bench tls`` (bench/tls.py, bench/tls_client.py): what its numbers rest on, with
real peers. The load tools' OpenSSL configuration pins the cipher; the check before load
refuses a server that would resume sessions (its handshakes would not all be full ones); the
nginx contender terminates TLS with the run's certificate; and the smoke run CI does works."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench import tls, tls_client
from bench.contenders import REPO_ROOT, TLS_CONTENDERS, Workdir, start, start_upstream
from bench.procs import Processes, free_port
from tests.tls_pki import Pki

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nginx", "wrk", "h2load", "openssl")),
    reason="needs nginx, wrk, h2load and openssl",
)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[tuple[Processes, Workdir]]:
    tmp_path.chmod(0o755)  # nginx's worker (nobody, under root) reads from here
    procs = Processes(log_dir=tmp_path)
    w = Workdir(tmp_path, free_port(), 4096)
    try:
        yield procs, w
    finally:
        procs.close()


class _Small(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def resuming_server(pki: Pki) -> Iterator[int]:
    """An HTTPS server on Python's ssl with its defaults: TLS 1.3 tickets sent, so a client
    that offers its session back is resumed (an abbreviated handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Small)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_check_refuses_a_server_that_resumes_sessions(pki: Pki, resuming_server: int) -> None:
    # The server is right in every other way: the certificate verifies, keep-alive, the close.
    problem = tls_client.check(resuming_server, pki.ca.cert)
    assert problem is not None and "resumed" in problem


def test_check_refuses_a_certificate_from_another_ca(pki: Pki, resuming_server: int) -> None:
    problem = tls_client.check(resuming_server, pki.other_ca.cert)
    assert problem is not None and "CERTIFICATE_VERIFY_FAILED" in problem


async def test_https_status_is_none_without_tls(echo_port: int) -> None:
    assert tls_client.https_status(free_port()) is None  # nothing listens
    # A cleartext server (it echoes the ClientHello back): not ready, not an exception.
    assert await trio.to_thread.run_sync(tls_client.https_status, echo_port) is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_client_conf_pins_the_cipher_against_the_servers_preference(
    pki: Pki, resuming_server: int, tmp_path: Path
) -> None:
    # Python's ssl server prefers its own order, TLS_AES_256_GCM_SHA384 first; the client
    # configuration offers TLS_AES_128_GCM_SHA256 only, so that is what is negotiated.
    conf = tls_client.write_client_conf(tmp_path)
    found = tls_client.negotiated(resuming_server, conf)
    assert isinstance(found, dict)
    assert (found["protocol"], found["cipher"]) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    # Without it, OpenSSL's default list lets the server choose: not the pinned suite.
    plain = tmp_path / "empty.cnf"
    plain.write_text("")
    found = tls_client.negotiated(resuming_server, plain)
    assert isinstance(found, dict) and found["cipher"] == "TLS_AES_256_GCM_SHA384"


def test_passive_opens_counts_accepted_connections() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        before = tls_client.passive_opens()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        accepted = [listener.accept()[0] for _ in range(3)]
        assert tls_client.passive_opens() - before >= 3
        for s in clients + accepted:
            s.close()


@needs_tools
def test_nginx_tls_contender_serves_full_handshakes_with_the_pinned_cipher(
    work: tuple[Processes, Workdir],
) -> None:
    procs, w = work
    start_upstream(procs, w)
    tls.prepare(w)
    assert w.tls_ca is not None
    running = start(TLS_CONTENDERS["nginx-tls"], procs, w, "test")
    assert running.url("/small").startswith("https://")
    assert tls_client.check(running.port, w.tls_ca) is None
    found = tls_client.negotiated(running.port, w.dir / "client-openssl.cnf")
    assert isinstance(found, dict)
    assert (found["protocol"], found["cipher"]) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    # A client that accepts TLS 1.2 only is refused nothing: nginx allows 1.2, as trio-mesh.
    ctx = ssl.create_default_context(cafile=str(w.tls_ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.2"


@needs_tools
def test_trio_mesh_tls_contender_passes_the_check(work: tuple[Processes, Workdir]) -> None:
    why = TLS_CONTENDERS["trio-mesh-tls"].unavailable()
    if why:
        pytest.skip(why)
    procs, w = work
    start_upstream(procs, w)
    tls.prepare(w)
    assert w.tls_ca is not None
    running = start(TLS_CONTENDERS["trio-mesh-tls"], procs, w, "test")
    assert tls_client.check(running.port, w.tls_ca) is None
    found = tls_client.negotiated(running.port, w.dir / "client-openssl.cnf")
    assert isinstance(found, dict)
    assert (found["protocol"], found["cipher"]) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")


def test_targets_and_table_from_results() -> None:
    results = {
        tls.HANDSHAKE: {
            "nginx-tls": {"rps": 1000.0, "cpu_us_per_req": 400.0, "connections_per_request": 1.0},
            "trio-mesh-tls": {"rps": 450.0, "cpu_us_per_req": 1000.0},
            "trio-mesh": {"error": "never became ready: x"},
        },
        tls.SMALL_GET: {
            "trio-mesh-tls": {"rps": 900.0},
            "trio-mesh": {"rps": 1000.0},
        },
    }
    tls.add_ratios(results)
    assert results[tls.HANDSHAKE]["trio-mesh-tls"]["rps_vs_nginx_tls"] == 0.45
    assert results[tls.SMALL_GET]["trio-mesh-tls"]["rps_vs_cleartext"] == 0.9
    lines = tls.targets(results)
    assert lines[0].startswith("handshakes/s, trio-mesh-tls / nginx-tls: 0.45x")
    assert "missed" in lines[0] and "handshakes per CPU-second 0.40x" in lines[0]
    assert lines[1].endswith("0.90x (target >= 0.8x: met)")
    table = tls.format_table(
        results, list(tls.TLS_SCENARIOS), list(TLS_CONTENDERS), {}, {"negotiated x": "TLSv1.3"}
    )
    assert "error: never became ready: x" in table and "negotiated x: TLSv1.3" in table


@needs_tools
def test_smoke_run(tmp_path: Path) -> None:
    """What CI runs (.ci/run): every contender available here, both scenarios, a second each."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "tls", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    available = [n for n, c in doc["contenders"].items() if c["available"]]
    assert "nginx-tls" in available and "trio-mesh" in available
    for scenario in tls.TLS_SCENARIOS:
        for name in available:
            entry = doc["results"][scenario][name]
            assert entry["requests"] > 0 and entry["errors"] == 0, (scenario, name, entry)
    # A new connection for every request in the handshake scenario (other processes on the
    # host can only add connections).
    for name in available:
        assert doc["results"][tls.HANDSHAKE][name]["connections_per_request"] >= 0.95
    assert "handshakes/s, trio-mesh-tls / nginx-tls" in (out / "table.txt").read_text()
