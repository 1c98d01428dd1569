"""RPC proxying (MOSN's XProtocol): bolt, Dubbo and any registered codec.

A downstream connection is read by its own task, which decodes frames and starts one task per
request in the connection's nursery; each request is routed on its header view (``service``,
``method`` and the protocol's own headers), sent over the multiplexed pool of the chosen host
under an id of that upstream connection, and answered, with its downstream id restored, as soon
as the upstream answers: responses go back in the order the upstream sends them. Heartbeats are
answered here; oneway requests are forwarded without waiting. Whatever the proxy cannot serve
gets the protocol's own error reply (no route, no healthy host, timeout, upstream failure).
"""

from __future__ import annotations

import logging
import math

import trio

from ..config.filters import Protocol, ProxyConfig
from ..errors import StartupError
from ..filters import BuildContext
from ..network.connect import ConnectError
from ..network.connection import Connection
from ..network.relay import CHUNK
from ..network.writer import FrameWriter
from ..pool.xprotocol import UpstreamLost
from ..protocols import xprotocol
from ..protocols.xprotocol import Codec, ErrorKind, Frame, XProtocolError
from ..upstream import CircuitOpenError, NoHostError

log = logging.getLogger("trio_mesh.proxy")


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


class XProxy:
    """The ``proxy`` network filter for RPC downstream protocols."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext, codecs: list[Codec]) -> None:
        self.config = config
        self.options = config.xprotocol
        self.table = ctx.routes[config.router_config_name]
        self.clusters = ctx.clusters
        self.pools = ctx.pools
        self.stats = ctx.listener_stats
        self.codecs = codecs

    def on_connection(self, conn: Connection):
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
        self._reading = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.gone = False

    async def run(self, prefix: bytes) -> None:
        self.conn.on_drain = self._on_drain
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with self._reading:
                await self._read(bytearray(prefix))
            # Reading is over (EOF, drain, a bad frame): requests in flight finish first,
            # unless the connection itself is gone.
            if self.gone:
                nursery.cancel_scope.cancel()

    def _on_drain(self, conn: Connection) -> None:
        self._reading.cancel()  # take nothing new; what is in flight finishes

    async def _read(self, buf: bytearray) -> None:
        codec = self.codec
        limit = self.proxy.options.max_frame_bytes
        max_in_flight = self.proxy.options.max_requests_per_connection
        stream = self.stream
        while True:
            while buf:
                try:
                    decoded = codec.decode(buf, limit)
                except XProtocolError as exc:
                    log.info("downstream %s: bad %s frame: %s", self.conn.remote, codec.name, exc)
                    self.gone = True
                    return
                if decoded is None:
                    break
                frame, used = decoded
                del buf[:used]
                if not frame.is_request:
                    continue  # a client does not answer us: nothing to route
                if frame.is_heartbeat:
                    await self._write(codec.encode(codec.heartbeat_reply(frame)))
                    continue
                while self.in_flight >= max_in_flight:  # backpressure: stop reading
                    self._room = trio.Event()
                    await self._room.wait()
                self._started()
                self._nursery.start_soon(self._handle, frame)
            try:
                data = await stream.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.gone = True
                return
            if not data:
                return
            if not self.in_flight:
                self.conn.idle.touch()
            buf += data

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

    async def _write(self, data: bytes | bytearray) -> None:
        if self.gone:
            return
        try:
            await self._writer.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client is gone: nothing in flight can be answered any more.
            self.gone = True
            self._reading.cancel()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    async def _handle(self, frame: Frame) -> None:
        stats = self.proxy.stats
        try:
            kind = await self._forward(frame)
            stats.downstream_rq_total += 1
            if kind is not None:
                stats.downstream_rq_5xx += 1
                if not frame.is_oneway:
                    await self._write(self.codec.encode(self.codec.error_reply(frame, kind)))
            else:
                stats.downstream_rq_2xx += 1
        except Exception:
            # One request's failure (a codec bug, say) must not take the connection down.
            log.exception("downstream %s: %s request failed", self.conn.remote, self.codec.name)
            if not frame.is_oneway:
                await self._write(
                    self.codec.encode(self.codec.error_reply(frame, ErrorKind.INTERNAL))
                )
        finally:
            self._finished()

    async def _forward(self, frame: Frame) -> ErrorKind | None:
        """Send ``frame`` upstream and its response down; an error kind when the proxy must
        answer itself instead."""
        proxy = self.proxy
        headers = frame.headers
        route = proxy.table.match("", "/", "", headers.get)
        if route is None or route.direct_response is not None or route.redirect is not None:
            return ErrorKind.NO_ROUTE
        cluster_name = route.pick_cluster(headers.get)
        cluster = proxy.clusters.clusters.get(cluster_name) if cluster_name else None
        if cluster is None:
            return ErrorKind.NO_ROUTE
        try:
            host = cluster.choose_host()
        except NoHostError:
            return ErrorKind.NO_HEALTHY_HOST
        pool = proxy.pools.xprotocol(cluster, host, self.codec, proxy.options)
        # The route's timeout, capped by the frame's own (bolt carries one).
        timeout = min(route.timeout or math.inf, frame.timeout or math.inf)
        downstream_id = frame.request_id
        cluster.stats.upstream_rq_total += 1
        host.active_requests += 1
        try:
            response = None
            with trio.move_on_after(timeout):
                if frame.is_oneway:
                    await pool.send_oneway(frame)
                    return None
                response = await pool.call(frame)
            if response is None:
                cluster.stats.upstream_rq_timeout += 1
                return ErrorKind.TIMEOUT
            # Written outside the timeout: a frame is never cut short by it (FrameWriter).
            await self._write(self.codec.set_request_id(response, downstream_id))
            return None
        except ConnectError:
            return ErrorKind.UPSTREAM_FAILURE
        except CircuitOpenError:
            return ErrorKind.OVERFLOW
        except UpstreamLost:
            return ErrorKind.UPSTREAM_RESET
        finally:
            host.active_requests -= 1
            frame.request_id = downstream_id  # the error reply answers the downstream id
