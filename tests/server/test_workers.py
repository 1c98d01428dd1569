"""``trio-mesh run --workers N``: forked workers sharing listeners through SO_REUSEPORT."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from trio_mesh.config import parse_config
from trio_mesh.workers import Supervisor

CONFIG = (
    "servers: [{listeners: [{name: e, address: '127.0.0.1:0',"
    " filter_chains: [{filters: [{type: echo}]}]}]}]\n"
)


class Proxy:
    """The CLI in a subprocess; its stderr lines are read on a thread into a queue."""

    def __init__(self, tmp_path, *args: str) -> None:
        config = tmp_path / "c.yaml"
        config.write_text(CONFIG)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_mesh.cli", "run", str(config), *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str) -> re.Match:
        while True:
            line = self.lines.get(timeout=20)
            if m := re.search(pattern, line):
                return m

    def children(self) -> set[int]:
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as f:
            return {int(pid) for pid in f.read().split()}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping")
        return s.recv(10)


@pytest.fixture
def two_workers(tmp_path):
    proxy = Proxy(tmp_path, "--workers", "2")
    yield proxy
    proxy.close()


def test_workers_share_the_port_and_serve(two_workers):
    ports = {two_workers.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1) for _ in range(2)}
    assert len(ports) == 1  # port 0 became one port, shared by both workers
    two_workers.wait_for(r"all 2 workers ready")
    port = int(ports.pop())
    assert all(echo(port) == b"ping" for _ in range(20))
    assert len(two_workers.children()) == 2
    two_workers.proc.send_signal(signal.SIGTERM)
    assert two_workers.proc.wait(timeout=20) == 0


def test_a_crashed_worker_is_restarted(two_workers):
    port = int(two_workers.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    two_workers.wait_for(r"all 2 workers ready")
    victim = min(two_workers.children())
    os.kill(victim, signal.SIGKILL)
    two_workers.wait_for(rf"\(pid {victim}\) was killed by SIGKILL; restarting")
    new_pid = int(two_workers.wait_for(r"worker \d started \(pid (\d+)\)").group(1))
    two_workers.wait_for(rf"ready \(pid {new_pid}\)")
    children = two_workers.children()
    assert new_pid in children and victim not in children and len(children) == 2
    assert all(echo(port) == b"ping" for _ in range(20))
    two_workers.proc.send_signal(signal.SIGTERM)
    assert two_workers.proc.wait(timeout=20) == 0


def test_sighup_is_forwarded_and_sigint_stops_all(two_workers):
    two_workers.wait_for(r"all 2 workers ready")
    before = two_workers.children()
    two_workers.proc.send_signal(signal.SIGHUP)
    for _ in range(2):  # each worker says so; none dies of it
        two_workers.wait_for(r"SIGHUP received")
    assert two_workers.children() == before
    two_workers.proc.send_signal(signal.SIGINT)
    two_workers.wait_for(r"all workers stopped")
    assert two_workers.proc.wait(timeout=20) == 0
    for pid in before:
        assert (
            not os.path.exists(f"/proc/{pid}/status") or "Z" in open(f"/proc/{pid}/status").read()
        )


def test_workers_must_be_positive(tmp_path):
    proxy = Proxy(tmp_path, "--workers", "0")
    try:
        assert proxy.proc.wait(timeout=20) == 2
        assert proxy.wait_for(r"--workers must be at least 1")
    finally:
        proxy.close()


def test_a_busy_port_stops_start_up_with_exit_1_before_any_worker(tmp_path):
    """The supervisor binds the listeners its workers inherit: a port in use is found
    there, before any worker starts."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_mesh.cli", "run", str(config), "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert f"listener 'e' cannot listen on 127.0.0.1:{port}: Address already in use" in err
        assert "worker 0 started" not in err
        assert "restarting" not in err
    finally:
        taken.close()
        proc.kill()
        proc.wait()


def test_a_slot_in_back_off_does_not_hold_up_reaping_and_restarting_another(tmp_path):
    """Slot 0 waits 5 s before its restart (a crash loop's back-off); slot 1 dies
    meanwhile and, with its own 0.1 s back-off, is restarted first: the supervisor waits
    for restarts in its poll, it never sleeps through them."""
    config = parse_config(
        {
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "e",
                            "address": "127.0.0.1:0",
                            "filter_chains": [{"filters": [{"type": "echo"}]}],
                        }
                    ]
                }
            ]
        }
    ).config
    starts_r, starts_w = os.pipe()  # each worker writes its slot here as it starts
    die = [os.pipe(), os.pipe()]  # a byte here ends that slot's first worker (exit 1)
    spawned = [0, 0]
    current = [0]

    def serve(_config, ready_fd: int) -> int:
        slot = current[0]
        os.write(starts_w, b"%d" % slot)
        os.write(ready_fd, b"R")
        if spawned[slot] == 1:
            os.read(die[slot][0], 1)
            return 1
        signal.pause()  # a restarted worker lives until the supervisor's SIGTERM
        return 0

    sup = Supervisor(config, 2, serve, lambda _: None)
    spawn = sup._spawn

    def counting_spawn(slot: int) -> None:
        current[0] = slot
        spawned[slot] += 1
        spawn(slot)

    sup._spawn = counting_spawn
    sup.backoff = [5.0, 0.1]
    reaped_0 = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("worker 0 ") and "restarting" in record.getMessage():
                reaped_0.set()

    watch = Watch()
    logging.getLogger("trio_mesh.workers").addHandler(watch)
    starts = bytearray()

    def control() -> None:
        try:
            while len(starts) < 2:
                starts.extend(os.read(starts_r, 2))
            os.write(die[0][1], b"x")
            assert reaped_0.wait(10)
            os.write(die[1][1], b"x")
            while len(starts) < 3:
                starts.extend(os.read(starts_r, 1))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor stops every worker

    thread = threading.Thread(target=control, daemon=True)
    thread.start()
    try:
        assert sup.run() == 0
    finally:
        logging.getLogger("trio_mesh.workers").removeHandler(watch)
        thread.join(10)
        for fd in (starts_r, starts_w, *die[0], *die[1]):
            os.close(fd)
    # Both first workers, then slot 1's restart: before slot 0's, which is 5 s away.
    assert sorted(starts[:2]) == list(b"01") and starts[2:] == b"1"


def test_a_stop_that_lands_between_fork_and_record_still_stops_the_new_worker(monkeypatch):
    """The signal mask holds a SIGTERM back in the supervisor's thread only: delivered to another
    thread of the process, its handler can run between a fork and the child being recorded, and
    the new worker would never be told to stop (the supervisor then waits for it forever)."""
    config = parse_config(
        {
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "x",
                            "address": "127.0.0.1:0",
                            "filter_chains": [{"filters": [{"type": "echo"}]}],
                        }
                    ]
                }
            ]
        }
    ).config

    def serve(_config, ready_fd: int) -> int:
        os.write(ready_fd, b"R")
        signal.pause()  # until told to stop
        return 0

    sup = Supervisor(config, 1, serve, lambda _: None)
    fork = os.fork

    def fork_then_stop() -> int:
        pid = fork()
        if pid:
            sup._on_signal(signal.SIGTERM, None)  # the handler, run right after the fork
        return pid

    rescued = []

    def rescue() -> None:  # never told to stop: end it, so that the test fails, not hangs
        for pid in list(sup.children):
            rescued.append(pid)
            os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(os, "fork", fork_then_stop)
    timer = threading.Timer(10, rescue)
    timer.start()
    try:
        assert sup.run() == 0
    finally:
        timer.cancel()
    assert rescued == []
