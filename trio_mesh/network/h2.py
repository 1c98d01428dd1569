"""One HTTP/2 connection at run time: the sans-IO codec, a reader and a writer, and a channel
per stream. Used downstream (server side) and upstream (client side) alike.

- The reader is the only task that feeds the codec; it dispatches each event into its
  stream's ``StreamChannel``. DATA in a channel is bounded by the receive window we advertised
  (the codec fails a peer that sends beyond it) and credit goes back only when the stream's
  task says it passed the bytes on (``consumed``), so a slow reader on the far side slows this
  peer down, stream by stream, without blocking the others; the number of events is bounded
  by ``CHANNEL_EVENTS`` (tiny DATA frames), past which the reader waits.
- The writer is the only task that writes to the socket. Stream tasks queue frames in the
  codec (synchronous calls) and wake it; a cancelled stream task can therefore never leave
  half a frame on the wire. Outbound DATA waits while more than ``HIGH_WATER`` bytes are
  queued for the socket, so a peer that reads slowly bounds what we buffer for it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ..protocols.http2 import (
    Data,
    ErrorCode,
    Event,
    GoAway,
    H2Connection,
    H2ConnectionError,
    Header,
    RemoteSettings,
    RequestHeaders,
    StreamReset,
    WindowOpened,
)
from ..stats import Stats
from .budget import ConnectionBudget
from .stream import Stream
from .throttled_log import ThrottledLog

log = logging.getLogger("trio_mesh.h2")
# a peer decides how often these happen: one line a second at most, for all connections
_error_log = ThrottledLog(log)
_checkpoint = trio.lowlevel.checkpoint
MAX_STREAM_ID = 2**31 - 1
# once reading is over, what is queued (a GOAWAY) gets this long to reach the socket
FLUSH_TIMEOUT = 1.0

READ_SIZE = 65536
# the most bytes decoded between two yields to the scheduler (about 300 tiny frames, 3 ms)
SLICE = 4096
HIGH_WATER = 256 * 1024  # outbound bytes queued for the socket before senders wait
# Reading pauses while more than this waits to be written: DATA never gets there (senders
# stop at HIGH_WATER), so only a peer that makes us answer without reading does (a PING or
# SETTINGS flood, CVE-2019-9512/9515): it stops being read instead of growing our memory.
READ_PAUSE = 1024 * 1024


class StreamGone(Exception):
    """The stream cannot go on: reset by the peer (``code``), or its connection is gone.
    ``refused``: the peer never processed it (REFUSED_STREAM, or above a GOAWAY's last
    stream id), so it is safe to send again elsewhere."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.CANCEL, *, refused: bool = False):
        super().__init__(reason)
        self.code = code
        self.refused = refused


#: A stream's channel holding this many events makes the connection's reader wait until its
#: task took them down to half (backpressure). DATA bytes are bounded by the window we grant,
#: but not the number of frames carrying them: a peer sending 1-byte DATA frames to a stream
#: whose task waits on the other side of the proxy would otherwise queue one event per byte
#: of the window. A real response needs a handful (headers, ~16 KiB DATA frames, trailers).
CHANNEL_EVENTS = 1024


