"""Socket activation with the real ``systemd-socket-activate``: the listener named by
``--fdname`` (or whose address matches) serves on the socket systemd's stand-in bound; a
socket nobody takes is named in a warning and closed; with ``--workers`` every worker serves
on the sockets the supervisor received."""

from __future__ import annotations

import re
import shutil
import signal
import socket
from pathlib import Path

import pytest

from tests.cli_helpers import write_config
from tests.http_helpers import free_port
from tests.systemd.helpers import Child, Notify, run_argv

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")
REPO = str(Path(__file__).resolve().parents[2])


def echo(name: str, address: str) -> dict:
    return {"name": name, "address": address, "filter_chains": [{"filters": [{"type": "echo"}]}]}


def activate(
    config: Path, ports: list[int], notify: Notify, *extra: str, fdnames: str | None = None
) -> Child:
    argv = [str(ACTIVATE)]
    for port in ports:
        argv += ["-l", f"127.0.0.1:{port}"]
    if fdnames is not None:
        argv.append(f"--fdname={fdnames}")
    # systemd-socket-activate gives the child only the variables named here.
    argv += ["-E", f"NOTIFY_SOCKET={notify.path}", "-E", f"PYTHONPATH={REPO}"]
    child = Child([*argv, *run_argv(config, *extra)], notify.env())
    for port in ports:
        child.wait_for(re.compile(rf"Listening on 127\.0\.0\.1:{port} as \d+\.$"))
    return child


def echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        return c.recv(100)


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_listener_takes_its_socket_by_name_and_one_nobody_takes_is_closed(tmp_path):
    config = write_config(
        tmp_path,
        {
            "servers": [
                {"listeners": [echo("ingress", "127.0.0.1:0"), echo("other", "127.0.0.1:0")]}
            ]
        },
    )
    port, unused = free_port(), free_port()
    notify = Notify(tmp_path)
    proxy = activate(config, [port, unused], notify, fdnames="ingress:nobody")
    try:
        # The first connection starts the proxy (it waits in the backlog meanwhile).
        assert echo_through(port, b"hello") == b"hello"
        ready = notify.next("READY")
        assert ready.fields["STATUS"] == f"serving 2 listener(s) from {config}"
        proxy.wait_for(
            re.compile(rf"listener 'ingress': using the socket handed over on 127\.0\.0\.1:{port}$")
        )
        proxy.wait_for(
            re.compile(
                rf"inherited socket 'nobody' \(127\.0\.0\.1:{unused}\) matches no listener: closed$"
            )
        )
        assert refused(unused)
        assert echo_through(port, b"again") == b"again"
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
        # The listener drained and closed its copy; nothing else holds the port now.
        assert refused(port)
    finally:
        proxy.kill()
        notify.close()


def test_an_unnamed_socket_is_taken_by_the_listener_on_its_address(tmp_path):
    port = free_port()
    config = write_config(
        tmp_path,
        {"servers": [{"listeners": [echo("a", f"127.0.0.1:{port}"), echo("b", "127.0.0.1:0")]}]},
    )
    notify = Notify(tmp_path)
    proxy = activate(config, [port], notify)  # no --fdname: matched by address
    try:
        assert echo_through(port, b"hello") == b"hello"
        notify.next("READY")
        proxy.wait_for(re.compile(r"listener 'a': using the socket handed over on "))
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
        assert "cannot listen" not in proxy.text  # bound nothing itself: no EADDRINUSE
    finally:
        proxy.kill()
        notify.close()


def test_workers_all_serve_on_the_activated_socket(tmp_path):
    config = write_config(tmp_path, {"servers": [{"listeners": [echo("ingress", "127.0.0.1:0")]}]})
    port, unused = free_port(), free_port()
    notify = Notify(tmp_path)
    proxy = activate(config, [port, unused], notify, "--workers", "2", fdnames="ingress:spare")
    try:
        assert echo_through(port, b"first") == b"first"
        ready = notify.next("READY")
        assert ready.fields["STATUS"] == f"serving 1 listener(s) from {config}, 2 workers"
        for _ in range(2):  # each worker takes the socket it inherited from the supervisor
            proxy.wait_for(re.compile(r"listener 'ingress': using the socket handed over on "))
        # The supervisor closed it, before forking the workers.
        assert re.search(
            rf"inherited socket 'spare' \(127\.0\.0\.1:{unused}\) matches no listener", proxy.text
        )
        assert refused(unused)
        for i in range(20):
            assert echo_through(port, b"x%d" % i) == b"x%d" % i
        pids = {int(m) for m in re.findall(r"worker \d started \(pid (\d+)\)", proxy.text)}
        assert len(pids) == 2
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
        assert refused(port)
    finally:
        proxy.kill()
        notify.close()


def test_a_datagram_socket_for_a_listener_is_refused_by_name(tmp_path):
    config = write_config(tmp_path, {"servers": [{"listeners": [echo("ingress", "127.0.0.1:0")]}]})
    port = free_port()
    notify = Notify(tmp_path)
    argv = [str(ACTIVATE), "-d", "-l", f"127.0.0.1:{port}", "--fdname=ingress"]
    argv += ["-E", f"PYTHONPATH={REPO}"]
    proxy = Child([*argv, *run_argv(config)], notify.env())
    try:
        proxy.wait_for(re.compile(rf"Listening on 127\.0\.0\.1:{port} as \d+\.$"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d:
            d.sendto(b"start", ("127.0.0.1", port))
        assert proxy.finish() == 1
        assert (
            "listener 'ingress': the socket handed over for it is not a listening TCP socket"
            in proxy.text
        )
    finally:
        proxy.kill()
        notify.close()


def shell_activation(config: Path, env_line: str) -> list[str]:
    """``LISTEN_*`` set by a shell that then becomes the proxy (same pid), fd 3 /dev/null."""
    script = f'{env_line} exec "$@" 3</dev/null'
    return ["sh", "-c", script, "sh", *run_argv(config)]


def test_a_descriptor_that_is_not_a_socket_stops_start_up(tmp_path):
    config = write_config(tmp_path, {"servers": [{"listeners": [echo("e", "127.0.0.1:0")]}]})
    notify = Notify(tmp_path)
    proxy = Child(shell_activation(config, "LISTEN_PID=$$ LISTEN_FDS=1"), notify.env())
    try:
        assert proxy.finish() == 1
        assert "LISTEN_FDS: descriptor 3 (unnamed) is not a usable socket" in proxy.text
        assert notify.recv(timeout=0.01) is None  # never READY
    finally:
        proxy.kill()
        notify.close()


def test_names_that_do_not_match_the_count_stop_start_up(tmp_path):
    config = write_config(tmp_path, {"servers": [{"listeners": [echo("e", "127.0.0.1:0")]}]})
    notify = Notify(tmp_path)
    line = "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b"
    proxy = Child(shell_activation(config, line), notify.env())
    try:
        assert proxy.finish() == 1
        assert "LISTEN_FDNAMES: 2 name(s) for LISTEN_FDS=1" in proxy.text
    finally:
        proxy.kill()
        notify.close()


def test_sockets_meant_for_another_process_are_ignored(tmp_path):
    """LISTEN_PID names another process (a parent that did not clean up): a normal start."""
    config = write_config(tmp_path, {"servers": [{"listeners": [echo("e", "127.0.0.1:0")]}]})
    notify = Notify(tmp_path)
    proxy = Child(shell_activation(config, "LISTEN_PID=1 LISTEN_FDS=1"), notify.env())
    try:
        notify.next("READY")
        assert "handed over" not in proxy.text
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.finish() == 0
    finally:
        proxy.kill()
        notify.close()
