"""RPC proxying (MOSN's XProtocol): bolt, Dubbo and any registered codec.

A downstream connection is read by its own task, which decodes frames; each request is routed
on its header view (``service``, ``method`` and the protocol's own headers), sent over the
multiplexed pool of the chosen host under an id of that upstream connection, and answered,
with its downstream id restored, as soon as the upstream answers: responses go back in the
order the upstream sends them. Heartbeats are answered here; oneway requests are forwarded
without waiting. Whatever the proxy cannot serve gets the protocol's own error reply (no
route, no healthy host, timeout, upstream failure), from the one ``Reply`` table.

Each request goes through the request lifecycle (``lifecycle.py``, "a request that is one
message"), on one of two paths chosen at configuration time that behave the same: with stream
filters, a task per request in the connection's nursery runs ``handle_message`` (``_Call`` is
its adapter and response sink; ``exchange/rpc.py`` its exchange); without, the reader runs the
same steps itself and leaves the call's completion in the upstream connection's pending table
(``_serve``, ``_FastCall``): no task per call. Both end in ``Observers.end(record)``.

The listener's stream filters run on each request (the frame's header view and payload; before
the no-route reply, as Envoy orders it) and on its response; what they answer becomes the
protocol's error reply, and headers they change are written into the frame sent on by the
codec's ``with_headers`` (docs/xprotocol.md). With no filters configured none of it runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Coroutine, Mapping
from time import monotonic as _monotonic
from typing import Any

import trio

from ..config.filter_configs import Protocol, ProxyConfig
from ..config.scalars import format_hostport
from ..errors import StartupError
from ..filters import BuildContext
from ..filters.stream import (
    REQUEST_DATA,
    REQUEST_HEADERS,
    RESPONSE_DATA,
    RESPONSE_HEADERS,
    FilterChainFactory,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilterChain,
)
from ..network.budget import BEHIND, OWED, ConnectionBudget
from ..network.connect import ConnectError
from ..network.connection import DRAIN_IDLE_GRACE, Connection
from ..network.relay import CHUNK
from ..network.throttled_log import ThrottledLog
from ..network.writer import FrameWriter
from ..pool.xprotocol import CallSlot, UpstreamLost, XConnection, XPool
from ..protocols import xprotocol
from ..protocols.xprotocol import Codec, Frame, XProtocolError
from ..router import Route
from ..upstream import CircuitOpenError, Cluster, Host
from .exchange import UpstreamFailed
from .exchange import rpc as rpc_exchange
from .exchange.rpc import RpcRequest
from .lifecycle import (
    Header,
    ProxyCore,
    RequestBody,
    WholeMessage,
    close_try,
    handle_message,
    message_body,
    message_cluster,
    open_try,
    outlier_failure,
    route_message,
    subset_match,
)
from .observers import listener_observers
from .record import RequestRecord
from .replies import (
    INTERNAL,
    NO_CLUSTER,
    NO_ROUTE,
    OVERFLOW,
    TIMEOUT,
    UPSTREAM_RESET,
    Flag,
    Reply,
    connect_failure,
)

log = logging.getLogger("trio_mesh.proxy")

#: Serve calls without a task when the listener has no stream filter (``_XSession._serve``);
#: the tests turn it off to run the same calls through the task path and compare.
FAST_PATH = True
_overflow_log = ThrottledLog(log)  # clients decide how often: one line a second at most
_TRACE_LOG = ThrottledLog(log, 10.0)  # a client can send such maps at will


def configured_codecs(config: ProxyConfig) -> list[Codec]:
    """The codecs a proxy config names: ``bolt``/``dubbo``, or ``X`` with its sub_protocol.
    A name no codec is registered under stops start-up (before any port is bound)."""
    if config.downstream_protocol == Protocol.X:
        names = config.extend_config.codecs() if config.extend_config else []
    else:
        names = [config.downstream_protocol.value]
    codecs = []
    for name in names:
        try:
            codecs.append(xprotocol.get(name))
        except xprotocol.UnknownCodec:
            known = ", ".join(xprotocol.names()) or "none"
            raise StartupError(
                f"proxy extend_config.sub_protocol: no RPC codec {name!r} (known: {known})"
            ) from None
    return codecs


def _goaway_bytes(codec: Codec, bolt_goaway: bool) -> bytes | None:
    """The announcement a drained connection of ``codec`` sends its client, or None."""
    # bolt's GoAway only where configured (its clients mostly do not know it); looked up by
    # name, so that this module imports no codec (the registry loads them)
    goaway_frame = getattr(codec, "goaway_frame", None) if codec.name == "bolt" else None
    frame = goaway_frame() if bolt_goaway and goaway_frame is not None else codec.goaway_request()
    return None if frame is None else bytes(codec.encode(frame))


class XProxy(ProxyCore):
    """The ``proxy`` network filter for RPC downstream protocols."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext, codecs: list[Codec]) -> None:
        self.config = config
        self.options = config.xprotocol
        self.table = ctx.routes[config.router_config_name]
        self.clusters = ctx.clusters
        self.tracer = ctx.tracer
        self.pools = ctx.pools
        self.stats = ctx.listener_stats
        #: Where requests end (stats, access logs).
        self.observers = listener_observers(ctx.listener_stats, ctx.access_logs, ctx.tracer)
        self.budget = ctx.buffer_budget
        self.codecs = codecs
        #: The listener's stream filters (``None``: none configured; the context says Any).
        self.filters: FilterChainFactory | None = ctx.stream_filters
        self.listener = ctx.listener
        # What the lifecycle reads (``ProxyCore``): RPC requests are one message each, sent by
        # the RPC exchange, never retried.
        self.detailed = self.observers.detailed
        self.exchange = rpc_exchange.exchange
        self.retry_buffer_bytes = -1
        self.counts_refused = False
        self.body = message_body()  # one for all requests: there is no body stream
        #: Calls need nothing of their own (no stream filter): the reader serves them.
        self.fast = FAST_PATH and self.filters is None
        #: What each codec's connections are told on drain (worked out once, not per drain).
        self.goaway: dict[str, bytes | None] = {
            codec.name: _goaway_bytes(codec, self.options.bolt_goaway) for codec in codecs
        }

    def on_connection(self, conn: Connection) -> Coroutine[Any, Any, None]:
        if len(self.codecs) == 1:
            return _XSession(self, conn, self.codecs[0]).run(b"")
        return self.serve(conn, b"")

    async def serve(self, conn: Connection, prefix: bytes, codec: Codec | None = None) -> None:
        """Serve a connection whose first bytes were already read; ``codec`` None: detect it
        among the configured codecs."""
        buf = bytes(prefix)
        while codec is None:
            found = xprotocol.detect(buf, among=[c.name for c in self.codecs])
            if found is None:
                log.info("downstream %s: not %s, closing", conn.remote, self._names())
                return
            if found is not xprotocol.NEED_MORE:
                codec = found
                break
            try:
                data = await conn.stream.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            conn.idle.touch()
            buf += data
        await _XSession(self, conn, codec).run(buf)

    def _names(self) -> str:
        return "/".join(c.name for c in self.codecs)