class StreamChannel:
    """The channel of one stream: its events, in order, for the one task that handles it
    (the design's "stream ids map to channels"). Hand-written rather than
    ``trio.open_memory_channel``: one producer (the connection's reader, which must never
    block on one stream) and one consumer, about 25% cheaper per event
    (``python -m bench.stream_channel``, docs/performance.md). Bounded: ``put`` never blocks,
    so the reader checks ``full`` after a read and waits in ``wait_room`` (see
    ``CHANNEL_EVENTS``); the bound is that plus what one read can carry."""

    __slots__ = ("error", "events", "reader", "scope", "task")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.error: StreamGone | None = None
        self.task: trio.lowlevel.Task | None = None
        #: The connection's reader, waiting for this channel to drain (``wait_room``).
        self.reader: trio.lowlevel.Task | None = None
        #: Cancelled when the stream is reset, so that a task blocked elsewhere (on the
        #: other side of the proxy) stops too.
        self.scope: trio.CancelScope | None = None

    def put(self, event: Event) -> None:
        self.events.append(event)
        self._wake()

    @property
    def full(self) -> bool:
        return len(self.events) >= CHANNEL_EVENTS

    def fail(self, error: StreamGone) -> None:
        if self.error is None:
            self.error = error
            if self.scope is not None:
                self.scope.cancel()
            self._wake()
        self.release()

    def release(self) -> None:
        """Nobody will take more from this channel (closed, failed): the reader goes on."""
        reader = self.reader
        if reader is not None:
            self.reader = None
            trio.lowlevel.reschedule(reader)

    async def wait_room(self) -> None:
        """The reader's wait until the stream's task took the channel down to half."""
        self.reader = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)

    async def get(self) -> Event:
        """The next event; ``StreamGone`` once the stream is reset and nothing is left."""
        events = self.events
        while not events:
            if self.error is not None:
                raise self.error
            self.task = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.reader is not None and len(events) <= CHANNEL_EVENTS // 2:
            self.release()
        return events.popleft()


