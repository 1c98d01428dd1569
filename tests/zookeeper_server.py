"""A real ZooKeeper (Debian's ``zookeeper`` package) for the registry tests.

Started on a free loopback port with its own data directory; ready once it answers ``ruok``
with ``imok`` (polled with a bounded deadline: no sleeps for readiness). It can be stopped and
started again on the same port and data directory, so its sessions and persistent nodes
survive, as a restarted ensemble's do. Each server runs in its own process group, killed by
the fixtures' finalizers (and at exit, should a finalizer not run): no JVM outlives the run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.http_helpers import free_port

JAVA = shutil.which("java")
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
ZOOKEEPER_CONF = Path("/etc/zookeeper/conf")  # log4j.properties (the classpath's first entry)
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

MISSING = (
    "java is not installed"
    if JAVA is None
    else None
    if ZOOKEEPER_JAR.exists()
    else f"the zookeeper package is not installed ({ZOOKEEPER_JAR} is missing)"
)
needs_zookeeper = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

_RUNNING: set[ZooKeeper] = set()


class ZooKeeper:
    """One standalone ZooKeeper server on ``127.0.0.1:port`` (``address``)."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = self.dir / "zookeeper.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.dir / "zoo.cfg"
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    "tickTime=500",
                    f"dataDir={self.dir / 'data'}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr",
                    # the session timeouts a client may ask for (tests ask for short ones)
                    "minSessionTimeout=1000",
                    "maxSessionTimeout=60000",
                    "",
                ]
            )
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ruok(self) -> bool:
        """One ``ruok`` four-letter command: True when the server answers ``imok``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"ruok")
                s.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := s.recv(16):
                    answer += chunk
                return answer == b"imok"
        except OSError:
            return False

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server (blocking: call it from a thread in a Trio test, or use
        ``astart``) and wait until it answers ``ruok``."""
        assert JAVA is not None and not self.running
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    JAVA,
                    f"-Dzookeeper.log.dir={self.dir / 'log'}",
                    "-Dzookeeper.root.logger=INFO,CONSOLE",
                    "-Xmx256m",
                    "-cp",
                    f"{ZOOKEEPER_CONF}:{ZOOKEEPER_JAR}",
                    MAIN,
                    str(self.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while not self.ruok():
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"zookeeper exited at start-up:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"zookeeper not ready within {timeout}s:\n{self._tail()}")
            time.sleep(0.05)  # a poll interval, not a readiness wait

    def stop(self) -> None:
        """Kill the server's process group (SIGKILL: a crash, the worst case for clients)."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    async def astart(self, *, timeout: float = 60.0) -> None:
        await trio.to_thread.run_sync(lambda: self.start(timeout=timeout))

    async def astop(self) -> None:
        await trio.to_thread.run_sync(self.stop)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop()


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    """One ZooKeeper for the session's tests that leave it running (use distinct paths)."""
    if MISSING is not None:
        pytest.skip(MISSING)
    server = ZooKeeper(tmp_path_factory.mktemp("zookeeper"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def zookeeper_factory(tmp_path: Path) -> Iterator[Callable[[], Awaitable[ZooKeeper]]]:
    """Makes ZooKeepers a test owns (to stop and restart them): ``await make()`` starts one
    (in a thread: the event loop keeps running); they are killed after the test."""
    if MISSING is not None:
        pytest.skip(MISSING)
    servers: list[ZooKeeper] = []

    async def make() -> ZooKeeper:
        server = ZooKeeper(tmp_path / f"zookeeper{len(servers)}")
        servers.append(server)
        await server.astart()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
