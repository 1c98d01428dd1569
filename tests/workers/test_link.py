"""The control link between workers and the admin process, over a real unix socket: the
worker side (``run_worker_link``) against a stub target, the admin side (``WorkerHub``,
``FanOutTarget``), and what a misbehaving peer gets."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_mesh.admin import hub as hub_module
from trio_mesh.admin.fanout import FanOutTarget
from trio_mesh.admin.hub import WorkerHub
from trio_mesh.admin.wire import MAX_ANSWER, LineChannel
from trio_mesh.admin.worker_link import answer, run_worker_link
from trio_mesh.metrics.model import Metric


class StubTarget:
    """What a worker's ``LocalTarget`` answers, with knobs."""

    def __init__(self, requests: int) -> None:
        self.requests = requests
        self.health_failed = False
        self.levels: list[tuple[str | None, str]] = []
        self.stuck = False
        self.state = "LIVE"
        self.changed = trio.Event()  # set (and replaced) by every command

    def _told(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, done: Callable[[], bool]) -> None:
        with trio.fail_after(5):
            while not done():
                await self.changed.wait()

    async def metrics(self) -> list[Metric]:
        if self.stuck:
            await trio.sleep_forever()
        return [
            Metric(
                "http.in.downstream_rq_total",
                "http.downstream_rq_total",
                (),
                "counter",
                self.requests,
            )
        ]

    async def server_info(self) -> dict[str, Any]:
        return {"state": self.state, "health_failed": self.health_failed, "version": "x"}

    async def set_health_failed(self, failed: bool) -> None:
        self.health_failed = failed
        self._told()

    async def set_log_level(self, logger: str | None, level: str) -> None:
        if level not in ("debug", "info"):
            raise ValueError(f"unknown level {level!r}")
        self.levels.append((logger, level))
        self._told()

    async def log_levels(self) -> dict[str, str]:
        return {"trio_mesh": "info"}


