"""Hot upgrade, end to end: real ``trio-mesh run`` processes on one upgrade socket, clients
keeping requests going across the upgrades."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import LISTENING, TIMEOUT, Proxy, is_free
from tests.http_helpers import free_port
from tests.upgrade.helpers import Load, mesh, start, upstream, write

HANDED = re.compile(r"upgrade: handed (\d+) socket\(s\) to pid (\d+)")
UPGRADED = re.compile(r"upgraded: pid (\d+) took over; draining")
DRAINED = re.compile(r"INFO trio_mesh: drained$", re.MULTILINE)
FAILED = re.compile(r"upgrade by pid (\d+) failed before ready")


needs_nghttp = pytest.mark.skipif(
    shutil.which("nghttp") is None, reason="HTTP/2 load needs nghttp (nghttp2-client)"
)


@pytest.fixture
def up() -> object:
    with upstream() as port:
        yield port


def _get(port: int, path: str = "/x") -> bytes:
    """One HTTP/1.1 GET on 127.0.0.1:port, the whole answer (the server closes). Host is a
    loopback name: the admin API answers no other."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@needs_nghttp
def test_three_upgrades_under_load_lose_no_request(tmp_path: Path, up: int) -> None:
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    processes = [old]
    try:
        port = old.ready()["ingress"]
        with Load(port) as load:
            load.wait_for(50)
            for _ in range(3):
                new = start(config, sock)
                processes.append(new)
                # The new one serves on the old one's port (the same socket), port 0 or not.
                assert new.ready() == {"ingress": port}
                old.wait_for(UPGRADED)
                assert old.finish() == 0, old.text
                assert DRAINED.search(old.text), old.text
                load.wait_for(50)  # the new one answers
                old = new
        assert load.failures == [], load.failures[:10]
        assert load.ok > 200
    finally:
        for p in processes:
            p.kill()


def test_new_listeners_bound_fresh_dropped_ones_closed_after_the_drain(
    tmp_path: Path, up: int
) -> None:
    kept, dropped, added = free_port(), free_port(), free_port()
    first = write(
        tmp_path, mesh(up, {"kept": f"127.0.0.1:{kept}", "dropped": f"127.0.0.1:{dropped}"})
    )
    second = write(
        tmp_path,
        mesh(up, {"kept": f"127.0.0.1:{kept}", "added": f"127.0.0.1:{added}"}),
        "second.yaml",
    )
    sock = tmp_path / "upgrade.sock"
    old = start(first, sock)
    try:
        assert old.ready() == {"kept": kept, "dropped": dropped}
        new = start(second, sock)
        try:
            assert new.ready() == {"kept": kept, "added": added}
            assert old.finish() == 0, old.text
            assert HANDED.search(old.text)[1] == "2"  # type: ignore[index]
            assert b"200 OK" in _get(kept)
            assert b"200 OK" in _get(added)
            # The old process closed the listener the new configuration dropped.
            assert is_free(dropped)
        finally:
            new.kill()
    finally:
        old.kill()


def test_the_new_process_serves_the_socket_for_the_next_upgrade(tmp_path: Path, up: int) -> None:
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    try:
        port = old.ready()["ingress"]
        new = start(config, sock)
        try:
            new.ready()
            assert old.finish() == 0
            # The file is the new process's: the old one left it in place on its way out.
            assert sock.is_socket()
            third = start(config, sock)
            try:
                assert third.ready() == {"ingress": port}
                assert new.finish() == 0, new.text
                third.proc.send_signal(signal.SIGTERM)
                assert third.finish() == 0
            finally:
                third.kill()
        finally:
            new.kill()
    finally:
        old.kill()
    assert not sock.exists()  # the last one removed its socket when it stopped


def test_a_bad_config_fails_before_connecting_and_the_old_one_serves_on(
    tmp_path: Path, up: int
) -> None:
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    bad = write(tmp_path, {"servers": [{"listeners": [{"name": "x"}]}]}, "bad.yaml")
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    try:
        port = old.ready()["ingress"]
        new = start(bad, sock)
        try:
            assert new.finish() == 1
        finally:
            new.kill()
        assert "address" in new.text
        assert "handed" not in "\n".join(old.lines)
        assert b"200 OK" in _get(port)
        assert old.proc.poll() is None
    finally:
        old.kill()


