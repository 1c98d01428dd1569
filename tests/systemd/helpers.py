"""A datagram socket standing in for systemd's NOTIFY_SOCKET, and ``trio-mesh run`` started
with any command line and environment (``systemd-socket-activate``, ``--workers``)."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

import attrs
import pytest

from tests.cli_helpers import CLI, TIMEOUT, Proxy


@attrs.frozen
class Message:
    at: float  # time.monotonic() when it arrived
    raw: bytes
    fields: dict[str, str]


class Notify:
    """Binds ``NOTIFY_SOCKET`` in ``tmp_path``; ``next(key)`` is the next message with that
    field (every message read is kept in ``messages``, the WATCHDOG=1 pings too)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[Message] = []
        self._unread: list[Message] = []

    def env(self, **more: str) -> dict[str, str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LISTEN_", "WATCHDOG_")) and k != "NOTIFY_SOCKET"
        }
        return {**clean, "NOTIFY_SOCKET": self.path, **more}

    def recv(self, timeout: float = TIMEOUT) -> Message | None:
        self.sock.settimeout(timeout)
        try:
            raw = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in raw.decode().split("\n") if line)
        message = Message(time.monotonic(), raw, fields)
        self.messages.append(message)
        return message

    def next(self, key: str, timeout: float = TIMEOUT) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            message = self.recv(max(remaining, 0.001)) if remaining > 0 else None
            if message is None:
                pytest.fail(f"no {key} in {timeout}s; got {[m.raw for m in self.messages]}")
            if key in message.fields:
                return message

    def pings_during(self, seconds: float) -> list[float]:
        """The arrival times of the WATCHDOG=1 received in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        pings = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.recv(remaining)
            if message is not None and "WATCHDOG" in message.fields:
                pings.append(message.at)
        return pings

    def close(self) -> None:
        self.sock.close()


class Child(Proxy):
    """``Proxy``'s line reading and waiting, for any command line and environment."""

    def __init__(
        self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            pass_fds=pass_fds,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def run_argv(config: Path, *extra: str) -> list[str]:
    return [*CLI, "run", str(config), *extra]
