"""The ``trio-mesh`` command line, run as a real subprocess.

Readiness is read from the proxy's own log lines on stderr (never a sleep); every wait has a
deadline so a broken build fails instead of hanging, and every process is killed in a finally.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_mesh
from tests.cli_helpers import (
    LISTENING,
    READY,
    TIMEOUT,
    is_free,
    proxy,
    run_cli,
    write_config,
)


def listener(name: str, address: str, filt: dict) -> dict:
    return {"name": name, "address": address, "filter_chains": [{"filters": [filt]}]}


def tcp_proxy(cluster: str) -> dict:
    return {"type": "tcp_proxy", "config": {"cluster": cluster}}


ECHO = {"type": "echo"}


def mesh(listeners: list[dict], upstream_port: int) -> dict:
    return {
        "servers": [{"default_log_level": "INFO", "listeners": listeners}],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "lb_type": "LB_ROUNDROBIN",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
    }


def nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(TIMEOUT)
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


@contextlib.contextmanager
def held_port() -> Iterator[tuple[socket.socket, int]]:
    """A listening socket on 127.0.0.1 (kernel-chosen port), held open by the test."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s, s.getsockname()[1]
    finally:
        s.close()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A plain-socket echo server in threads; yields its (already listening) port."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` then EOF to 127.0.0.1:``port``; return everything read until EOF.

    The payload is sent from a thread while this one reads, so no size can deadlock on full
    socket buffers along the way.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        failure: list[BaseException] = []

        def send() -> None:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except BaseException as exc:
                failure.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        sender.join(TIMEOUT)
        assert not sender.is_alive()
        if failure:
            raise failure[0]
    return b"".join(chunks)


# --- version and validate ---------------------------------------------------------------