class H2Endpoint:
    """Run with ``await endpoint.run(task_status=...)`` in a nursery that outlives the streams'
    use of it; ``on_request(stream_id, event)`` (server side) starts a stream's task."""

    def __init__(
        self,
        stream: Stream,
        codec: H2Connection,
        *,
        on_request: Callable[[int, RequestHeaders], None] | None = None,
        on_settings: Callable[[], None] | None = None,
        budget: ConnectionBudget | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.stream = stream
        #: Downstream: received DATA not yet passed on counts here (the listener's gauge).
        self.budget = budget
        self._held = 0  # DATA bytes counted in ``budget``
        self.codec = codec
        self.stats = stats  # counts frame floods (``http2_<flood>``), if given
        self.on_request = on_request
        self.on_settings = on_settings  # upstream: the pool learns of capacity changes
        self.channels: dict[int, StreamChannel] = {}
        #: The stream whose channel reached ``CHANNEL_EVENTS`` in the last read (0: none):
        #: the reader waits for it before reading on.
        self._full = 0
        self.dead: StreamGone | None = None  # set once the connection is over
        self.goaway: GoAway | None = None  # received from the peer
        self.draining = False  # we sent GOAWAY: no new streams
        self.streams_changed = trio.lowlevel.ParkingLot()  # a stream ended (drain waits)
        #: The peer's first SETTINGS arrived (or the connection ended): until then its
        #: stream limit is unknown, so a pool does not put streams on it.
        self.settings_seen = trio.Event()
        self._queued = 0  # DATA bytes queued in the codec since the writer last took them
        self._in_flight = 0  # DATA bytes the writer is sending now
        self._writing = 0  # all bytes the writer is sending now
        self._send_lot = trio.lowlevel.ParkingLot()  # senders waiting for window or buffer
        self._writer: trio.lowlevel.Task | None = None
        self._writer_idle = False
        self._stop_writer = False
        self._read_scope = trio.CancelScope()
        self._write_scope = trio.CancelScope()
        #: Upstream: since when no stream is open (0.0: in use, or not yet told by its pool)
        #: and how long it may stay so (its cluster's idle timeout).
        self.idle_since = 0.0
        self.idle_timeout = math.inf

    # ------------------------------------------------------------------ running

    async def run(
        self, prefix: bytes = b"", *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until the connection ends; ``prefix``: bytes already read from it (detection).
        Returns once the writer flushed what was queued (a GOAWAY, say); closes the socket."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                task_status.started()
                with self._read_scope:
                    if prefix:
                        self._receive(prefix)
                    budget = self.budget
                    while self.dead is None:
                        while self.codec.pending_output + self._writing > READ_PAUSE:
                            await self._send_lot.park()
                        if self._full:
                            full = self.channels.get(self._full)
                            self._full = 0
                            if full is not None and full.full and full.error is None:
                                await full.wait_room()
                        if budget is not None and self._held and budget.full:
                            # DATA waits on a slow upstream: the listener's budget bounds it
                            # (the window bounds one connection only), as the RPC readers do.
                            await budget.wait_room_holding(self._holding)
                        try:
                            data = await self.stream.receive_some(READ_SIZE)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            data = b""
                        if not data:
                            self._die(StreamGone("connection closed by peer"))
                            break
                        # receive_some does not yield while data is waiting, and frames that
                        # make no output never stop us: without a checkpoint per slice, a peer
                        # that keeps us busy (small frames, ~10 us each) would starve every
                        # other connection
                        if len(data) <= SLICE:
                            self._receive(data)
                            await _checkpoint()
                            continue
                        view = memoryview(data)
                        while view and self.dead is None:
                            self._receive(view[:SLICE])
                            view = view[SLICE:]
                            await _checkpoint()
                # Reading is over: the writer flushes what is queued (a GOAWAY), then stops,
                # within FLUSH_TIMEOUT (a peer that reads nothing cannot keep us).
                self._stop_writer = True
                self._write_scope.deadline = min(
                    self._write_scope.deadline, trio.current_time() + FLUSH_TIMEOUT
                )
                self._wake_writer()
        finally:
            self._die(StreamGone("connection closed"))
            self.stream.close()
            if self.budget is not None and self._held:
                self.budget.give(self._held)
                self.budget.unreserve(self._held)
                self._held = 0

    def _holding(self) -> int:
        return self._held

    def _receive(self, data: bytes | memoryview) -> None:
        try:
            events = self.codec.receive(data)
        except H2ConnectionError as exc:
            flood = exc.flood
            if flood is not None and self.stats is not None:
                name = "http2_" + flood
                setattr(self.stats, name, getattr(self.stats, name) + 1)
            _error_log.log(
                logging.INFO, "http2 connection error: %s (%s)", exc.reason, exc.code.name
            )
            # What the same read completed before the error still counts (a response that
            # ended just before a bad frame).
            self._dispatch(exc.events)
            self._die(StreamGone(f"connection error: {exc.reason}", exc.code))
            self._wake_writer()
            return
        self._dispatch(events)
        self._wake_writer()

    def _dispatch(self, events: list[Any]) -> None:
        # list[Event], typed Any: each event is dispatched on ``type(event)`` held in a local
        # (cheaper than isinstance chains), which the checker cannot narrow through
        channels = self.channels
        for event in events:
            kind = type(event)
            if kind is WindowOpened:
                self._send_lot.unpark_all()
                continue
            sid = getattr(event, "stream_id", 0)
            if kind is RequestHeaders:
                if self.draining or self.on_request is None:
                    self.codec.reset(sid, ErrorCode.REFUSED_STREAM)
                    continue
                channels[sid] = StreamChannel()
                self.on_request(sid, event)
                continue
            if kind is StreamReset:
                channel = channels.pop(sid, None)
                if channel is not None:
                    refused = event.code == ErrorCode.REFUSED_STREAM
                    channel.fail(StreamGone("stream reset by peer", event.code, refused=refused))
                self._send_lot.unpark_all()
                self.streams_changed.unpark_all()
                continue
            if kind is GoAway:
                self._on_goaway(event)
                continue
            if kind is RemoteSettings:
                self.settings_seen.set()
                self._send_lot.unpark_all()
                if self.on_settings is not None:
                    self.on_settings()
                continue
            channel = channels.get(sid)
            if channel is not None:
                if kind is Data and self.budget is not None:
                    n = event.flow_length
                    self._held += n
                    self.budget.take(n)  # within the window we granted: already here
                    self.budget.admit(n)
                channel.put(event)
                if channel.full:
                    self._full = sid
            elif kind is Data:
                # Nobody reads this stream any more: give the connection its credit back.
                self.codec.consumed(sid, event.flow_length)

    def _on_goaway(self, event: GoAway) -> None:
        self.goaway = event
        if self.on_request is not None:
            return  # a client's GOAWAY refuses server pushes only: nothing of ours to fail
        for sid, channel in list(self.channels.items()):
            if sid > event.last_stream_id:
                del self.channels[sid]
                channel.fail(
                    StreamGone("not processed (GOAWAY)", ErrorCode.REFUSED_STREAM, refused=True)
                )
        if event.code != ErrorCode.NO_ERROR:
            log.info("http2 peer sent GOAWAY %s", event.code.name)
        if self.on_settings is not None:
            self.on_settings()  # the pool stops choosing this connection

    def _die(self, error: StreamGone) -> None:
        if self.dead is None:
            self.dead = error
        self.settings_seen.set()
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel.fail(error)
        self._send_lot.unpark_all()
        self.streams_changed.unpark_all()
        if self.on_settings is not None:
            self.on_settings()

    # ------------------------------------------------------------------ the writer

    def _wake_writer(self) -> None:
        task = self._writer
        if task is not None and self._writer_idle:
            self._writer_idle = False
            trio.lowlevel.reschedule(task)

    async def _write_loop(self) -> None:
        with self._write_scope:
            await self._write()
        # Nothing more will be written: reading on has no use (the peer is told or gone).
        self._read_scope.cancel()

    async def _write(self) -> None:
        self._writer = trio.lowlevel.current_task()
        codec = self.codec
        try:
            while True:
                data = codec.data_to_send()
                if not data:
                    if self._stop_writer or self.dead is not None:
                        return
                    self._writer_idle = True

                    def abort(_: object) -> trio.lowlevel.Abort:
                        self._writer_idle = False
                        return trio.lowlevel.Abort.SUCCEEDED

                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                self._in_flight, self._queued = self._queued, 0
                self._writing = len(data)
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._die(StreamGone("connection lost while writing"))
                    self.stream.close()  # the reader sees it and ends too
                    return
                codec.output_written()
                self._in_flight = self._writing = 0
                self._send_lot.unpark_all()
        finally:
            self._writer = None

    # ------------------------------------------------------------------ streams

    def open_stream(self) -> tuple[int, StreamChannel]:
        """Client side: a new stream's id and channel (send its headers next, synchronously)."""
        if self.dead is not None:
            raise self.dead
        sid = self.codec.new_stream_id()
        channel = self.channels[sid] = StreamChannel()
        return sid, channel

    def _check(self, sid: int) -> None:
        if self.dead is not None:
            raise self.dead
        channel = self.channels.get(sid)
        if channel is None:
            raise StreamGone("stream closed")
        if channel.error is not None:
            raise channel.error

    def send_headers(self, sid: int, headers: list[Header], end_stream: bool = False) -> None:
        self._check(sid)
        self.codec.send_headers(sid, headers, end_stream)
        self._wake_writer()

    def send_trailers(self, sid: int, headers: list[Header]) -> None:
        self._check(sid)
        self.codec.send_trailers(sid, headers)
        self._wake_writer()

    def end_stream(self, sid: int) -> None:
        self._check(sid)
        self.codec.end_stream(sid)
        self._wake_writer()

    async def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` as flow control allows: waits for window and for the socket."""
        codec = self.codec
        view = memoryview(data)
        while True:
            self._check(sid)
            room = codec.sendable(sid) if view else 0
            if view and (room <= 0 or self._queued + self._in_flight >= HIGH_WATER):
                await self._send_lot.park()
                continue
            if not view:
                if end_stream:
                    codec.end_stream(sid)
                    self._wake_writer()
                return
            piece = view[:room]
            view = view[room:]
            codec.send_data(sid, bytes(piece), end_stream and not view)
            self._queued += len(piece)
            self._wake_writer()
            if not view:
                return

    def consumed(self, sid: int, n: int) -> None:
        """``n`` received bytes of ``sid`` were passed on: the peer may send that many more."""
        if n and self.budget is not None:
            self._release(self.budget, n)
        if n and self.dead is None:
            self.codec.consumed(sid, n)
            self._wake_writer()

    def _release(self, budget: ConnectionBudget, n: int) -> None:
        n = min(n, self._held)  # credit of a dropped channel may come back twice
        self._held -= n
        budget.give(n)
        budget.unreserve(n)

    def _drop(self, sid: int, channel: StreamChannel) -> None:
        """The channel of a stream whose task is done: its unread DATA leaves the budget and
        its credit goes back (received DATA counts against the connection window)."""
        n = sum(e.flow_length for e in channel.events if type(e) is Data)
        channel.events.clear()
        if n:
            if self.budget is not None:
                self._release(self.budget, n)
            if self.dead is None:
                self.codec.consumed(sid, n)
                self._wake_writer()

    def reset(self, sid: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        if self.dead is None:
            self.codec.reset(sid, code)
            self._wake_writer()
        self.close_stream(sid)

    def close_stream(self, sid: int) -> None:
        """The stream's task is done with it. A stream still open (the task failed or was
        cancelled halfway) is reset, so that neither side waits for it."""
        channel = self.channels.pop(sid, None)
        if channel is not None:
            channel.scope = None
            channel.release()
            if channel.events:
                self._drop(sid, channel)
        if self.dead is None and self.codec.stream_open(sid):
            # Our side complete (a full response to a request still uploading): NO_ERROR
            # tells the peer to stop sending and keep the response (RFC 9113 section 8.1).
            done = self.codec.stream_ended_locally(sid)
            self.codec.reset(sid, ErrorCode.NO_ERROR if done else ErrorCode.CANCEL)
            self._wake_writer()
        self._send_lot.unpark_all()
        self.streams_changed.unpark_all()
        if self.on_settings is not None:
            self.on_settings()  # a slot on this connection is free again

    # ------------------------------------------------------------------ connection

    @property
    def active_streams(self) -> int:
        return len(self.channels)

    # -- an upstream pool's view (pool/base.py PooledConnection)

    def is_available(self) -> bool:
        """Can take one more stream now: alive, not going away, under the peer's limit."""
        return (
            self.dead is None
            and self.goaway is None
            and not self.draining
            and self.codec.open_outbound_streams < self.codec.remote_max_concurrent_streams
        )

    def has_expired(self, now: float) -> bool:
        """To be dropped: over, or without streams and told to go away or idle too long."""
        if self.dead is not None:
            return True
        if self.channels:
            return False
        if self.goaway is not None:
            return True
        since = self.idle_since
        return since != 0.0 and now - since >= self.idle_timeout

    def is_idle(self) -> bool:
        return not self.channels

    def announce_drain(self) -> None:
        """The first of a graceful shutdown's two GOAWAYs (RFC 9113 6.8): the highest stream
        id, so the client stops opening streams while the ones already on their way are
        still served; ``start_drain`` sends the real one a round trip later."""
        if not self.draining and self.dead is None:
            self.codec.goaway(ErrorCode.NO_ERROR, last_stream_id=MAX_STREAM_ID)
            self._wake_writer()

    def start_drain(self) -> None:
        """Send GOAWAY (NO_ERROR, the last stream we accepted): streams in flight finish,
        the peer opens new ones elsewhere."""
        if not self.draining and self.dead is None:
            self.draining = True
            self.codec.goaway(ErrorCode.NO_ERROR)
            self._wake_writer()

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """End the connection now: GOAWAY flushed if the socket takes it within a second,
        then closed (``run`` returns)."""
        if self.dead is None:
            if not self.draining or code != ErrorCode.NO_ERROR:
                self.codec.goaway(code)
            self._die(StreamGone("connection closed"))
        self._stop_writer = True
        self._write_scope.deadline = min(self._write_scope.deadline, trio.current_time() + 1.0)
        self._wake_writer()
