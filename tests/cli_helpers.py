"""``trio-mesh`` as a real subprocess, shared by the CLI, server and config tests: its command
line, config files written for it, and ``Proxy``, which reads readiness from the proxy's own log
lines on stderr (never a sleep) under a deadline and always kills the process."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

TIMEOUT = 15.0  # generous: only ever reached when something is broken


CLI = [sys.executable, "-m", "trio_mesh.cli"]


LISTENING = re.compile(r"listener '(?P<name>[^']+)' listening on 127\.0\.0\.1:(?P<port>\d+)$")


READY = re.compile(r"trio-mesh \S+ ready$")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )


def write_config(tmp_path: Path, doc: dict, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def is_free(port: int) -> bool:
    """True if no socket holds 127.0.0.1:``port`` (we can bind it ourselves). SO_REUSEADDR
    so that a closed connection's TIME_WAIT on that port does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class Proxy:
    """``trio-mesh run`` in a subprocess, its stderr read line by line on a thread."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [*CLI, "run", str(config), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        """The first new stderr line matching ``pattern``; fails on timeout or on exit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern.pattern!r} in {timeout}s:\n{self.text}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(TIMEOUT)
                pytest.fail(
                    f"exited ({self.proc.returncode}) before a line matching "
                    f"{pattern.pattern!r}:\n{self.text}"
                )
            self.lines.append(line)
            if m := pattern.search(line):
                return m

    def ready(self) -> dict[str, int]:
        """Wait until the proxy logs ``ready``; return each listener's port by name."""
        ports: dict[str, int] = {}
        while True:
            m = self.wait_for(re.compile(f"{LISTENING.pattern}|{READY.pattern}"))
            if m["name"] is None:
                return ports
            ports[m["name"]] = int(m["port"])

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Wait for exit and collect the rest of stderr; return the exit code."""
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "stderr still open after exit"
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return rc

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)  # EOF once the process is gone
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def proxy(config: Path, *extra: str) -> Iterator[Proxy]:
    p = Proxy(config, *extra)
    try:
        yield p
    finally:
        p.kill()


class LowFdEcho:
    """``trio-mesh run`` of one ``echo`` listener (127.0.0.1:0) in a child allowed
    ``max_fds`` descriptors, its stderr lines read by a thread: for real descriptor
    exhaustion. ``wait_for`` returns the first line matching a pattern (and keeps every line
    read in ``seen``); ``stop`` ends the child (SIGTERM) and returns its exit code."""

    def __init__(self, tmp_path: Path, max_fds: int = 48) -> None:
        config = tmp_path / "echo.yaml"
        config.write_text(
            "servers:\n"
            "  - listeners:\n"
            "      - name: echo\n"
            "        address: 127.0.0.1:0\n"
            "        filter_chains: [{filters: [{type: echo}]}]\n"
        )

        def low_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_mesh.cli", "run", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=low_fd_limit,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        stderr = self.proc.stderr
        assert stderr is not None
        self.reader = threading.Thread(target=lambda: [self.lines.put(x) for x in stderr])
        self.reader.daemon = True
        self.reader.start()
        self.seen: list[str] = []

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}:\n" + "\n".join(self.seen)
                ) from None
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m

    def port(self) -> int:
        return int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        """Gone for sure; then every line it wrote is in ``seen``."""
        self.proc.kill()
        self.proc.wait()
        self.reader.join(10)  # the process is gone: its stderr ends
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
