"""The admin process's end of the control links: one connection per worker slot.

Workers connect to a unix socket in a private (0700) directory and say hello with their
slot; ``call_all`` asks every connected worker at once and waits at most ``CALL_TIMEOUT``
for each: a worker that does not answer in time is left out of that answer (and logged,
rate-limited), so a stuck worker never stalls a scrape.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio

from ..network.throttled_log import ThrottledLog
from .wire import MAX_ANSWER, LineChannel, WireError

log = logging.getLogger("trio_mesh.admin.hub")

CALL_TIMEOUT = 2.0
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
HELLO_TIMEOUT = 2.0


class WorkerGone(Exception):
    """The worker's link closed (or broke) before it answered."""


class WorkerError(Exception):
    """The worker answered with an error; ``kind``: its exception's class name."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class WorkerConn:
    """One worker's link: requests go out with ids, a reader task routes answers back."""

    def __init__(self, slot: int, pid: int, channel: LineChannel) -> None:
        self.slot = slot
        self.pid = pid
        self.channel = channel
        self._ids = itertools.count()
        #: Calls waiting for their answer; one-slot channels, dropped on timeout.
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.closed = False
        #: A newer link for the same slot took over (a reconnect): closed without a warning.
        self.replaced = False

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        if self.closed:
            raise WorkerGone(f"worker {self.slot} is gone")
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[rid] = send
        try:
            try:
                await self.channel.send({"id": rid, "op": op, "args": args})
                answer = await receive.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                raise WorkerGone(f"worker {self.slot} is gone") from None
        finally:
            self._pending.pop(rid, None)
        if "error" in answer:
            raise WorkerError(f"worker {self.slot}: {answer['error']}", str(answer.get("kind")))
        return answer.get("result")

    async def read_answers(self) -> None:
        """Route answers until the link breaks (``WireError`` says why)."""
        try:
            while True:
                answer = await self.channel.receive()
                rid = answer.get("id")
                if not isinstance(rid, int):  # a broken or hostile peer: not a call of ours
                    raise WireError(f"worker {self.slot}: an answer without an integer id")
                send = self._pending.pop(rid, None)
                if send is not None:  # else: the call timed out already
                    send.send_nowait(answer)
        finally:
            self.closed = True
            for send in self._pending.values():
                send.close()
            self._pending.clear()


class WorkerHub:
    """Accept workers' links on ``sock`` (a listening unix socket) and keep the newest per
    slot. ``workers``: how many slots there are (a hello with another slot is refused)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.conns: dict[int, WorkerConn] = {}
        #: Links accepted but not yet said hello, and links alive: bounded, an abuser
        #: (same user: the directory is private) cannot exhaust descriptors.
        self._slots = trio.Semaphore(2 * workers + 4)
        self._bad = ThrottledLog(log, 5.0)
        self._slow = ThrottledLog(log, 5.0)
        #: Called with each newly connected worker (replays sticky commands to it).
        self.on_hello: list[Any] = []
        #: Set (and replaced) each time a worker links or unlinks.
        self.changed = trio.Event()

    async def serve(
        self, sock: socket.socket, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE and friends: overload, not a reason to die
                    self._bad.log(logging.WARNING, "control socket: accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                if not _same_user(stream.socket):
                    self._bad.log(logging.WARNING, "control link from another user refused")
                    await stream.aclose()
                    continue
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    self._bad.log(logging.WARNING, "too many control links: one refused")
                    await stream.aclose()
                    continue
                nursery.start_soon(self._run_link, stream)

    async def _run_link(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                channel = LineChannel(stream, MAX_ANSWER)
                conn = await self._hello(channel)
                if conn is None:
                    return
                old = self.conns.get(conn.slot)
                if old is not None:
                    old.replaced = True
                    await old.channel.aclose()
                self.conns[conn.slot] = conn
                self._changed()
                log.info("worker %d (pid %d) linked", conn.slot, conn.pid)
                try:
                    async with trio.open_nursery() as nursery:
                        for hook in self.on_hello:
                            nursery.start_soon(hook, conn)
                        try:
                            await conn.read_answers()
                        except (WireError, *_BROKEN) as exc:
                            if not conn.replaced:
                                self._bad.log(
                                    logging.WARNING, "worker %d link closed: %s", conn.slot, exc
                                )
                        nursery.cancel_scope.cancel()
                finally:
                    if self.conns.get(conn.slot) is conn:
                        del self.conns[conn.slot]
                        self._changed()
        finally:
            self._slots.release()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_links(self, done: Callable[[dict[int, WorkerConn]], bool]) -> None:
        """Until ``done(conns)`` holds (checked each time a worker links or unlinks)."""
        while not done(self.conns):
            await self.changed.wait()

    async def wait_all_unlinked(self) -> None:
        await self.wait_links(lambda conns: not conns)

    async def _hello(self, channel: LineChannel) -> WorkerConn | None:
        with trio.move_on_after(HELLO_TIMEOUT):
            try:
                hello = await channel.receive()
            except (WireError, trio.BrokenResourceError) as exc:
                self._bad.log(logging.WARNING, "control link dropped before hello: %s", exc)
                return None
            slot, pid = hello.get("hello"), hello.get("pid")
            if (
                not isinstance(slot, int)
                or not 0 <= slot < self.workers
                or not isinstance(pid, int)
            ):
                self._bad.log(logging.WARNING, "control link refused: bad hello")
                return None
            return WorkerConn(slot, pid, channel)
        self._bad.log(logging.WARNING, "control link refused: no hello in %gs", HELLO_TIMEOUT)
        return None

    async def call_all(self, op: str, args: dict[str, Any] | None = None) -> dict[int, Any]:
        """Every connected worker's answer (or the exception instead), by slot; a worker that
        does not answer within ``CALL_TIMEOUT`` gets ``TimeoutError``."""
        results: dict[int, Any] = {}

        async def one(conn: WorkerConn) -> None:
            with trio.move_on_after(CALL_TIMEOUT):
                try:
                    results[conn.slot] = await conn.call(op, args or {})
                except (WorkerGone, WorkerError) as exc:
                    results[conn.slot] = exc
                return
            results[conn.slot] = TimeoutError(f"worker {conn.slot}: no answer in {CALL_TIMEOUT}s")
            self._slow.log(
                logging.WARNING,
                "worker %d (pid %d) did not answer %r in %gs: left out",
                conn.slot,
                conn.pid,
                op,
                CALL_TIMEOUT,
            )

        async with trio.open_nursery() as nursery:
            for conn in list(self.conns.values()):
                nursery.start_soon(one, conn)
        return dict(sorted(results.items()))


def _same_user(sock: trio.socket.SocketType) -> bool:
    """The peer runs as this user (SO_PEERCRED), on top of the directory's 0700."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())