class _XSession:
    """One downstream RPC connection."""

    def __init__(self, proxy: XProxy, conn: Connection, codec: Codec) -> None:
        self.proxy = proxy
        self.conn = conn
        self.codec = codec
        self.stream = conn.stream
        self.in_flight = 0
        self._room = trio.Event()  # set when in_flight drops below the limit
        self._writer = FrameWriter(conn.stream)
        self._writer.on_block = self._blocked
        self._writer.on_paid = self._paid
        self._stalled = False  # the idle timer runs for a write waiting on the client
        self.budget = proxy.budget.connection()
        self._held = 0  # bytes of the read buffer counted in the budget
        self._admitted = 0  # the frame being read, admitted by its header (its size)
        self._reading = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.gone = False
        #: Calls served without a task (``_serve``), not yet answered.
        self._calls: set[_FastCall] = set()
        self.fast = proxy.fast
        self.detailed = proxy.observers.detailed
        #: This listener's counters of this protocol (by RPC status).
        self.rpc_stats = proxy.stats.rpc_stats(codec.name)
        #: Tracing's SOFA context lives in bolt's header map (SOFARPC's keys).
        self.tracer = proxy.tracer if codec.name == "bolt" else None
        remote, local = conn.remote, conn.local
        #: (remote, local) as the access log writes them, worked out once per connection.
        self._addresses = (
            format_hostport(*remote[:2]) if remote else None,
            format_hostport(*local[:2]) if local else None,
        )

    def peer(self) -> str | None:
        """The client's ``host:port`` (a route's ``source_ip`` hash policy reads it)."""
        return self._addresses[0]

    def original_dst(self) -> tuple[str, int] | None:
        return self.conn.original_dst

    async def run(self, prefix: bytes) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.fast:
                    nursery.start_soon(self._flush_posted)
                self.conn.on_drain = self._on_drain
                if self.conn.draining:  # drained before this session began
                    self._on_drain(self.conn)
                with self._reading:
                    await self._read(bytearray(prefix), nursery)
                # Reading is over (EOF, drain, a bad frame): requests in flight finish first,
                # unless the connection itself is gone.
                if self.gone:
                    nursery.cancel_scope.cancel()
                elif self.fast:
                    while self.in_flight:  # calls without a task of their own too
                        self._room = trio.Event()
                        await self._room.wait()
                    self._writer.stop_flusher()
        finally:
            # Calls still waiting upstream end as a cancelled request task would.
            for call in list(self._calls):
                call.abandon()

    async def _flush_posted(self) -> None:
        """The writer's flusher (the fast path's responses and replies are posted)."""
        try:
            await self._writer.run_flusher()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()

    def _lost(self) -> None:
        """The client is gone: nothing in flight can be answered any more."""
        self.gone = True
        self._reading.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _on_drain(self, conn: Connection) -> None:
        """Take nothing new; what is in flight finishes. A protocol that can say so (Dubbo's
        READONLY event) tells its client first, then reads on for a moment: a request the
        client sent before the announcement reached it is served, not lost with the close."""
        data = self.proxy.goaway[self.codec.name] if not self.gone else None
        if data is None:
            self._reading.cancel()
            return
        if self.fast:
            self._post(data)
        elif self._nursery is not None:
            self._nursery.start_soon(self._write, data)
        deadline = trio.current_time() + DRAIN_IDLE_GRACE
        if deadline < self._reading.deadline:
            self._reading.deadline = deadline

    async def _read(self, buf: bytearray, nursery: trio.Nursery) -> None:
        budget = self.budget
        budget.take(len(buf))
        self._held = len(buf)
        try:
            await self._read_frames(buf, budget, nursery)
        finally:
            budget.give(self._held)  # what never became a frame
            budget.unreserve(self._admitted)
            self._held = self._admitted = 0

    async def _read_frames(
        self, buf: bytearray, budget: ConnectionBudget, nursery: trio.Nursery
    ) -> None:
        """Decode and dispatch frames, each request a task in ``nursery`` (the connection's).
        Every byte of ``buf`` is counted in the budget (``_held``); a frame whose header is
        read is admitted whole (``_admitted``: waiting, not reading, until it fits) before its
        body is read, and its bytes stay counted until its answer is written (``_handle``)."""
        codec = self.codec
        limit = self.proxy.options.max_frame_bytes
        max_in_flight = self.proxy.options.max_requests_per_connection
        frame_timeout = self.proxy.config.request_header_timeout
        stream = self.stream
        deadline = math.inf  # a frame begun must be whole by then (it holds the budget)
        work = 0  # frames decoded and reads made: a yield every so many of either
        while True:
            while buf:
                try:
                    decoded = codec.take_frame(buf, limit)
                except XProtocolError as exc:
                    log.info("downstream %s: bad %s frame: %s", self.conn.remote, codec.name, exc)
                    self.gone = True
                    return
                if decoded is None:
                    break
                frame, used = decoded
                deadline = math.inf
                if used == len(buf):
                    buf = bytearray()  # the frame may have taken it as its own bytes
                else:
                    del buf[:used]
                # The frame's bytes pass from the buffer's count to the frame's.
                self._held -= used
                if self._admitted:
                    self._admitted = 0  # admitted by its header: exactly ``used``
                else:
                    budget.admit(used)  # read whole in one go
                work += 1
                if work % 64 == 0:
                    # receive_some does not yield while data is waiting, nor does starting a
                    # request's task: a client that floods us must still share the loop
                    await trio.lowlevel.checkpoint()
                if not frame.is_request:
                    self._done(used)
                    continue  # a client does not answer us: nothing to route
                if frame.is_heartbeat:
                    self._done(used)
                    await self._write(codec.encode(codec.heartbeat_reply(frame)))
                    continue
                if frame.goaway:
                    self._done(used)
                    continue  # a client draining towards us: a control frame, not routed
                while self.in_flight >= max_in_flight:  # backpressure: stop reading
                    self._room = trio.Event()
                    await self._room.wait()
                self._started()
                if self.fast:
                    self._serve(frame, used, nursery)
                else:
                    nursery.start_soon(self._handle, frame, used)
            try:
                size = codec.frame_length(buf, limit) if buf else None
            except XProtocolError as exc:
                log.info("downstream %s: bad %s frame: %s", self.conn.remote, codec.name, exc)
                self.gone = True
                return
            if size is None:
                want = CHUNK
                if budget.full:  # no new frame while a budget is spent
                    await self._wait(budget.wait_room())
                    deadline = math.inf
            else:
                if not self._admitted:
                    if not budget.fits(size):
                        await self._wait(budget.reserve(size))
                        deadline = math.inf  # the wait was ours, not the client's
                    else:
                        budget.admit(size)
                    self._admitted = size
                    budget.take(size - self._held)  # counted from now on, all of it
                    self._held = size
                # Read no further than this frame: it then takes the buffer whole (no copy).
                want = min(CHUNK, size - len(buf))
            try:
                if not buf:
                    deadline = math.inf  # between frames: the idle timeout alone applies
                    data = await stream.receive_some(want)
                else:
                    if deadline == math.inf:
                        deadline = trio.current_time() + frame_timeout
                    with trio.move_on_at(deadline):
                        data = await stream.receive_some(want)
                    if trio.current_time() >= deadline:
                        # A slow sender must not keep a frame's budget (slowloris).
                        log.info(
                            "downstream %s: %s frame not complete within %ss, closing",
                            self.conn.remote,
                            codec.name,
                            frame_timeout,
                        )
                        self.gone = True
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.gone = True
                return
            if not data:
                return
            if not self.in_flight:
                self.conn.idle.touch()
            buf += data
            if len(buf) > self._held:
                budget.take(len(buf) - self._held)
                self._held = len(buf)
            if not self._admitted and budget.full:
                # Spent while we were reading (a response came to be owed): what this read
                # brought is not dispatched until there is room.
                await self._wait(budget.wait_room())
                deadline = math.inf
            work += 1
            if work % 64 == 0:
                await trio.lowlevel.checkpoint()

    async def _wait(self, room: Awaitable[None]) -> None:
        """Wait for budget room: on other requests' answers, so the connection is not idle
        meanwhile, unless responses wait on the client (then its idle timer runs)."""
        if not self.budget.queued:
            self.conn.idle.pause()
        await room
        if not self.in_flight:
            self.conn.idle.touch()

    def _done(self, size: int) -> None:
        """A frame's ``size`` bytes are no longer held."""
        budget = self.budget
        budget.give(size)
        budget.unreserve(size)

    def _started(self) -> None:
        if not self.in_flight:
            self.conn.idle.pause()  # a request in flight is bounded by its own timeout
        self.in_flight += 1
        self.conn.busy = True

    def _finished(self) -> None:
        self.in_flight -= 1
        self._room.set()
        if not self.in_flight:
            self.conn.busy = False
            self.conn.idle.touch()

    async def _write(self, data: bytes | bytearray, owed: int = 0) -> None:
        """Write ``data`` (queued behind a flush under way: FrameWriter); ``owed`` bytes of
        it are ``paid`` once written or dropped."""
        if self.gone:
            if owed:
                self._paid(owed)
            return
        try:
            await self._writer.send(data, owed)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()

    def _post(self, data: bytes | bytearray, owed: int = 0) -> None:
        """``_write`` without waiting (the fast path: the connection's flusher sends it)."""
        if self.gone:
            if owed:
                self._paid(owed)
            return
        if not self._writer.post(data, owed):
            self._lost()

    def _record(self, frame: Frame, size: int) -> RequestRecord:
        record = RequestRecord()
        record.bytes_received = size
        # The start: downstream_rq_time (and upstream_rq_time on the fast path) read it.
        record.start = _monotonic()
        self.proxy.stats.downstream_rq_active += 1  # until ``_end`` (the observers)
        if self.detailed:
            # Only a detailed observer reads the rest (the time of day, the names).
            record.start_time = time.time()
            record.protocol = self.codec.name
            headers = frame.headers
            record.rpc_service = headers.get("service") or None
            record.rpc_method = headers.get("method") or None
            record.downstream_remote_address, record.downstream_local_address = self._addresses
            record.tls = self.conn.tls
        return record

    async def _handle(self, frame: Frame, size: int) -> None:
        """Serve one request on its own task (the lifecycle, ``lifecycle.handle_message``);
        its ``size`` bytes leave the budget once it is answered."""
        record = self._record(frame, size)
        if self.tracer is not None:
            frame = self._traced(frame, record)
        try:
            await handle_message(self.proxy, _Call(self, frame, record), frame.headers.get, record)
            if not record.response_code:
                record.response_code = 200  # a oneway request sent on
        except Exception:
            # One request's failure (a codec bug, say) must not take the connection down.
            log.exception("downstream %s: %s request failed", self.conn.remote, self.codec.name)
            record.response_code = INTERNAL.status
            if not frame.is_oneway:
                record.rpc_status = self.codec.status_for(INTERNAL.rpc_error)
                await self._write(self._reply_bytes(frame, INTERNAL, None))
        finally:
            self._end(size, record)

    def _traced(self, frame: Frame, record: RequestRecord) -> Frame:
        """``frame`` with this hop's SOFA context in its header map (``tracer.start_rpc``);
        as it is when the map cannot take it (a map at bolt's size limit, a bad map)."""
        tracer = self.tracer
        assert tracer is not None
        sets: dict[str, str] = {}
        try:
            headers = frame.headers
            tracer.start_rpc(headers.get, sets.__setitem__, record)
            if record.trace_sampled and not self.detailed:
                # what the span reads (a detailed proxy's _record filled it already)
                record.start = _monotonic()
                record.start_time = time.time()
                record.protocol = self.codec.name
                record.rpc_service = headers.get("service") or None
                record.rpc_method = headers.get("method") or None
                record.downstream_remote_address = self._addresses[0]
            return self.codec.with_headers(frame, {**headers, **sets})
        except (ValueError, XProtocolError) as exc:
            _TRACE_LOG.log(logging.INFO, "bolt: no trace context passed on: %s", exc)
            return frame

    def _end(self, size: int, record: RequestRecord) -> None:
        """The request is over: its bytes leave the budget, its record goes to the observers."""
        self._done(size)
        self._finished()
        self.rpc_stats.count(record.rpc_status)
        self.proxy.observers.end(record)

    def _serve(self, frame: Frame, size: int, nursery: trio.Nursery) -> None:
        """Serve one request without a task of its own (the fast path, with no stream filter
        on the listener): the lifecycle's steps, synchronous (``lifecycle.route_message``,
        ``message_cluster``, ``open_try``); the call is written upstream with its completion
        in the upstream connection's pending table (``_FastCall.done``). Only a call that must
        wait for an upstream connection gets a task (``_FastCall.connect``)."""
        proxy = self.proxy
        record = self._record(frame, size)
        if self.tracer is not None:
            frame = self._traced(frame, record)
        call = None
        try:
            header = frame.headers.get
            routed = route_message(proxy, header, record)[1]
            if routed is None:
                self._answer(frame, size, record, NO_ROUTE)
                return
            cluster = message_cluster(proxy, routed.pick_cluster(header), record)
            if cluster is None:
                self._answer(frame, size, record, NO_CLUSTER)
                return
            key = None
            if routed.hash_policy is not None and cluster.hashing:
                key = routed.hash_policy.key(header, "", self.peer)[0]
            match = subset_match(routed, cluster)
            host = open_try(cluster, record, key, match, self.conn.original_dst)
            if isinstance(host, Reply):
                self._answer(frame, size, record, host)
                return
            call = _FastCall(self, frame, size, record, cluster, host)
            # The route's timeout, capped by the frame's own (bolt carries one).
            timeout = min(routed.timeout or math.inf, frame.timeout or math.inf)
            pool = proxy.pools.xprotocol(cluster, host, self.codec, proxy.options)
            conn = pool.ready()
            if conn is None:
                nursery.start_soon(call.connect, pool, timeout)
            else:
                call.start(conn, timeout, None)
        except Exception:
            log.exception("downstream %s: %s request failed", self.conn.remote, self.codec.name)
            if call is not None:  # its try is open: closed with the reply
                call._complete(None, INTERNAL)
                return
            record.response_code = INTERNAL.status
            if not frame.is_oneway:
                record.rpc_status = self.codec.status_for(INTERNAL.rpc_error)
                self._post(self._reply_bytes(frame, INTERNAL, None))
            self._end(size, record)

    def _answer(self, frame: Frame, size: int, record: RequestRecord, reply: Reply) -> None:
        """End a request the fast path answers itself (``reply``)."""
        if self._replying(frame, reply, record):
            self._post(self._reply_bytes(frame, reply, record))
        self._end(size, record)

    def _reply_bytes(
        self, frame: Frame, result: Reply, record: RequestRecord | None
    ) -> bytes | bytearray:
        """The codec's error response answering ``frame`` with ``result``; with ``record``,
        counted in it (the status, the flag, the bytes)."""
        codec = self.codec
        kind = result.rpc_error
        if result.by_filter:
            message = result.body.decode("utf-8", "replace").strip()
            data = codec.encode(codec.error_reply(frame, kind, message))
        else:
            data = codec.encode(codec.error_reply(frame, kind))
        if record is not None:
            record.bytes_sent += len(data)
        return data

    def _replying(self, frame: Frame, result: Reply, record: RequestRecord) -> bool:
        """Count the local reply ``result`` in ``record``; whether it is written (a oneway
        request gets none)."""
        record.response_code = result.status
        record.rpc_status = self.codec.status_for(result.rpc_error)
        if result.flag:
            record.add_flag(result.flag)
        if result.transport_failure is not None:
            record.upstream_transport_failure_reason = result.transport_failure
        if frame.is_oneway:
            if result.by_filter:
                log.info(
                    "downstream %s: %s oneway request refused by a stream filter (%s), dropped",
                    self.conn.remote,
                    self.codec.name,
                    result.rpc_error.name,
                )
            return False
        if result.close:
            self._reading.cancel()  # take nothing new: what is in flight finishes
        return True

    async def _reply(self, frame: Frame, result: Reply, record: RequestRecord) -> None:
        """Answer ``frame`` with the local reply ``result`` (the proxy's own or a filter's)
        as the codec's error response; a oneway request gets none."""
        if self._replying(frame, result, record):
            await self._write(self._reply_bytes(frame, result, record))

    def _response(
        self, response: Frame, downstream_id: int, record: RequestRecord
    ) -> tuple[bytes | bytearray, int] | Reply | None:
        """The upstream's ``response`` under ``downstream_id``, counted in the budget until
        written (its bytes and their count), or the reply that answers instead (``OVERFLOW``:
        the listener's budget has no room), or None (the client is not reading its
        responses: it is closed)."""
        # MOSN's mapping of an RPC response to an HTTP status (its access log and stats).
        record.response_code = 200 if self.codec.is_success(response) else 500
        record.rpc_status = response.status
        data = self.codec.set_request_id(response, downstream_id)
        # Held until the client takes it: counted, and refused over budget (ConnectionBudget.owe).
        n = len(data)
        owed = self.budget.owe(n)
        if owed != OWED:
            if owed == BEHIND:
                record.add_flag(Flag.DOWNSTREAM_TERMINATION)
                self._overflow(n)
                return None
            # SPENT: other clients' responses fill the listener's budget.
            self.proxy.stats.downstream_rq_tx_buffer_overflow += 1
            return OVERFLOW
        # Written outside the timeout: a frame is never cut short by it (FrameWriter), and
        # paid (``_paid``) once written or dropped, maybe after the request ends.
        record.bytes_sent += n
        return data, n

    async def _respond(self, response: Frame, downstream_id: int, record: RequestRecord) -> None:
        """Write the upstream's ``response`` down under ``downstream_id``. Raises
        ``UpstreamFailed(OVERFLOW)`` when the listener's budget has no room for it."""
        out = self._response(response, downstream_id, record)
        if isinstance(out, Reply):
            raise UpstreamFailed(out)
        if out is not None:
            await self._write(*out)

    def _paid(self, n: int) -> None:
        """Owed responses' ``n`` bytes are written (or dropped)."""
        budget = self.budget
        budget.paid(n)
        if self._stalled:
            if budget.queued:
                self.conn.idle.touch()  # the client took this one: it is reading
            else:
                self._stalled = False
                if self.in_flight:  # (this one's too, if not yet finished: it touches then)
                    self.conn.idle.pause()  # the others wait on the upstream, timed apart

    def _blocked(self) -> None:
        """A write waits for the client to read: its idle timer runs (paused while requests
        are in flight), so a client that takes nothing of its responses is closed."""
        idle = self.conn.idle
        if idle.deadline == math.inf:
            idle.touch()
            self._stalled = True

    def _overflow(self, n: int) -> None:
        """A response the client has no room for, while it does not read those before it:
        close the connection rather than hold them (the shared upstream keeps being read)."""
        self.proxy.stats.downstream_cx_tx_buffer_overflow += 1
        _overflow_log.log(
            logging.INFO,
            "downstream %s: %s client not reading its responses (%d bytes waiting, %d more), "
            "closing",
            self.conn.remote,
            self.codec.name,
            self.budget.queued,
            n,
        )
        self.gone = True
        self._reading.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self.stream.abort()  # RST: what the kernel holds for it goes too

    # ------------------------------------------------------------------ stream filters

    async def _request_filters(self, chain: StreamFilterChain, frame: Frame) -> Frame | Reply:
        """Run the request hooks: the frame to send upstream (``frame``, or a copy carrying
        the headers the filters changed), or what answers the request instead."""
        if chain.mask & REQUEST_HEADERS:
            headers, original = _header_view(frame.headers)
            reply = await chain.request_headers(headers, False)
            if reply is not None:
                return Reply.from_filter(reply)
        else:
            headers = None
        if chain.mask & REQUEST_DATA:
            payload = self.codec.payload(frame)
            out = await chain.request_data(payload, True)
            if isinstance(out, LocalReply):
                return Reply.from_filter(out)
            if out is not payload and out != payload:
                log.error(
                    "downstream %s: a stream filter replaced the body of a %s request, "
                    "which an RPC frame cannot carry",
                    self.conn.remote,
                    self.codec.name,
                )
                return INTERNAL
        if headers is not None and headers.changed:
            return self._rewritten(frame, _desired(frame.headers, original, headers))
        return frame

    async def _response_filters(self, chain: StreamFilterChain, response: Frame) -> Frame | Reply:
        """Run the response hooks (reverse order): the response to send down (``response``,
        or a copy with the changed headers), or what replaces it."""
        headers = None
        if chain.mask & RESPONSE_HEADERS:
            view = response.headers
            headers, original = _header_view(view, response.status)
            reply = await chain.response_headers(headers, False)
            if reply is not None:
                return Reply.from_filter(reply)
        if chain.mask & RESPONSE_DATA:
            payload = self.codec.payload(response)
            out = await chain.response_data(payload, True)
            if isinstance(out, LocalReply):
                return Reply.from_filter(out)
            if out is not payload and out != payload:
                log.error(
                    "downstream %s: a stream filter replaced the body of a %s response, "
                    "which an RPC frame cannot carry",
                    self.conn.remote,
                    self.codec.name,
                )
                return INTERNAL
        if headers is not None and headers.changed:
            return self._rewritten(response, _desired(response.headers, original, headers))
        return response

    def _rewritten(self, frame: Frame, mapping: dict[str, str]) -> Frame | Reply:
        """``frame`` carrying the header view ``mapping``, or INTERNAL (logged) when the
        codec cannot put it there."""
        codec = self.codec
        try:
            return codec.with_headers(frame, mapping)
        except NotImplementedError as exc:
            log.error(
                "downstream %s: stream filters changed the headers of a %s %s, and the "
                "%s codec cannot rewrite them (%s)",
                self.conn.remote,
                codec.name,
                "response" if frame.is_response else "request",
                codec.name,
                exc,
            )
        except (ValueError, XProtocolError) as exc:
            log.error(
                "downstream %s: stream filters changed the headers of a %s %s in a way "
                "the codec cannot carry: %s",
                self.conn.remote,
                codec.name,
                "response" if frame.is_response else "request",
                exc,
            )
        return INTERNAL