def test_version_prints_version_and_exits_0():
    result = run_cli("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"trio-mesh {trio_mesh.__version__}\n"
    assert result.stderr == ""


def test_installed_script_matches_module():
    script = Path(sys.executable).with_name("trio-mesh")
    if not script.exists():
        pytest.skip("no trio-mesh script next to this interpreter")
    result = subprocess.run(
        [str(script), "version"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (result.returncode, result.stdout) == (0, f"trio-mesh {trio_mesh.__version__}\n")


def test_no_command_is_a_usage_error():
    result = run_cli()
    assert result.returncode == 2
    assert "usage: trio-mesh" in result.stderr


def test_validate_valid_file_prints_summary(tmp_path):
    doc = mesh(
        [listener("ingress", "127.0.0.1:0", tcp_proxy("up")), listener("e", "127.0.0.1:0", ECHO)],
        upstream_port=9,
    )
    path = write_config(tmp_path, doc)
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: valid: 2 listener(s), 1 cluster(s), 0 warning(s)\n"
    assert result.stderr == ""


def test_validate_shipped_example_config():
    path = Path(__file__).resolve().parents[2] / "conf" / "tcp.yaml"
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: valid: 2 listener(s), 1 cluster(s), 0 warning(s)"
    ]


def test_validate_broken_config_lists_every_error(tmp_path):
    """Bad values and a bad reference together: each is reported, with its path, at once."""
    doc = mesh([listener("ingress", "127.0.0.1:notaport", tcp_proxy("missing"))], upstream_port=9)
    cluster = doc["cluster_manager"]["clusters"][0]
    cluster["lb_type"] = "LB_BOGUS"
    cluster["hosts"][0]["weight"] = 500
    path = write_config(tmp_path, doc)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    *errors, summary = result.stderr.splitlines()
    assert sorted(errors) == sorted(
        [
            "servers[0].listeners[0].address: expected host:port, got '127.0.0.1:notaport'",
            "servers[0].listeners[0].filter_chains[0].filters[0].config.cluster: "
            "unknown cluster 'missing' (defined: up)",
            "cluster_manager.clusters[0].lb_type: expected one of LB_RANDOM, LB_ROUNDROBIN, "
            "LB_WEIGHTED_ROUNDROBIN, LB_LEAST_REQUEST, LB_LEAST_CONNECTION, LB_REQUEST_ROUNDROBIN,"
            " LB_MAGLEV, LB_RING_HASH, LB_ORIGINAL_DST, got 'LB_BOGUS'",
            "cluster_manager.clusters[0].hosts[0].weight: expected a weight from 1 to 128, got 500",
        ]
    )
    assert summary == f"{path}: 4 error(s)"


def test_validate_broken_references_lists_every_error(tmp_path):
    doc = mesh(
        [
            listener("ingress", "127.0.0.1:0", tcp_proxy("missing")),
            listener("ingress", "127.0.0.1:0", ECHO),
        ],
        upstream_port=9,
    )
    path = write_config(tmp_path, doc)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    *errors, summary = result.stderr.splitlines()
    assert sorted(errors) == sorted(
        [
            "servers[0].listeners[1].name: duplicate listener name 'ingress'",
            "servers[0].listeners[0].filter_chains[0].filters[0].config.cluster: "
            "unknown cluster 'missing' (defined: up)",
        ]
    )
    assert summary == f"{path}: 2 error(s)"


def test_validate_unreadable_and_unknown_format(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = run_cli("validate", str(missing))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith(f"{missing}: cannot read: ")

    toml = tmp_path / "mesh.toml"
    toml.write_text("x = 1\n")
    result = run_cli("validate", str(toml))
    assert result.returncode == 1
    assert f"{toml}: unknown config format '.toml' (use .yaml, .yml or .json)" in (
        result.stderr.splitlines()
    )


# --- run: refusals ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invalid_run_config(tmp_path: Path, fixed_port: int) -> Path:
    # Valid field by field (the listener addresses parse), broken in its references.
    doc = mesh(
        [
            listener("ingress", "127.0.0.1:0", tcp_proxy("missing")),
            listener("other", f"127.0.0.1:{fixed_port}", ECHO),
        ],
        upstream_port=9,
    )
    return write_config(tmp_path, doc)


REF_ERROR = (
    "servers[0].listeners[0].filter_chains[0].filters[0].config.cluster: "
    "unknown cluster 'missing' (defined: up)"
)


def test_run_invalid_config_exits_1_without_binding(tmp_path):
    port = free_port()
    path = invalid_run_config(tmp_path, port)
    with proxy(path) as p:
        rc = p.finish()
        assert rc == 1, p.text
        assert p.lines == [REF_ERROR]
        assert is_free(port)
        assert nothing_listens(port)


def test_run_invalid_config_never_tries_to_bind(tmp_path):
    """With the fixed port held by us, a bind attempt would log "Address already in use":
    only the configuration errors may appear."""
    with held_port() as (_, port):
        path = invalid_run_config(tmp_path, port)
        with proxy(path) as p:
            rc = p.finish()
            assert rc == 1, p.text
            assert p.lines == [REF_ERROR]


def test_run_port_in_use_exits_1_naming_listener(tmp_path, echo_server):
    with held_port() as (_, port):
        doc = mesh(
            [
                listener("ingress", "127.0.0.1:0", tcp_proxy("up")),
                listener("taken", f"127.0.0.1:{port}", ECHO),
            ],
            upstream_port=echo_server,
        )
        path = write_config(tmp_path, doc)
        with proxy(path) as p:
            rc = p.finish()
            assert rc == 1, p.text
            errors = [line for line in p.lines if " ERROR " in line]
            assert len(errors) == 1, p.text
            assert errors[0].endswith(
                f"listener 'taken' cannot listen on 127.0.0.1:{port}: Address already in use"
            )
            # Start-up stopped as a whole: nothing was served, no traceback.
            assert not any(LISTENING.search(line) or READY.search(line) for line in p.lines)
            assert "Traceback" not in p.text


def test_run_unknown_log_level_exits_2(tmp_path, echo_server):
    doc = mesh([listener("ingress", "127.0.0.1:0", tcp_proxy("up"))], upstream_port=echo_server)
    path = write_config(tmp_path, doc)
    with proxy(path, "--log-level", "LOUD") as p:
        assert p.finish() == 2
        assert p.lines == ["--log-level: unknown level 'LOUD'"]


# --- run: serving and stopping ----------------------------------------------------------


def serving_config(tmp_path: Path, upstream_port: int) -> Path:
    doc = mesh(
        [
            listener("ingress", "127.0.0.1:0", tcp_proxy("up")),
            listener("echo", "127.0.0.1:0", ECHO),
        ],
        upstream_port=upstream_port,
    )
    return write_config(tmp_path, doc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_run_forwards_then_stops_cleanly_on_signal(tmp_path, echo_server, sig):
    path = serving_config(tmp_path, echo_server)
    with proxy(path) as p:
        ports = p.ready()
        assert set(ports) == {"ingress", "echo"}
        assert all(port != 0 for port in ports.values())
        ingress = ports["ingress"]

        # Through the proxy to the test's echo server, and back.
        assert round_trip(ingress, b"hello through the mesh\n") == b"hello through the mesh\n"
        big = os.urandom(8 << 20)
        assert round_trip(ingress, big) == big
        # The proxy's own echo listener answers too.
        assert round_trip(ports["echo"], b"ping") == b"ping"

        p.proc.send_signal(sig)
        rc = p.finish()
        assert rc == 0, p.text
        assert any(f"{sig.name} received, draining" in line for line in p.lines), p.text
        assert "Traceback" not in p.text
        # Everything it bound is released.
        assert is_free(ingress)
        assert is_free(ports["echo"])


def test_run_log_level_flag_overrides_config(tmp_path, echo_server):
    path = serving_config(tmp_path, echo_server)
    with proxy(path, "--log-level", "DEBUG") as p:
        ports = p.ready()
        assert round_trip(ports["ingress"], b"x") == b"x"
        p.proc.send_signal(signal.SIGTERM)
        assert p.finish() == 0, p.text


def test_run_sigterm_with_connections_open_exits_0(tmp_path, echo_server):
    """Open (idle) client connections do not hold up a stop: SIGTERM cancels them."""
    path = serving_config(tmp_path, echo_server)
    with proxy(path) as p:
        ports = p.ready()
        with contextlib.ExitStack() as stack:
            clients = []
            for port in (ports["ingress"], ports["echo"]):
                s = stack.enter_context(
                    socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                )
                s.sendall(b"still here")
                got = b""
                while len(got) < len(b"still here"):
                    chunk = s.recv(64)
                    assert chunk, "closed before the echo"
                    got += chunk
                assert got == b"still here"
                clients.append(s)

            p.proc.send_signal(signal.SIGTERM)
            assert p.finish() == 0, p.text
            assert "Traceback" not in p.text
            # The proxy's side of each connection is gone with it.
            for s in clients:
                try:
                    assert s.recv(64) == b""
                except ConnectionResetError:
                    pass


def test_run_missing_config_file_exits_1(tmp_path):
    missing = tmp_path / "absent.yaml"
    with proxy(missing) as p:
        assert p.finish() == 1
        assert len(p.lines) == 1, p.text
        assert p.lines[0].startswith(f"{missing}: cannot read: ")


def test_run_with_an_access_log_it_cannot_open_exits_1_before_binding(tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    (tmp_path / "not-a-dir").write_text("a file where a directory should be")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"servers: [{{listeners: [{{name: e, address: '127.0.0.1:{port}',"
        f" access_logs: [{{log_path: '{tmp_path}/not-a-dir/access.log'}}],"
        " filter_chains: [{filters: [{type: echo}]}]}]}]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "listener 'e': cannot open access log" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "listening on" not in proc.stderr
