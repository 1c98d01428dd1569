"""Whole frames onto one stream from many tasks (multiplexed protocols), batched.

One ``send`` per frame was the largest cost of the RPC path (docs/performance.md, "SOFA
bolt"): the frames one upstream read answers, or one client read asks, each took a syscall
and woke the peer once. So frames are queued, and the task that finds no flush under way
becomes the flusher: it lets the tasks already runnable in this scheduler turn queue theirs
(one shielded checkpoint), then sends the whole queue in one ``send`` (more while frames keep
coming). A task joining a flush returns at once; the queue has a byte cap (``limit``; one
frame of any size passes an empty queue), over which a joiner waits: backpressure.

A frame goes out whole or the stream is reset: a flush cancelled or failed part-way (a
request's timeout, say) would leave half a frame that every later frame follows, so then the
stream is aborted and every later send fails; the peer sees a reset, not garbage. Frames a
failed flush did not send are dropped; their senders learn of it through the stream (the
connection's owner closes it and fails what waits on it).

A sender may give a ``deadline`` (trio's clock): the calls of a multiplexed upstream connection
have no cancel scope of their own (their timeouts are one timer per connection), so the two
places a send can wait, for room in the queue or for the socket, take a scope then, only then,
and raise :class:`WriteTimeout` at the deadline (a flush cut short by it resets the stream).

A sender that must not wait (a call completed by another connection's reader, or by its timer:
the RPC fast path) ``post``s its frame instead: queued at once, sent by the flush under way or
by the stream's flusher task (``run_flusher``, one per connection, parked while nothing is
posted). Posted bytes bypass the queue's cap: their owner bounds them (a downstream
connection's responses are owed to its budget; an upstream connection's requests are held in
their downstream connections' budgets until answered).

Bytes a sender owes to a budget (``owed``: a response counted by ``ConnectionBudget.owe``)
are handed to ``on_paid`` once written or dropped, whatever happens, exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from .stream import Stream

_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint

#: Bytes queued behind a flush before joiners wait (a frame of any size passes alone).
QUEUE_LIMIT = 256 * 1024


class WriteTimeout(Exception):
    """A send's ``deadline`` passed while it waited (for room in the queue, or for the socket
    as the flusher: then the stream is reset, as any flush cut short)."""


class FrameWriter:
    __slots__ = (
        "_busy",
        "_frames",
        "_owed",
        "_posted",
        "_queued",
        "_room",
        "_stopping",
        "broken",
        "limit",
        "on_block",
        "on_paid",
        "stream",
    )

    def __init__(self, stream: Stream, limit: int = QUEUE_LIMIT) -> None:
        self.stream = stream
        self.limit = limit
        self.broken = False
        #: Called when a send must wait for the peer to read (the slow path only).
        self.on_block: Callable[[], None] | None = None
        #: Given the owed bytes of frames written (or dropped).
        self.on_paid: Callable[[int], None] | None = None
        self._busy = False  # a flush is under way (its task sends what is queued)
        self._frames: list[bytes | bytearray | memoryview] = []
        self._queued = 0  # bytes in _frames
        self._owed = 0  # owed bytes in _frames
        self._room = trio.lowlevel.ParkingLot()  # joiners waiting for the queue to drain
        self._posted = trio.lowlevel.ParkingLot()  # the flusher, while nothing is posted
        self._stopping = False

    async def send(
        self, data: bytes | bytearray | memoryview, owed: int = 0, deadline: float = math.inf
    ) -> None:
        """Queue ``data`` to go out whole; trio's Broken/ClosedResourceError when the stream
        cannot take it (or was reset because an earlier frame was cut short), `WriteTimeout`
        past ``deadline``. Returns once it is sent or, when another task is flushing, queued
        for that task to send."""
        try:
            if self._busy:
                while self._frames and self._queued + len(data) > self.limit:
                    # cancelled (or timed out) here: nothing of ours queued
                    if deadline == math.inf:
                        await self._room.park()
                    else:
                        with trio.move_on_at(deadline) as scope:
                            await self._room.park()
                        if scope.cancelled_caught:
                            raise WriteTimeout("no room in the queue before the deadline")
                    if not self._busy:
                        break  # the flush ended: we flush ourselves
                else:
                    self._check()
                    self._queue(data, owed)
                    owed = 0
                    return
            self._check()
            self._queue(data, owed)
            owed = 0
        finally:
            if owed and self.on_paid is not None:
                self.on_paid(owed)  # never queued: dropped
        await self._flush(deadline)

    def post(self, data: bytes | bytearray | memoryview, owed: int = 0) -> bool:
        """Queue ``data`` without waiting: the flush under way sends it, or the flusher task
        (``run_flusher``) does. False when the stream is reset (``owed`` is paid back)."""
        if self.broken:
            if owed and self.on_paid is not None:
                self.on_paid(owed)
            return False
        self._queue(data, owed)
        if not self._busy and self._posted:
            self._posted.unpark()
        return True

    async def run_flusher(self) -> None:
        """Send what is ``post``ed, whenever no flush is under way, until ``stop_flusher``
        and nothing is left to send; raises trio's Broken/ClosedResourceError when the stream
        fails (the owner closes the connection)."""
        while True:
            if self._frames and not self._busy:
                await self._flush(math.inf)
            elif self._stopping and not self._busy:
                return
            else:
                await self._posted.park()

    def stop_flusher(self) -> None:
        """The flusher returns once what is queued is sent (nothing more will be posted)."""
        self._stopping = True
        if self._posted:
            self._posted.unpark()

    def _check(self) -> None:
        if self.broken:
            raise trio.BrokenResourceError("an earlier frame was cut short: the stream is reset")

    def _queue(self, data: bytes | bytearray | memoryview, owed: int) -> None:
        self._frames.append(data)
        self._queued += len(data)
        self._owed += owed

    async def _flush(self, deadline: float) -> None:
        self._busy = True
        owed = 0
        try:
            # Frames other tasks write in this turn join ours (no Cancelled here: a frame
            # queued is sent or the stream reset, never silently left).
            await _shielded_checkpoint()
            while self._frames:
                frames = self._frames
                owed = self._owed
                self._frames = []
                self._queued = self._owed = 0
                if self._room:
                    self._room.unpark_all()
                await self._send_all(frames[0] if len(frames) == 1 else b"".join(frames), deadline)
                if owed:
                    owed, paid = 0, owed
                    if self.on_paid is not None:
                        self.on_paid(paid)
        except BaseException:
            self.broken = True
            owed += self._owed
            self._frames = []
            self._queued = self._owed = 0
            if owed and self.on_paid is not None:
                self.on_paid(owed)  # dropped
            raise
        finally:
            self._busy = False
            if self._room:
                self._room.unpark_all()
            if self._posted and (self._frames or self._stopping):
                self._posted.unpark()

    async def _send_all(self, data: bytes | bytearray | memoryview, deadline: float) -> None:
        try:
            await self.stream.send_all_until(data, deadline, self.on_block)
        except trio.TooSlowError:
            raise WriteTimeout("the socket took no more before the deadline") from None