class _FastCall:
    """A call served without a task (``_XSession._serve``): what its completion needs."""

    __slots__ = (
        "cluster",
        "conn",
        "downstream_id",
        "frame",
        "host",
        "record",
        "session",
        "size",
        "slot",
    )

    def __init__(
        self,
        session: _XSession,
        frame: Frame,
        size: int,
        record: RequestRecord,
        cluster: Cluster,
        host: Host,
    ) -> None:
        self.session = session
        self.frame = frame
        self.size = size
        self.record = record
        self.cluster = cluster
        self.host = host
        self.downstream_id = frame.request_id
        self.conn: XConnection | None = None  # with ``slot``: where it waits upstream
        self.slot: CallSlot | None = None
        host.active_requests += 1
        host.rq_total += 1
        session._calls.add(self)

    def start(self, conn: XConnection, timeout: float, deadline: float | None) -> None:
        """Write the call upstream, its completion (``done``) in ``conn``'s pending table."""
        frame = self.frame
        try:
            if frame.is_oneway:
                conn.send_nowait(frame)
            else:
                self.slot = conn.start_call(frame, timeout, deadline, self.done)
                self.conn = conn
            lost = False
        except UpstreamLost:
            lost = True
        frame.request_id = self.downstream_id  # an error reply answers the downstream id
        if lost:
            self._complete(None, UPSTREAM_RESET)
        elif frame.is_oneway:
            self._complete(None, None)

    async def connect(self, pool: XPool, timeout: float) -> None:
        """Wait for an upstream connection (the call's only wait), then ``start``."""
        deadline = trio.current_time() + timeout
        conn = None
        try:
            with trio.move_on_at(deadline):
                conn = await pool.connection()
        except ConnectError as exc:
            failed = connect_failure(exc)
            if self.cluster.outlier is not None:
                outlier_failure(self.cluster.outlier, self.host, failed)
            self._complete(None, failed)
            return
        except CircuitOpenError:
            self._complete(None, OVERFLOW)
            return
        except Exception:
            log.exception("upstream %s: connecting failed", pool.codec.name)
            self._complete(None, INTERNAL)
            return
        if conn is None:
            self._complete(None, TIMEOUT)
            return
        try:
            self.start(conn, timeout, deadline)
        except Exception:
            log.exception("upstream %s: sending failed", pool.codec.name)
            self._complete(None, INTERNAL)

    def done(self, response: Frame | None, expired: bool) -> None:
        """The upstream answered (``response``), or the call's time passed (``expired``),
        or its connection was lost: called by the upstream reader or its timer."""
        if response is None:
            failed = TIMEOUT if expired else UPSTREAM_RESET
            # Charged as the reply it becomes, as the task path (``forward``) does.
            elapsed = _monotonic() - self.record.start
            cluster = self.cluster
            cluster.stats.upstream_response(failed.status, elapsed * 1000.0)
            if cluster.outlier is not None:
                cluster.outlier.local_failure(self.host, failed.status)
            self._complete(None, failed)
        else:
            record = self.record
            # The try began with the request (``_serve`` opens it at once).
            elapsed = _monotonic() - record.start
            if self.session.detailed:
                record.response_received_duration = elapsed
            code = 200 if self.session.codec.is_success(response) else 500
            cluster = self.cluster
            cluster.stats.upstream_response(code, elapsed * 1000.0)
            if cluster.outlier is not None:
                cluster.outlier.response(self.host, code)
            self._complete(response, None)

    def _complete(self, response: Frame | None, failed: Reply | None) -> None:
        """Answer the call: with the upstream's ``response``, or the reply ``failed``, or
        (both None) nothing: a oneway request sent on. Never raises (the upstream reader or
        the timer calls it: one request's failure is its own)."""
        session = self.session
        record = self.record
        frame = self.frame
        try:
            if response is not None:
                out = session._response(response, self.downstream_id, record)
                if isinstance(out, Reply):
                    failed = out
                elif out is not None:
                    session._post(*out)
            if failed is not None:
                if failed is TIMEOUT:
                    self.cluster.stats.upstream_rq_timeout += 1
                if session._replying(frame, failed, record):
                    session._post(session._reply_bytes(frame, failed, record))
            elif not record.response_code:
                record.response_code = 200  # a oneway request sent on
        except Exception:
            log.exception(
                "downstream %s: %s request failed", session.conn.remote, session.codec.name
            )
            record.response_code = INTERNAL.status
            if not frame.is_oneway:
                record.rpc_status = session.codec.status_for(INTERNAL.rpc_error)
                try:
                    session._post(session._reply_bytes(frame, INTERNAL, None))
                except Exception:
                    log.exception("downstream %s: no error reply", session.conn.remote)
        finally:
            self._close()

    def _close(self) -> None:
        self.host.active_requests -= 1
        close_try(self.cluster)
        session = self.session
        session._calls.discard(self)
        session._end(self.size, self.record)

    def abandon(self) -> None:
        """Its connection is gone: given up (as its task would be cancelled)."""
        if self.conn is not None and self.slot is not None:
            self.conn.forget(self.slot)
        self._close()


