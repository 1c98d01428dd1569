"""systemd keeps its own copy of every socket it passes (LISTEN_FDS) for the next start, so a
drain must close the proxy's descriptor without shutting the socket down: shut down, the port
would refuse for systemd's copy too, and nothing would accept after a restart. The same holds
for a process that took such a socket over in a hot upgrade, and for ``--workers``.

The test plays systemd: it binds the socket, keeps it, and starts ``trio-mesh run`` with it
as descriptor 3 (``LISTEN_PID``: the pid of a small program that execs the proxy)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import write_config
from tests.systemd.helpers import Child, Notify, run_argv
from tests.systemd.test_activation import echo, echo_through, refused

#: Moves our copy to descriptor 3 and execs the proxy (same pid: ``LISTEN_PID``).
EXEC_AS_SYSTEMD = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="ingress")
os.execv(sys.argv[2], sys.argv[2:])
"""
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a short path: unix socket paths end at 107 bytes (pytest's
    ``tmp_path`` for these long test names is longer)."""
    path = Path(tempfile.mkdtemp(prefix="tm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def systemd_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def start_activated(config: Path, sock: socket.socket, notify: Notify, *extra: str) -> Child:
    fd = sock.fileno()
    argv = [sys.executable, "-c", EXEC_AS_SYSTEMD, str(fd), *run_argv(config, *extra)]
    return Child(argv, notify.env(PYTHONPATH=REPO), pass_fds=(fd,))


def still_accepts(sock: socket.socket) -> bool:
    """A client connects on the port and systemd's copy accepts it (what the next start
    would serve): a socket shut down refuses instead."""
    port = sock.getsockname()[1]
    if refused(port):
        return False
    sock.settimeout(5)
    conn, _ = sock.accept()
    conn.close()
    return True


def _config(tmp_path: Path, port: int, name: str = "mesh.yaml") -> Path:
    return write_config(
        tmp_path, {"servers": [{"listeners": [echo("ingress", f"127.0.0.1:{port}")]}]}, name
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_drain_never_shuts_down_a_socket_systemd_passed(
    tmp_path: Path, short: Path, workers: int
) -> None:
    with systemd_socket() as sock:
        config = _config(tmp_path, sock.getsockname()[1])
        notify = Notify(short)
        extra = ("--workers", str(workers)) if workers > 1 else ()
        upgrade = ("--upgrade-socket", str(short / "upgrade.sock"))
        proxy = start_activated(config, sock, notify, *upgrade, *extra)
        try:
            notify.next("READY")
            port = sock.getsockname()[1]
            assert echo_through(port, b"hello") == b"hello"
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.finish() == 0
            assert proxy.text.count("using the socket handed over on") == workers
            assert still_accepts(sock)
        finally:
            proxy.kill()
            notify.close()


def test_a_drain_shuts_down_a_socket_the_proxy_bound(tmp_path: Path, short: Path) -> None:
    """The other side of it: a socket nobody else holds refuses once the drain began."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tmp_path, port)
    notify = Notify(short)
    upgrade = ("--upgrade-socket", str(short / "upgrade.sock"))
    proxy = Child(run_argv(config, *upgrade, "--workers", "2"), notify.env())
    try:
        notify.next("READY")
        assert echo_through(port, b"hello") == b"hello"
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
        assert refused(port)
    finally:
        proxy.kill()
        notify.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_socket_from_systemd_is_handed_over_and_stays_systemds(
    tmp_path: Path, short: Path, workers: int
) -> None:
    """Hot-upgraded from a process systemd started: the new one takes the socket (the old
    one drains without shutting it down), and the new one's own drain later does not shut
    it down either (the mark travels with the socket)."""
    with systemd_socket() as sock:
        port = sock.getsockname()[1]
        config = _config(tmp_path, port)
        notify = Notify(short)
        extra = ("--workers", str(workers)) if workers > 1 else ()
        upgrade = ("--upgrade-socket", str(short / "upgrade.sock"))
        old = start_activated(config, sock, notify, *upgrade, *extra)
        new = None
        try:
            notify.next("READY")
            assert echo_through(port, b"old") == b"old"
            new = Child(run_argv(config, *upgrade, *extra), notify.env())
            assert old.finish() == 0  # it handed over, drained and left
            # Its supervisor logs once all workers are ready; a single process, once ready.
            new.wait_for(re.compile(r"all 2 workers ready" if workers > 1 else r"\S+ ready$"))
            assert new.text.count("using the socket handed over on") == workers
            assert "cannot listen" not in new.text
            assert echo_through(port, b"new") == b"new"
            new.proc.send_signal(signal.SIGTERM)
            assert new.finish() == 0
            assert still_accepts(sock)
        finally:
            old.kill()
            if new is not None:
                new.kill()
            notify.close()