def test_a_new_process_failing_before_ready_leaves_the_old_one_serving(
    tmp_path: Path, up: int
) -> None:
    """It takes the sockets, then cannot bind a listener of its own (a busy port): it exits
    1; the old one still accepts on its copies, and a later upgrade works."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        failing = write(
            tmp_path,
            mesh(up, {"ingress": "127.0.0.1:0", "busy": f"127.0.0.1:{taken}"}),
            "failing.yaml",
        )
        sock = tmp_path / "upgrade.sock"
        old = start(config, sock)
        processes = [old]
        try:
            port = old.ready()["ingress"]
            with Load(port, ("keepalive", "fresh")) as load:
                load.wait_for(20)
                new = start(failing, sock)
                processes.append(new)
                assert new.finish() == 1
                assert "cannot listen" in new.text
                old.wait_for(FAILED)
                load.wait_for(20)
                good = start(config, sock)
                processes.append(good)
                assert good.ready() == {"ingress": port}
                assert old.finish() == 0
                load.wait_for(20)
            assert load.failures == [], load.failures[:10]
        finally:
            for p in processes:
                p.kill()


TAKER = """
import sys, trio
from trio_mesh.config import parse_config
from trio_mesh.upgrade import take_over

async def main():
    taken = await take_over(sys.argv[1], parse_config({}).config, want_config=False)
    print(len(taken.inherited.leftovers()), flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


def test_a_new_process_killed_before_ready_leaves_the_old_one_serving(
    tmp_path: Path, up: int
) -> None:
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    try:
        port = old.ready()["ingress"]
        with Load(port, ("keepalive", "fresh")) as load:
            taker = subprocess.Popen(
                [sys.executable, "-c", TAKER, str(sock)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert taker.stdout is not None
                assert taker.stdout.readline().strip() == "1"  # it holds the socket now
                load.wait_for(20)
                taker.kill()  # before ready
                taker.wait(TIMEOUT)
            finally:
                taker.kill()
                taker.wait(TIMEOUT)
                if taker.stdout is not None:
                    taker.stdout.close()
            old.wait_for(FAILED)
            load.wait_for(20)
        assert load.failures == []
        assert old.proc.poll() is None
    finally:
        old.kill()


def test_disable_upgrade_is_a_plain_start(tmp_path: Path, up: int) -> None:
    port = free_port()
    doc = mesh(up, {"ingress": f"127.0.0.1:{port}"}, disable_upgrade=True)
    config = write(tmp_path, doc)
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    try:
        assert old.ready() == {"ingress": port}
        assert not sock.exists()  # no upgrade socket served
        # A second one neither asks nor inherits: the busy port fails it, as ever.
        new = start(config, sock)
        try:
            assert new.finish() == 1
        finally:
            new.kill()
        assert "cannot listen" in new.text
        assert b"200 OK" in _get(port)
    finally:
        old.kill()


def test_inherit_old_mosnconfig_runs_the_old_configuration(tmp_path: Path, up: int) -> None:
    other = free_port()
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    # Its own file names another listener: with inherit_old_mosnconfig it is not used.
    own = mesh(up, {"other": f"127.0.0.1:{other}"}, inherit_old_mosnconfig=True)
    second = write(tmp_path, own, "second.yaml")
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    try:
        port = old.ready()["ingress"]
        new = start(second, sock)
        try:
            assert new.ready() == {"ingress": port}
            assert "running the old process's configuration" in new.text
            assert old.finish() == 0
            assert is_free(other)
            assert b"200 OK" in _get(port)
        finally:
            new.kill()
    finally:
        old.kill()


def test_a_stale_socket_file_is_a_plain_start(tmp_path: Path, up: int) -> None:
    sock = tmp_path / "upgrade.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listening, then closed: nobody behind it
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    p = start(config, sock)
    try:
        port = p.ready()["ingress"]
        assert b"200 OK" in _get(port)
        assert "handed over" not in p.text
        # It replaced the stale file with its own socket.
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(sock))
    finally:
        p.kill()


ALL_READY = re.compile(r"all \d+ workers ready$")


def _workers_ready(p: object) -> int:
    """Wait until the supervisor says every worker is ready: the listener's port."""
    p.wait_for(ALL_READY)  # type: ignore[attr-defined]
    ports = {int(m["port"]) for line in p.lines if (m := LISTENING.search(line))}  # type: ignore[attr-defined]
    assert len(ports) == 1, ports
    return ports.pop()


@needs_nghttp
def test_workers_three_upgrades_under_load_lose_no_request(tmp_path: Path, up: int) -> None:
    """The supervisor holds the sockets, its workers inherit them; the new supervisor takes
    them, its workers are ready, the old workers drain and the old supervisor exits 0."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock, "--workers", "2")
    processes = [old]
    try:
        port = _workers_ready(old)
        with Load(port) as load:
            load.wait_for(50)
            for _ in range(3):
                new = start(config, sock, "--workers", "2")
                processes.append(new)
                assert _workers_ready(new) == port
                old.wait_for(re.compile(r"upgraded: pid \d+ took over; stopping 2 worker"))
                assert old.finish() == 0, old.text
                load.wait_for(50)
                old = new
        assert load.failures == [], load.failures[:10]
    finally:
        for p in processes:
            p.kill()


def test_workers_a_new_supervisor_failing_before_ready_leaves_the_old_one_serving(
    tmp_path: Path, up: int
) -> None:
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        failing = write(
            tmp_path,
            mesh(up, {"ingress": "127.0.0.1:0", "busy": f"127.0.0.1:{taken}"}),
            "failing.yaml",
        )
        sock = tmp_path / "upgrade.sock"
        old = start(config, sock, "--workers", "2")
        try:
            port = _workers_ready(old)
            new = start(failing, sock, "--workers", "2")
            try:
                assert new.finish() == 1
            finally:
                new.kill()
            assert "cannot listen" in new.text
            old.wait_for(FAILED)
            assert b"200 OK" in _get(port)
            assert old.proc.poll() is None
        finally:
            old.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_admin_port_is_handed_over_too(tmp_path: Path, up: int, workers: int) -> None:
    """The admin listener's socket goes with the others: the new process binds no admin
    port of its own (it would fail: the old one holds it until its drain ends)."""
    admin_port = free_port()
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    config = write(tmp_path, {**mesh(up, {"ingress": "127.0.0.1:0"}), "admin": admin})
    sock = tmp_path / "upgrade.sock"
    extra = ("--workers", str(workers)) if workers > 1 else ()
    ready = _workers_ready if workers > 1 else Proxy.ready
    old = start(config, sock, *extra)
    new = None
    try:
        ready(old)
        new = start(config, sock, *extra)
        ready(new)
        assert old.finish() == 0
        assert "cannot listen" not in new.text
        answer = _get(admin_port, "/ready")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        new.proc.send_signal(signal.SIGTERM)
        assert new.finish() == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()


def test_the_prometheus_sink_port_is_handed_over_too(tmp_path: Path, up: int) -> None:
    """A metrics sink on a fixed port goes with the listeners (bound anew, the new process
    would fail on it: the old one holds it until its drain ends, and the upgrade would fail)."""
    sink_port = free_port()
    metrics = {"sinks": [{"type": "prometheus", "config": {"port": sink_port}}]}
    config = write(tmp_path, {**mesh(up, {"ingress": "127.0.0.1:0"}), "metrics": metrics})
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    new = None
    try:
        Proxy.ready(old)
        new = start(config, sock)
        Proxy.ready(new)
        assert old.finish() == 0
        assert "cannot listen" not in new.text
        answer = _get(sink_port, "/metrics")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"envoy_server_live" in answer or b"server_live" in answer, answer[:300]
        new.proc.send_signal(signal.SIGTERM)
        assert new.finish() == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()


def test_sigterm_to_the_old_process_during_an_upgrade_keeps_the_new_ones_sockets(
    tmp_path: Path, up: int
) -> None:
    """The new process holds the sockets (not ready yet) when the old one is told to stop:
    the old one's drain must not shut down the sockets it handed over (that would stop the
    new process's listeners too, once it says ready nobody accepts)."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    taker = None
    try:
        port = old.ready()["ingress"]
        taker = subprocess.Popen(
            [sys.executable, "-c", TAKER, str(sock)], stdout=subprocess.PIPE, text=True
        )
        assert taker.stdout is not None
        assert taker.stdout.readline().strip() == "1"  # it holds the socket now
        old.proc.send_signal(signal.SIGTERM)
        assert old.finish() == 0
        # The taker's copy still listens: the connection queues for it.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            pass
    finally:
        old.kill()
        if taker is not None:
            taker.kill()
            taker.wait(TIMEOUT)
            if taker.stdout is not None:
                taker.stdout.close()


def test_workers_sigterm_during_an_upgrade_keeps_the_new_ones_sockets(
    tmp_path: Path, up: int
) -> None:
    """The same with ``--workers``: the old workers drain without shutting the sockets
    down while the new supervisor holds them."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock, "--workers", "2")
    taker = None
    try:
        port = _workers_ready(old)
        taker = subprocess.Popen(
            [sys.executable, "-c", TAKER, str(sock)], stdout=subprocess.PIPE, text=True
        )
        assert taker.stdout is not None
        assert taker.stdout.readline().strip() == "1"
        old.proc.send_signal(signal.SIGTERM)
        assert old.finish() == 0, old.text
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            pass
    finally:
        old.kill()
        if taker is not None:
            taker.kill()
            taker.wait(TIMEOUT)
            if taker.stdout is not None:
                taker.stdout.close()


GIVES_UP = """
import json, os, socket, sys, array
listening = socket.create_server(("127.0.0.1", 0))
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print(listening.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.recv(65536)  # hello
host, port = listening.getsockname()
line = json.dumps({"v": 1, "op": "sockets", "listeners": [
    {"name": "ingress", "host": host, "port": port}]}).encode() + b"\\n"
fds = array.array("i", [listening.fileno()])
conn.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
conn.close()  # gave up (as after READY_TIMEOUT): this process serves on
sys.stdin.read()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_process_the_old_one_gave_up_on_does_not_serve_beside_it(
    tmp_path: Path, up: int, workers: int
) -> None:
    """The old process stopped waiting for ``ready`` (its deadline) and serves on: the new
    one (or, with workers, the new supervisor) must not serve beside it for ever (two
    configurations on one port, the old one never exiting); it drains what it accepted and
    exits 1, the old socket left listening."""
    sock = tmp_path / "upgrade.sock"
    old = subprocess.Popen(
        [sys.executable, "-c", GIVES_UP, str(sock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert old.stdout is not None
        port = int(old.stdout.readline())
        config = write(tmp_path, mesh(up, {"ingress": f"127.0.0.1:{port}"}))
        extra = ("--workers", str(workers)) if workers > 1 else ()
        new = start(config, sock, *extra)
        try:
            assert new.finish() == 1, new.text
            assert "after ready" in new.text
            # The old process's socket still listens (not shut down by the new one).
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
                pass
        finally:
            new.kill()
    finally:
        old.kill()
        old.wait(TIMEOUT)
        for f in (old.stdin, old.stdout):
            if f is not None:
                f.close()


def test_sigterm_to_a_new_process_not_live_yet_abandons_the_upgrade(
    tmp_path: Path, up: int
) -> None:
    """The new process waits for xDS to warm (the control plane does not answer): SIGTERM
    (or Ctrl-C) must end it and leave the old one serving, not be ignored until it is LIVE."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock)
    new = None
    try:
        port = old.ready()["ingress"]
        cold = mesh(up, {"ingress": f"127.0.0.1:{port}"})
        cold["xds"] = {"address": f"127.0.0.1:{free_port()}", "node_id": "n"}
        new = start(write(tmp_path, cold, "cold.yaml"), sock)
        old.wait_for(HANDED)
        new.wait_for(re.compile(r"using the socket handed over"))
        new.proc.send_signal(signal.SIGTERM)
        assert new.finish() != 0, new.text
        old.wait_for(FAILED)
        assert b"200 OK" in _get(port)
        assert old.proc.poll() is None
    finally:
        old.kill()
        if new is not None:
            new.kill()


def test_workers_sigterm_to_a_new_supervisor_not_ready_leaves_the_old_one_serving(
    tmp_path: Path, up: int
) -> None:
    """Its workers hold the old supervisor's sockets: their drain must not shut them down."""
    config = write(tmp_path, mesh(up, {"ingress": "127.0.0.1:0"}))
    sock = tmp_path / "upgrade.sock"
    old = start(config, sock, "--workers", "2")
    new = None
    try:
        port = _workers_ready(old)
        cold = mesh(up, {"ingress": f"127.0.0.1:{port}"})
        cold["xds"] = {"address": f"127.0.0.1:{free_port()}", "node_id": "n"}
        new = start(write(tmp_path, cold, "cold.yaml"), sock, "--workers", "2")
        old.wait_for(HANDED)
        new.wait_for(re.compile(r"using the socket handed over"))
        new.proc.send_signal(signal.SIGTERM)
        new.finish()
        old.wait_for(FAILED)
        assert b"200 OK" in _get(port)
        assert old.proc.poll() is None
    finally:
        old.kill()
        if new is not None:
            new.kill()
