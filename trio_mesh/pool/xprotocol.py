"""Multiplexed RPC upstream pool (bolt, Dubbo, any registered codec): few connections per
(cluster, host, codec), many requests in flight on each, matched to responses by request id.

Each upstream connection has its own request-id space: a request's id is rewritten to a free id
of that connection on the way out (the caller restores the downstream id on the response), so
ids from many downstream connections never collide. One reader task per connection, in its
cluster's nursery (pool/cluster.py), decodes responses and hands each to the waiting request's
slot (one frame: the bound). A lost connection fails only the requests in flight on it. An
idle connection is kept alive with protocol heartbeats and closed when one goes unanswered.
An upstream that announces its shutdown (Dubbo READONLY event, bolt GoAway) drains its
connection: nothing new is sent on it (the pool opens or picks another), the calls in flight
finish, then it is closed.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable

import trio

from ..config.filter_configs import XProtocolOptions
from ..network.relay import CHUNK
from ..network.stream import Stream
from ..network.throttled_log import ThrottledLog
from ..network.writer import FrameWriter, WriteTimeout
from ..protocols.xprotocol import Codec, Frame, XProtocolError
from ..upstream.cluster import Cluster
from ..upstream.host import Host
from .base import ConnectionPool, NurseryOwner

log = logging.getLogger("trio_mesh.pool")
_drain_log = ThrottledLog(log)  # upstreams decide how often they go away
_DRAINED = "drained: the upstream announced its shutdown"


class UpstreamLost(Exception):
    """The upstream connection closed or broke before the response came."""


_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_ABORTED = trio.lowlevel.Abort.SUCCEEDED


class _Slot:
    """Where the reader puts one request's response, waking the task waiting for it: the
    task itself is parked, not an Event (its ParkingLot) made per call. A call with a
    timeout also sits in its connection's timer queue (``_Timer``) until its deadline. A call
    started without a task (``XConnection.start_call``) has a ``callback`` instead, called
    once, by whichever completes it (the reader, the timer, the connection's close)."""

    __slots__ = ("callback", "deadline", "done", "expired", "frame", "queue", "rid", "task", "then")

    def __init__(self, deadline: float = math.inf) -> None:
        self.frame: Frame | None = None
        self.done = False  # answered, timed out, or its connection lost (frame None)
        self.expired = False  # its deadline passed first
        self.deadline = deadline
        self.task: trio.lowlevel.Task | None = None  # parked in ``wait`` (until woken)
        self.callback: Callable[[_Slot], None] | None = None
        # A call started without a task: its id, its timer queue, what completes it.
        self.rid = 0
        self.queue: deque[_Slot] | None = None
        self.then: Callable[[Frame | None, bool], None] | None = None

    def set(self) -> None:
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            _reschedule(task)
        elif self.callback is not None:
            callback, self.callback = self.callback, None
            callback(self)

    async def wait(self) -> None:
        """Until ``set`` (cancellable: the caller's scope, if any)."""
        if self.done:
            await trio.lowlevel.checkpoint()  # a checkpoint, as Event.wait is
            return
        self.task = _current_task()
        await _wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None
        return _ABORTED


class _Timer:
    """The timeouts of one connection's calls, without a cancel scope per call: the calls of a
    route share its timeout, so their deadlines arrive in the order they were made. One
    deque per timeout value, in deadline order; one task sleeps until the earliest head and
    wakes what expired (``_Slot.expired``). Answered calls leave their deque's head as they
    finish (answers mostly come in order); a deque that still grows past twice the calls in
    flight is compacted, so its length stays bounded by them."""

    __slots__ = ("_pending", "_queues", "_scope", "_wake_at")

    def __init__(self, pending: dict[int, _Slot]) -> None:
        self._pending = pending  # the connection's calls in flight (the compaction bound)
        self._queues: dict[float, deque[_Slot]] = {}
        self._wake_at = math.inf
        self._scope = trio.CancelScope()  # the sleep now under way (or about to be)

    def add(self, slot: _Slot, timeout: float) -> deque[_Slot]:
        """Track ``slot`` (its deadline set) under its call's ``timeout``; its deque."""
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        deadline = slot.deadline
        if queue and deadline < queue[-1].deadline:
            self._insert(queue, slot)  # a call that waited for a connection: rare
        else:
            queue.append(slot)
            if len(queue) > 64 and len(queue) > 2 * len(self._pending):
                live = [s for s in queue if not s.done]
                queue.clear()
                queue.extend(live)
        if deadline < self._wake_at:
            self._wake_at = deadline
            self._scope.deadline = deadline
        return queue

    @staticmethod
    def _insert(queue: deque[_Slot], slot: _Slot) -> None:
        i = len(queue)
        while i and queue[i - 1].deadline > slot.deadline:
            i -= 1
        queue.insert(i, slot)

    async def run(self) -> None:
        while True:
            with self._scope:
                await trio.sleep_forever()
            # The deadline passed: a new scope for the next sleep (one per wake-up, which
            # comes about once per timeout period while calls are answered in time).
            self._scope = trio.CancelScope()
            self._wake_at = math.inf
            self._expire(trio.current_time())

    def _expire(self, now: float) -> None:
        nearest = math.inf
        for timeout, queue in list(self._queues.items()):
            while queue:
                slot = queue[0]
                if slot.done:
                    queue.popleft()
                elif slot.deadline <= now:
                    queue.popleft()
                    slot.expired = True
                    slot.set()
                else:
                    break
            if queue:
                nearest = min(nearest, queue[0].deadline)
            else:
                del self._queues[timeout]
        if nearest < self._wake_at:
            self._wake_at = nearest
            self._scope.deadline = nearest


class XConnection:
    """One multiplexed upstream connection."""

    def __init__(self, stream: Stream, codec: Codec, options: XProtocolOptions) -> None:
        self.stream = stream
        self.codec = codec
        self.options = options
        self.pending: dict[int, _Slot] = {}
        self._timer = _Timer(self.pending)
        self._id_space = 1 << codec.request_id_bits
        self._next_id = random.randrange(1, self._id_space)
        self._writer = FrameWriter(stream)  # frames go out whole, one at a time
        self.dead: str | None = None
        #: Takes new calls: neither closed nor draining (what ``XPool.ready`` reads).
        self.accepting = True
        self.draining = False  # its upstream announced its shutdown
        self.last_read = time.monotonic()
        self.running = False  # its reader task has begun (the pool's cleanup is its own)

    def allocate_id(self) -> int:
        """A request id free on this connection (never 0: some peers treat it specially)."""
        space = self._id_space
        rid = self._next_id
        while rid in self.pending or rid == 0:
            rid = (rid + 1) % space
        self._next_id = (rid + 1) % space
        return rid

    # -- the pool's view (pool/base.py PooledConnection)

    def is_available(self) -> bool:
        return self.accepting and len(self.pending) < self._id_space - 1

    def has_expired(self, now: float) -> bool:
        # kept alive by heartbeats: no idle timeout; a drained one is closed by its last call
        return self.dead is not None or self.draining

    def is_idle(self) -> bool:
        return not self.pending

    async def send(self, data: bytes | bytearray, deadline: float = math.inf) -> bool:
        """Write one frame; False if ``deadline`` passed first (the frame then went out whole
        or the connection is closed)."""
        if self.dead is not None:
            raise UpstreamLost(self.dead)
        try:
            await self._writer.send(data, 0, deadline)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close(f"send failed: {exc}")
            raise UpstreamLost(self.dead) from None
        except WriteTimeout:
            if self._writer.broken:  # timed out part-way: the writer reset the stream
                self.close("a frame was cut short")
            return False
        except BaseException:
            if self._writer.broken:  # cancelled part-way: the writer reset the stream
                self.close("a frame was cut short")
            raise
        return True

    async def call(
        self, frame: Frame, codec: Codec, timeout: float = math.inf, deadline: float | None = None
    ) -> Frame | None:
        """Send ``frame`` under a fresh id and wait for its response; ``None`` if
        ``timeout`` seconds passed first (from now, or until ``deadline`` when given: a call
        that waited for the connection). A late response is then dropped. No cancel scope:
        the connection's timer wakes a call whose deadline passed."""
        rid = self.allocate_id()
        data = codec.set_request_id(frame, rid)
        if timeout == math.inf:
            slot = self.pending[rid] = _Slot()
            queue = None
        else:
            slot = self.pending[rid] = _Slot(
                trio.current_time() + timeout if deadline is None else deadline
            )
            queue = self._timer.add(slot, timeout)
        try:
            if not await self.send(data, slot.deadline):
                return None
            await slot.wait()
        finally:
            self.pending.pop(rid, None)
            slot.done = True
            if queue is not None:
                while queue and queue[0].done:  # answered in order: the head leaves now
                    queue.popleft()
            if self.draining and not self.pending:
                self.close(_DRAINED)
        if slot.frame is None:
            if slot.expired:
                return None
            raise UpstreamLost(self.dead or "closed")
        return slot.frame

    def start_call(
        self,
        frame: Frame,
        timeout: float,
        deadline: float | None,
        done: Callable[[Frame | None, bool], None],
    ) -> _Slot:
        """``call`` without a task (the RPC fast path): send ``frame`` under a fresh id (the
        connection's flusher writes it) and return at once; ``done(response, expired)`` is
        called once, by the reader with the response, by the timer (``None, True``) or by
        the connection's close (``None, False``: lost). Returns the call's slot, for
        ``forget`` (its owner is gone: ``done`` is then never called). Raises `UpstreamLost`."""
        if self.dead is not None:
            raise UpstreamLost(self.dead)
        rid = self.allocate_id()
        data = self.codec.set_request_id(frame, rid)
        if timeout == math.inf:
            slot = _Slot()
        else:
            slot = _Slot(trio.current_time() + timeout if deadline is None else deadline)
            slot.queue = self._timer.add(slot, timeout)
        slot.rid = rid
        slot.then = done
        slot.callback = self._completed
        self.pending[rid] = slot
        if not self._writer.post(data):
            self.forget(slot)
            raise UpstreamLost(self.dead or "send failed")
        return slot

    def _completed(self, slot: _Slot) -> None:
        """A call started by ``start_call`` is over: out of the tables, then its ``done``."""
        pending = self.pending
        if pending.get(slot.rid) is slot:
            del pending[slot.rid]
        queue = slot.queue
        if queue is not None:
            while queue and queue[0].done:  # answered in order: the head leaves now
                queue.popleft()
        then = slot.then
        if then is not None:
            slot.then = None
            then(slot.frame, slot.expired)
        if self.draining and not pending:
            self.close(_DRAINED)

    def forget(self, slot: _Slot) -> None:
        """Give a call started by ``start_call`` up: its ``done`` is never called."""
        slot.callback = slot.then = None
        slot.done = True
        if self.pending.get(slot.rid) is slot:
            del self.pending[slot.rid]
        if self.draining and not self.pending:
            self.close(_DRAINED)

    def send_nowait(self, frame: Frame) -> None:
        """Send a oneway ``frame`` under a fresh id without waiting (the flusher writes
        it). Raises `UpstreamLost`."""
        if self.dead is not None or not self._writer.post(
            self.codec.set_request_id(frame, self.allocate_id())
        ):
            raise UpstreamLost(self.dead or "send failed")

    def go_away(self) -> None:
        """The upstream is shutting down: no new calls here; closed once none is in flight."""
        if self.draining or self.dead is not None:
            return
        self.draining = True
        self.accepting = False
        _drain_log.log(
            logging.INFO,
            "upstream %s: the peer announced its shutdown, draining %d calls in flight",
            self.codec.name,
            len(self.pending),
        )
        if not self.pending:
            self.close(_DRAINED)

    def close(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            self.accepting = False
            self.stream.abort()  # wakes our reader off the fd first (Stream.close)
            for slot in list(self.pending.values()):  # a callback leaves ``pending``
                slot.set()  # frame None: lost

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader, and the keepalive beside it; returns when the connection is gone."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive)
            nursery.start_soon(self._timer.run)
            nursery.start_soon(self._flush_posted)
            task_status.started()
            try:
                await self._read()
            finally:
                self.close(self.dead or "upstream closed the connection")
                nursery.cancel_scope.cancel()

    async def _flush_posted(self) -> None:
        """The writer's flusher: what calls started without a task posted."""
        try:
            await self._writer.run_flusher()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close(f"send failed: {exc}")

    async def _read(self) -> None:
        # A frame begun must be whole within upstream_frame_timeout: one scope for the whole
        # loop, its deadline set while a frame is partly read (no scope per read).
        timeout = self.options.upstream_frame_timeout
        with trio.CancelScope() as frame_scope:
            await self._read_frames(frame_scope)
        if frame_scope.cancelled_caught:
            log.warning(
                "upstream %s: a response frame not complete within %ss, closing the connection",
                self.codec.name,
                timeout,
            )
            self.close(f"a frame not complete within {timeout}s")

    async def _read_frames(self, frame_scope: trio.CancelScope) -> None:
        codec = self.codec
        limit = self.options.max_frame_bytes
        timeout = self.options.upstream_frame_timeout
        buf = bytearray()
        stream = self.stream
        want = CHUNK
        work = 0  # frames decoded and reads made: a yield every so many of either
        begun = False  # a frame is partly read: frame_scope has its deadline
        while True:
            try:
                data = await stream.receive_some(want)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            work += 1
            if work % 64 == 0:  # receive_some does not yield while data waits: share the loop
                await trio.lowlevel.checkpoint()
            self.last_read = time.monotonic()
            buf += data
            want = CHUNK
            while buf:
                try:
                    decoded = codec.take_frame(buf, limit)
                    if decoded is None:
                        # Read no further than this frame: it then takes the buffer whole.
                        size = codec.frame_length(buf, limit)
                        if size is not None:
                            want = min(CHUNK, size - len(buf))
                        break
                except XProtocolError as exc:
                    log.warning("upstream %s: bad frame: %s", codec.name, exc)
                    self.close(f"bad frame: {exc}")  # wakes every request waiting here
                    return
                frame, used = decoded
                if used == len(buf):
                    buf = bytearray()  # the frame may have taken it as its own bytes
                else:
                    del buf[:used]
                if begun:  # whole in time; what is left is a frame begun now
                    frame_scope.deadline = math.inf
                    begun = False
                work += 1
                if work % 64 == 0:
                    await trio.lowlevel.checkpoint()
                if frame.is_request:
                    if frame.goaway:  # the upstream is shutting down: drain this connection
                        self.go_away()
                        if self.dead is not None:
                            return
                    elif frame.is_heartbeat:  # the upstream checks on us: answer it
                        try:
                            await self.send(codec.encode(codec.heartbeat_reply(frame)))
                        except UpstreamLost:
                            return
                    continue  # requests from the upstream side are not proxied
                slot = self.pending.get(frame.request_id)
                if slot is not None and not slot.done:
                    slot.frame = frame
                    slot.set()
                # else: a response to a request given up on (timed out): dropped
            if buf and not begun:
                frame_scope.deadline = trio.current_time() + timeout
                begun = True

    async def _keepalive(self) -> None:
        interval = self.options.heartbeat_interval
        while True:
            await trio.sleep_until(trio.current_time() + interval)
            if time.monotonic() - self.last_read < interval or self.pending or self.draining:
                continue  # traffic says it is alive (or it closes after its last call)
            rid = self.allocate_id()
            slot = self.pending[rid] = _Slot()
            read_before = self.last_read
            try:
                await self.send(self.codec.encode(self.codec.heartbeat_request(rid)))
                with trio.move_on_after(self.options.heartbeat_timeout):
                    await slot.wait()
            except UpstreamLost:
                return
            finally:
                self.pending.pop(rid, None)
            if self.draining:  # went away while its heartbeat was out: nothing else pending
                if not self.pending:
                    self.close(_DRAINED)
                return
            if slot.frame is None and self.last_read == read_before:
                self.close("heartbeat unanswered")  # and nothing else came meanwhile
                return


class XPool(ConnectionPool[XConnection]):
    """The RPC connections of one (cluster, host, codec)."""

    def __init__(
        self,
        cluster: Cluster,
        host: Host,
        codec: Codec,
        options: XProtocolOptions,
        owner: NurseryOwner,
    ) -> None:
        self.cluster = cluster
        self.host = host
        self.codec = codec
        self.options = options
        self.owner = owner  # its cluster's pools: their nursery runs the connections
        self.conns: list[XConnection] = []
        self._connecting: trio.Event | None = None

    async def connection(self) -> XConnection:
        """A live connection with the fewest requests in flight, opening one while fewer than
        ``connections_per_host`` are open. Raises ``ConnectError`` or ``CircuitOpenError``."""
        conns = self.conns
        if len(conns) == 1 == self.options.connections_per_host and conns[0].is_available():
            return conns[0]  # the common case, without a list or a min() per request
        while True:
            live = [c for c in self.conns if c.is_available()]
            if len(live) >= self.options.connections_per_host:
                return min(live, key=lambda c: len(c.pending))
            if self._connecting is not None:
                if live:
                    return min(live, key=lambda c: len(c.pending))
                await self._connecting.wait()
                continue
            return await self._connect()

    async def _connect(self) -> XConnection:
        self._connecting = done = trio.Event()
        try:
            nursery = await self.owner.nursery()
            stream = await self.cluster.connect(self.host)
            conn = XConnection(stream, self.codec, self.options)
            try:
                await nursery.start(self._run, conn)
            except BaseException:
                if not conn.running:  # _run never began: its cleanup is ours
                    stream.abort()
                    self.cluster.release_connection(self.host)
                raise
            self.conns.append(conn)
            return conn
        finally:
            self._connecting = None
            done.set()

    async def _run(self, conn: XConnection, *, task_status: trio.TaskStatus[None]) -> None:
        conn.running = True
        try:
            await conn.run(task_status=task_status)
        except Exception:
            # One connection's failure must never reach its cluster's nursery.
            log.exception("upstream %s connection to %s failed", self.codec.name, self.host.label)
            conn.close("internal error")
        finally:
            if conn in self.conns:
                self.conns.remove(conn)
            self.cluster.release_connection(self.host)

    def ready(self) -> XConnection | None:
        """A live connection to send on now, without waiting (``None``: one must be opened
        or waited for: ``connection``)."""
        conns = self.conns
        if len(conns) == 1 == self.options.connections_per_host:
            conn = conns[0]
            return conn if conn.accepting else None
        live = [c for c in conns if c.accepting]
        if len(live) >= self.options.connections_per_host or (
            live and self._connecting is not None
        ):
            return min(live, key=lambda c: len(c.pending))
        return None

    async def call(self, frame: Frame, timeout: float = math.inf) -> Frame | None:
        """Forward a two-way request; its response (with the upstream's id in it), or
        ``None`` if ``timeout`` seconds passed first (the connect, the send and the wait
        together)."""
        conns = self.conns
        if len(conns) == 1 == self.options.connections_per_host and conns[0].is_available():
            return await conns[0].call(frame, self.codec, timeout)  # the common case
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):  # a connection to wait for: rare, a scope is fine
            conn = await self.connection()
            return await conn.call(frame, self.codec, timeout, deadline)
        return None

    async def send_oneway(self, frame: Frame, timeout: float = math.inf) -> bool:
        """Forward a oneway request; False if ``timeout`` seconds passed first."""
        deadline = trio.current_time() + timeout
        conn = None
        with trio.move_on_at(deadline):
            conn = await self.connection()
        if conn is None:
            return False
        return await conn.send(self.codec.set_request_id(frame, conn.allocate_id()), deadline)

    def connections(self) -> list[XConnection]:
        return self.conns

    def has_connections(self) -> bool:
        return bool(self.conns) or self._connecting is not None  # one connecting counts

    def discard(self, conn: XConnection, idle_timeout: bool = False) -> None:
        conn.close("closed by its pool")  # its task ends, and takes it out of ``conns``


#: A call's slot, as ``start_call`` returns it (for ``forget``).
CallSlot = _Slot

__all__ = ["CallSlot", "UpstreamLost", "XConnection", "XPool"]
