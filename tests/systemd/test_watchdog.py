"""The watchdog task embedded in a nursery: WATCHDOG=1 every half interval, none while the
event loop is blocked, none while a listener's accept loop is stuck (the loop itself alive)."""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import time

import trio

from trio_mesh import Server
from trio_mesh.config import parse_config
from trio_mesh.network import listener as listener_module
from trio_mesh.network.inherit import InheritedSockets
from trio_mesh.systemd import run_watchdog

INTERVAL = 0.6  # pings every 0.3 s
PERIOD = INTERVAL / 2


def echo_config(*names: str):
    listeners = [
        {"name": n, "address": "127.0.0.1:0", "filter_chains": [{"filters": [{"type": "echo"}]}]}
        for n in names
    ]
    return parse_config({"servers": [{"listeners": listeners}]}).config


class Pings:
    def __init__(self) -> None:
        self.times: list[float] = []
        self._changed = trio.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self._changed.set()
        self._changed = trio.Event()

    async def wait_count(self, n: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(self.times) < n:
                await self._changed.wait()


async def test_pings_at_half_the_interval_and_none_while_the_loop_is_blocked(caplog):
    pings = Pings()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(echo_config("e")).run)
        await nursery.start(run_watchdog, server, INTERVAL, pings)
        await pings.wait_count(5)
        gaps = [b - a for a, b in itertools.pairwise(pings.times)]
        assert all(PERIOD * 0.8 <= g <= PERIOD * 1.6 for g in gaps), gaps
        before = len(pings.times)
        blocked_at = time.monotonic()
        time.sleep(4 * PERIOD)  # the event loop blocked: what a wedged proxy looks like
        unblocked = time.monotonic()
        await pings.wait_count(before + 2)
        nursery.cancel_scope.cancel()
    assert not [t for t in pings.times if blocked_at <= t <= unblocked]
    # The tick that finds the loop was blocked sends nothing: the next ping is a period on.
    first_after = pings.times[before]
    assert first_after - pings.times[before - 1] >= 4 * PERIOD + PERIOD * 0.9
    assert "watchdog: the event loop was blocked" in caplog.text


class CannotAccept(socket.socket):
    """A listening socket whose accept fails, once a connection is there, as if the process
    had no descriptors left."""

    def accept(self):  # type: ignore[override]
        client, _ = super().accept()  # BlockingIOError while nobody connects
        client.close()
        raise OSError(errno.EMFILE, "Too many open files")


async def test_no_ping_while_an_accept_loop_is_stuck_though_the_loop_runs(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="trio_mesh.systemd")
    # Its back-off now outlasts the test: the accept loop neither goes round nor waits.
    monkeypatch.setattr(listener_module, "ACCEPT_BACKOFF", 60.0)
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen()
    stuck_sock = CannotAccept(fileno=raw.detach())
    inherited = InheritedSockets.of([("stuck", stuck_sock)])
    pings = Pings()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(echo_config("stuck", "fine"), inherited=inherited).run)
        assert server.listeners["stuck"].sock is stuck_sock
        await nursery.start(run_watchdog, server, INTERVAL, pings)
        await pings.wait_count(3)  # idle listeners wait in accept: alive
        client = trio.socket.socket()
        await client.connect(server.addresses["stuck"])
        connected = time.monotonic()
        await trio.sleep(4 * PERIOD)
        late = [t for t in pings.times if t > connected + PERIOD * 1.5]
        # The loop itself is fine: the other listener still serves.
        stream = await trio.open_tcp_stream(*server.addresses["fine"])
        async with stream:
            await stream.send_all(b"ping")
            assert await stream.receive_some(10) == b"ping"
        client.close()
        nursery.cancel_scope.cancel()
    assert late == []
    assert "listener(s) 'stuck' made no accept progress" in caplog.text


async def test_a_draining_listener_does_not_stop_the_pings():
    pings = Pings()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(echo_config("e")).run)
        await nursery.start(run_watchdog, server, INTERVAL, pings)
        server.drain_listeners(graceful=True)
        count = len(pings.times)
        await pings.wait_count(count + 3)
        nursery.cancel_scope.cancel()


async def test_the_ping_runs_in_the_event_loop_thread():
    """Never from a thread: a thread would keep pinging for a wedged loop."""
    import threading

    threads = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(echo_config("e")).run)
        done = trio.Event()

        def ping() -> None:
            threads.append(threading.get_ident())
            if len(threads) == 2:
                done.set()

        await nursery.start(run_watchdog, server, INTERVAL, ping)
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert set(threads) == {threading.get_ident()}


class OutOfDescriptors(socket.socket):
    """A listening socket whose every accept fails with EMFILE: a busy proxy out of fds."""

    def accept(self):  # type: ignore[override]
        raise OSError(errno.EMFILE, "Too many open files")


async def test_an_accept_loop_backing_off_for_long_still_pings(caplog):
    # Out of descriptors for longer than the interval, with the real back-off: the accept loop
    # goes round every ACCEPT_BACKOFF (healthy, only overloaded): systemd must not kill it.
    assert listener_module.ACCEPT_BACKOFF < PERIOD / 2
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen()
    busy = OutOfDescriptors(fileno=raw.detach())
    inherited = InheritedSockets.of([("busy", busy)])
    pings = Pings()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(Server(echo_config("busy"), inherited=inherited).run)
        await nursery.start(run_watchdog, server, INTERVAL, pings)
        await pings.wait_count(6)
        errors = server.listeners["busy"].stats.downstream_accept_error
        nursery.cancel_scope.cancel()
    assert errors >= 10  # it really was backing off the whole time
    gaps = [b - a for a, b in itertools.pairwise(pings.times)]
    assert all(g <= PERIOD * 1.6 for g in gaps), gaps
    assert "made no accept progress" not in caplog.text