@pytest.fixture
async def control(nursery: trio.Nursery) -> AsyncIterator[tuple[str, WorkerHub, FanOutTarget]]:
    """A hub listening in a private directory, as the admin process runs it."""
    directory = tempfile.mkdtemp(prefix="trio-mesh-test-")
    path = os.path.join(directory, "control.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    hub = WorkerHub(2)
    target = FanOutTarget(hub, 2, time.monotonic())
    await nursery.start(hub.serve, sock)
    yield path, hub, target
    os.unlink(path)
    os.rmdir(directory)


async def wait_linked(hub: WorkerHub, slots: set[int]) -> None:
    with trio.fail_after(5):
        await hub.wait_links(lambda conns: set(conns) == slots)


async def test_a_scrape_sums_the_workers_and_commands_reach_each(nursery, control) -> None:
    path, hub, target = control
    workers = [StubTarget(3), StubTarget(4)]
    for slot, worker in enumerate(workers):
        await nursery.start(run_worker_link, path, slot, worker)
    await wait_linked(hub, {0, 1})
    (total,) = await target.metrics()
    assert total.value == 7
    assert (await target.server_info())["state"] == "LIVE"
    await target.set_health_failed(True)
    assert all(w.health_failed for w in workers)
    info = await target.server_info()
    assert info["health_failed"] and [w["state"] for w in info["worker_status"]] == ["LIVE", "LIVE"]
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        await target.set_log_level(None, "loud")
    await target.set_log_level("trio_mesh.proxy", "debug")
    assert all(w.levels == [("trio_mesh.proxy", "debug")] for w in workers)


async def test_a_worker_that_links_later_gets_the_sticky_commands(nursery, control) -> None:
    path, hub, target = control
    first = StubTarget(1)
    await nursery.start(run_worker_link, path, 0, first)
    await wait_linked(hub, {0})
    assert (await target.server_info())["state"] == "PRE_INITIALIZING"  # worker 1 is missing
    await target.set_health_failed(True)
    await target.set_log_level(None, "debug")
    late = StubTarget(1)
    await nursery.start(run_worker_link, path, 1, late)
    await wait_linked(hub, {0, 1})
    await late.until(lambda: late.health_failed and bool(late.levels))
    assert late.levels == [(None, "debug")]
    assert (await target.server_info())["state"] == "LIVE"


async def test_a_stuck_worker_is_left_out_of_the_scrape(
    nursery, control, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(hub_module, "CALL_TIMEOUT", 0.3)
    path, hub, target = control
    stuck = StubTarget(100)
    stuck.stuck = True
    await nursery.start(run_worker_link, path, 0, StubTarget(5))
    await nursery.start(run_worker_link, path, 1, stuck)
    await wait_linked(hub, {0, 1})
    with trio.fail_after(2):
        (total,) = await target.metrics()
    assert total.value == 5
    assert "worker 1" in caplog.text and "did not answer 'metrics'" in caplog.text


async def raw_link(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


@pytest.mark.parametrize(
    "garbage",
    [b"not json\n", b"[1, 2]\n", b"x" * (MAX_ANSWER + 1024 * 1024)],
    ids=["not-json", "not-an-object", "a-line-over-16MiB"],
)
async def test_a_worker_sending_garbage_is_dropped_and_the_hub_serves_on(
    nursery, control, garbage: bytes, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    path, hub, target = control
    await nursery.start(run_worker_link, path, 1, StubTarget(2))
    bad = await raw_link(path)
    channel = LineChannel(bad, 1024)
    await channel.send({"hello": 0, "pid": 1})
    await wait_linked(hub, {0, 1})
    with trio.fail_after(10):
        try:
            await bad.send_all(garbage)
        except trio.BrokenResourceError:
            pass  # dropped while still sending (the long line)
        await hub.wait_links(lambda conns: 0 not in conns)
    assert "worker 0 link closed" in caplog.text
    (total,) = await target.metrics()
    assert total.value == 2
    await bad.aclose()


async def test_bad_hellos_are_refused(nursery, control, monkeypatch) -> None:
    monkeypatch.setattr(hub_module, "HELLO_TIMEOUT", 0.2)
    path, hub, _ = control
    for hello in (b'{"hello": 7, "pid": 1}\n', b'{"hello": "0"}\n', b"", b"{}\n"):
        link = await raw_link(path)
        if hello:
            await link.send_all(hello)
        with trio.fail_after(5):
            assert await link.receive_some(10) == b""  # closed by the hub
        await link.aclose()
    assert hub.conns == {}


async def test_the_worker_side_answers_only_the_target_methods() -> None:
    target = StubTarget(1)
    assert (await answer(target, {"id": 1, "op": "__init__", "args": {}}))["kind"] == "ValueError"
    assert (await answer(target, {"id": 2, "op": "metrics", "args": []}))["error"]
    bad_args = await answer(target, {"id": 3, "op": "set_health_failed", "args": {"x": 1}})
    assert bad_args["kind"] == "TypeError" and bad_args["id"] == 3
    ok = await answer(target, {"id": 4, "op": "metrics"})
    assert ok == {
        "id": 4,
        "result": [
            ["http.in.downstream_rq_total", "http.downstream_rq_total", [], "counter", 1, ""]
        ],
    }


NOBODY = 65534
#: The venv's interpreter lives under /root, which another user cannot enter.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    try:
        s.sendall(b'{"hello": 0, "pid": 1}\\n')
        print("connected", s.recv(10))
    except (ConnectionResetError, BrokenPipeError):  # closed by the hub, unread
        print("connected b''")
"""


def as_nobody(path: str) -> str:
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", CONNECT, path],
        capture_output=True,
        text=True,
        timeout=15,
        preexec_fn=lambda: os.setuid(NOBODY),
        check=True,
    ).stdout.strip()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
async def test_another_user_cannot_reach_the_control_socket(
    nursery, control, tmp_path: Path
) -> None:
    path, _, _ = control
    assert await trio.to_thread.run_sync(as_nobody, path) == "refused"  # the 0700 directory
    # And if the socket were reachable (a world-writable directory), SO_PEERCRED refuses it.
    open_dir = Path(tempfile.mkdtemp(prefix="trio-mesh-open-"))  # pytest's tmp_path is 0700
    try:
        open_dir.chmod(0o777)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(open_dir / "c.sock"))
        os.chmod(open_dir / "c.sock", 0o777)
        sock.listen(4)
        other = WorkerHub(1)
        await nursery.start(other.serve, sock)
        reply = await trio.to_thread.run_sync(as_nobody, str(open_dir / "c.sock"))
        assert reply == "connected b''"  # closed without a word
        assert other.conns == {}
    finally:
        shutil.rmtree(open_dir)


async def test_a_restarted_admin_process_keeps_a_failed_health_check(nursery, control) -> None:
    """The admin process restarted after ``/healthcheck/fail``: a worker that links saying
    so makes every worker failed (a worker restarted meanwhile would pass alone)."""
    path, hub, target = control
    failed, fresh = StubTarget(1), StubTarget(1)
    failed.health_failed = True
    await nursery.start(run_worker_link, path, 1, fresh)
    await wait_linked(hub, {1})
    await nursery.start(run_worker_link, path, 0, failed)
    await fresh.until(lambda: fresh.health_failed)
    assert (await target.server_info())["health_failed"] is True
    await target.set_health_failed(False)  # and an explicit ok still clears it
    assert not failed.health_failed and not fresh.health_failed