class _Call(WholeMessage):
    """One RPC request as the lifecycle sees it: the downstream adapter (``Downstream``) and
    the response sink (``MessageSink``) of ``frame``, on its connection's ``session``."""

    __slots__ = ("chain", "downstream_id", "frame", "record", "session", "up")
    started = False  # a response is one message: nothing of it goes down before it is whole

    def __init__(self, session: _XSession, frame: Frame, record: RequestRecord) -> None:
        self.session = session
        self.frame = frame
        self.up = frame  # what goes upstream (a copy when filters changed its headers)
        self.record = record
        self.downstream_id = frame.request_id
        self.chain: StreamFilterChain | None = None

    @property
    def body(self) -> RequestBody:
        return self.session.proxy.body

    @property
    def sink(self) -> _Call:
        return self

    def peer(self) -> str | None:
        return self.session._addresses[0]

    def original_dst(self) -> tuple[str, int] | None:
        return self.session.conn.original_dst

    def filter_context(self, route: Route | None, cluster: str | None) -> RequestContext:
        session = self.session
        headers = self.frame.headers
        return RequestContext(
            session.codec.name,
            method=headers.get("method") or "",
            path=headers.get("service") or "",
            route=route,
            cluster=cluster,
            downstream_remote=session.conn.remote,
            downstream_local=session.conn.local,
            listener=session.proxy.listener,
            tls=session.conn.tls,
        )

    def upstream_request(self, route: Route, info: RequestRecord) -> RpcRequest:
        session = self.session
        # The route's timeout, capped by the frame's own (bolt carries one).
        timeout = min(route.timeout or math.inf, self.frame.timeout or math.inf)
        return RpcRequest(self.up, session.codec, session.proxy.options, timeout)

    async def request_filters(self, chain: StreamFilterChain) -> Reply | None:
        out = await self.session._request_filters(chain, self.frame)
        if isinstance(out, Frame):
            self.up = out
            return None
        return out

    async def reply(
        self, reply: Reply, *, headers: list[Header] | None = None, route: Route | None = None
    ) -> None:
        await self.session._reply(self.frame, reply, self.record)

    async def filter_reply(self, reply: LocalReply) -> None:
        await self.session._reply(self.frame, Reply.from_filter(reply), self.record)

    async def message(self, msg: Any) -> None:
        response: Frame = msg
        session = self.session
        chain = self.chain
        if chain is not None and chain.mask & (RESPONSE_HEADERS | RESPONSE_DATA):
            out = await session._response_filters(chain, response)
            if not isinstance(out, Frame):
                # Answered instead (a filter's reply, or INTERNAL): nothing went down yet,
                # so the lifecycle answers it as a failed try (RPC routes are not retried).
                raise UpstreamFailed(out)
            response = out
        await session._respond(response, self.downstream_id, self.record)


def _header_view(
    view: Mapping[str, str], status: int | None = None
) -> tuple[Headers, Mapping[str, str]]:
    """A frame's header view as filters' `Headers`, and what it held before the hooks.
    `Headers` are latin-1; an RPC value outside it (bolt and Dubbo carry UTF-8) is given as
    its UTF-8 bytes, so what the filters leave alone is still told apart from what they set."""
    try:
        return Headers.from_mapping(view, status), view
    except UnicodeEncodeError:
        headers = Headers([(k.encode("utf-8"), v.encode("utf-8")) for k, v in view.items()], status)
        return headers, headers.to_dict()


def _desired(
    view: Mapping[str, str], original: Mapping[str, str], headers: Headers
) -> dict[str, str]:
    """The header view the filters want: their changes (from ``original``, what they were
    given) applied to the frame's own ``view``."""
    final = headers.to_dict()
    if original is view:
        return final
    sets, removed = xprotocol.header_changes(original, final)
    wanted = dict(view)
    for name in removed:
        wanted.pop(name, None)
    wanted.update(sets)
    return wanted
