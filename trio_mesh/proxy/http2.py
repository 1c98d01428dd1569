"""The HTTP/2 downstream adapter: every downstream stream is a task in its connection's nursery.

A stream's task parses the request head into the lifecycle's request view and runs the one
request lifecycle (``lifecycle.handle``: filters, route, retries, the upstream exchange).
The stream is its request's body source (DATA and trailers from its channel, each chunk's
flow-control credit given back once it was passed on, so a slow reader anywhere slows the
writer on the other side; retry copies counted in the connection's budget) and its response
sink (HEADERS, DATA, trailers; a reset once the response began), and answers local replies
as HTTP/2 (gRPC: a trailers-only reply). Its route timeout (capped by ``grpc-timeout``) is
the stream's cancel scope; a downstream RST_STREAM cancels the task, whose exit resets the
upstream stream, and an upstream reset is passed downstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from random import getrandbits as _getrandbits
from time import monotonic as _monotonic
from typing import Any

import trio

from ..config.filter_configs import Protocol, ProxyConfig
from ..config.scalars import format_hostport
from ..filters import BuildContext
from ..filters.stream import FilterChainFactory, LocalReply, RequestContext, StreamFilterChain
from ..network.connection import Connection
from ..network.h2 import H2Endpoint, StreamChannel, StreamGone
from ..network.stream import Stream
from ..protocols.http1 import ResponseHead, strip_hop_by_hop
from ..protocols.http2 import (
    Data,
    ErrorCode,
    H2Connection,
    H2HeaderError,
    H2Request,
    RequestHeaders,
    Trailers,
    request_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from ..router import Route, apply_header_mutations
from . import lifecycle
from .exchange import http1 as h1_exchange
from .exchange import http2 as h2_exchange
from .grpc import grpc_timeout, is_grpc
from .lifecycle import ProxyCore, RequestBody, RequestView, UpstreamRequest
from .observers import listener_observers
from .record import RequestRecord
from .replies import TIMEOUT, Flag, Reply
from .settings import h2_settings
from .xfcc import DROP, ConnectionXfcc, XfccPolicy

log = logging.getLogger("trio_mesh.proxy.http2")

#: Between a drain's two GOAWAYs: the client's requests sent before it read the first one
#: arrive and are served (a round trip; a loaded client reads late).
DRAIN_GOAWAY_GRACE = 1.0
_NO_BODY_STATUSES = frozenset({204, 304})

#: `_Stream.request` until the request head parsed (a bad head is answered 400 from it).
_UNPARSED = H2Request(b"", b"", None, b"", [])


class Http2Proxy(ProxyCore):
    """The ``proxy`` network filter for ``downstream_protocol: Http2`` (h2c, prior knowledge)."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext) -> None:
        self.config = config
        self.table = ctx.routes[config.router_config_name]
        self.clusters = ctx.clusters
        self.tracer = ctx.tracer
        self.pools = ctx.pools
        self.stats = ctx.listener_stats
        #: Where requests end (stats, access logs); ``detailed``: fill what only logs read.
        self.observers = listener_observers(ctx.listener_stats, ctx.access_logs, ctx.tracer)
        self.detailed = self.observers.detailed
        self.settings = self.h2_settings = h2_settings(config)
        self.xfcc = XfccPolicy(
            config.forward_client_cert_details, config.set_current_client_cert_details
        )
        self.upstream_h1 = config.upstream_protocol == Protocol.HTTP1
        self.exchange = h1_exchange.exchange if self.upstream_h1 else h2_exchange.exchange
        self.auto_upstream = config.upstream_protocol == Protocol.AUTO
        # A stream the upstream refused and that is sent again counts as a retry (h2 to h2).
        self.counts_refused = not self.upstream_h1
        # A body streamed to an HTTP/1 upstream is not kept for a retry (-1: nothing is).
        self.retry_buffer_bytes = config.retry_buffer_bytes if not self.upstream_h1 else -1
        #: The listener's stream filters (``None``: none configured; the context says Any).
        self.filters: FilterChainFactory | None = ctx.stream_filters
        self.listener = ctx.listener
        # Unforwarded DATA is bounded by the receive windows (flow control); the budget
        # counts it, and bounds what is held beyond them (retry copies).
        self.budget = ctx.buffer_budget

    def on_connection(self, conn: Connection) -> Coroutine[Any, Any, None]:
        return self.serve(conn)

    async def serve(self, conn: Connection, prefix: bytes = b"") -> None:
        """Serve one connection; ``prefix``: its first bytes, already read (detection)."""
        codec = H2Connection(client_side=False, settings=self.settings)
        codec.initiate()
        xfcc = self.xfcc.for_connection(conn.tls)  # the same for all its streams
        async with trio.open_nursery() as nursery:

            def on_request(sid: int, event: RequestHeaders) -> None:
                if ep.active_streams == 1:
                    conn.idle.pause()  # a connection with streams in flight is not idle
                nursery.start_soon(self._stream, ep, conn, sid, event, xfcc)

            def on_drain(_: Connection) -> None:
                # A GOAWAY naming the last stream seen would refuse the requests the client
                # sent before reading it: announce first, refuse only a grace later.
                ep.announce_drain()
                nursery.start_soon(finish_drain)

            async def finish_drain() -> None:
                await trio.sleep(DRAIN_GOAWAY_GRACE)
                ep.start_drain()  # GOAWAY: streams in flight finish, no new ones
                if ep.active_streams == 0:
                    ep.close()

            ep = H2Endpoint(
                conn.stream,
                codec,
                on_request=on_request,
                budget=self.budget.connection(),
                stats=self.stats,
            )
            conn.on_drain = on_drain
            if conn.draining:  # drained while its protocol was being detected
                on_drain(conn)
            await ep.run(prefix)
            # The connection is over: streams still waiting on their upstream are cut.
            nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ one stream

    async def _stream(
        self,
        ep: H2Endpoint,
        conn: Connection,
        sid: int,
        event: RequestHeaders,
        xfcc: ConnectionXfcc,
    ) -> None:
        channel = ep.channels.get(sid)
        if channel is None:
            return  # reset before its task ran
        info = RequestRecord()
        info.start = _monotonic()
        info.protocol = "HTTP/2"
        self.stats.downstream_rq_active += 1  # until ``observers.end`` below
        stream = _Stream(self, ep, conn, sid, channel, info)
        body = RequestBody(stream)
        try:
            # One scope for the stream: a downstream reset cancels it, and its deadline is the
            # route timeout (set once the route is known).
            with trio.CancelScope() as scope:
                channel.scope = scope
                await stream.handle(event, scope, body, xfcc)
            if scope.cancelled_caught:
                if channel.error is None:
                    await stream.timed_out()
                else:
                    # the client reset the stream (or the connection went)
                    info.add_flag(Flag.DOWNSTREAM_RESET)
        except StreamGone:
            info.add_flag(Flag.DOWNSTREAM_RESET)
        except Exception:
            log.exception("http2 stream %d failed", sid)
            ep.reset(sid, ErrorCode.INTERNAL_ERROR)
        finally:
            body.forget()
            # A chunk read but never passed on (the try failed or timed out in its send):
            # its bytes leave the budget and its credit goes back, as unread DATA's does.
            stream.sent()
            ep.close_stream(sid)
            if ep.active_streams == 0:
                if ep.draining:
                    ep.close()
                else:
                    conn.idle.touch()
            self.observers.end(info)


class _Stream:
    """One downstream stream (its task holds the only reference): the lifecycle's
    ``Downstream``, its request's ``BodySource`` and its response's ``ResponseSink``."""

    __slots__ = (
        "_continue",
        "_continued",
        "_kept",
        "_owed",
        "_route",
        "chain",
        "conn",
        "ended",
        "ep",
        "finished",
        "grpc",
        "channel",
        "info",
        "proxy",
        "request",
        "request_trailers",
        "scope",
        "sid",
        "started",
        "xfcc",
    )

    #: ResponseSink: each write goes to the connection's writer at once.
    buffers = False
    #: BodySource: the body goes up while the response comes down (gRPC streams both ways).
    duplex = True

    def __init__(
        self,
        proxy: Http2Proxy,
        ep: H2Endpoint,
        conn: Connection,
        sid: int,
        channel: StreamChannel,
        info: RequestRecord,
    ) -> None:
        self.proxy = proxy
        self.ep = ep
        self.conn = conn
        self.sid = sid
        self.channel = channel
        self.info = info
        self.started = False  # response headers went downstream
        self.xfcc: ConnectionXfcc = DROP  # the connection's, set by ``handle``
        self.grpc = False
        #: The parsed request head (`_UNPARSED` until `handle` parsed it: only a 400 reads it).
        self.request = _UNPARSED
        #: The stream's cancel scope: its deadline is the route timeout.
        self.scope: trio.CancelScope | None = None
        #: The request's stream filters (``None``: none configured, or none for it).
        self.chain: StreamFilterChain | None = None
        #: The request ended with its headers (no body).
        self.ended = False
        self._route: Route | None = None
        # BodySource: the last chunk read (``request_trailers``: the request's trailers)
        self.finished = False
        self.request_trailers: list[tuple[bytes, bytes]] | None = None
        self._owed = 0  # credit of DATA read but not yet passed on
        self._kept = 0  # bytes kept for a retry, counted in the connection's budget
        self._continue = False  # answer "100 Continue" when the body is first read
        self._continued = False  # a "100 Continue" went down (once, whatever the tries)

    async def handle(
        self,
        event: RequestHeaders,
        scope: trio.CancelScope,
        body: RequestBody,
        xfcc: ConnectionXfcc,
    ) -> None:
        """Answer the request; ``scope``: the stream's, whose deadline is the route timeout;
        ``body``: the request's, over this stream (which keeps no reference to it: no cycle);
        ``xfcc``: what the connection does with x-forwarded-client-cert (before routing)."""
        proxy = self.proxy
        info = self.info
        self.scope = scope
        self.xfcc = xfcc  # for the request's trailers
        try:
            req = self.request = request_from_h2(event.headers, drop_xfcc=xfcc.drop)
        except H2HeaderError as exc:
            log.info("http2 stream %d: bad request: %s", self.sid, exc)
            await self.reply(Reply(400, Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc).encode() + b"\n"))
            return
        if xfcc.value is not None:
            xfcc.apply(req.headers)
        self.grpc = grpc = is_grpc(req.headers)
        view = RequestView()
        view.protocol = "HTTP/2"
        view.method = req.method
        view.target = req.path
        view.authority = req.authority
        view.host = host = req.authority.decode("latin-1") if req.authority else ""
        view.path, _, view.query = req.path.decode("latin-1").partition("?")
        view.headers = req.headers
        view.end = event.end_stream
        view.grpc = grpc
        if proxy.detailed:
            info.start_time = time.time()
            info.method = req.method.decode("latin-1")
            info.path = req.path.decode("latin-1")
            info.authority = host or None
            remote, local = self.conn.remote, self.conn.local
            info.downstream_remote_address = format_hostport(*remote[:2]) if remote else None
            info.downstream_local_address = format_hostport(*local[:2]) if local else None
            info.tls = self.conn.tls
            for name, value in req.headers:
                if name == b"user-agent":
                    info.user_agent = value.decode("latin-1")
        if event.end_stream:
            self.finished = True
            info.request_received_duration = _monotonic() - info.start
        self.ended = event.end_stream
        body.reset(event.end_stream, proxy.retry_buffer_bytes)
        await lifecycle.handle(proxy, self, view, info, body, self)

    async def timed_out(self) -> None:
        """The route timeout (the stream scope's deadline) fired."""
        cluster = self.proxy.clusters.clusters.get(self.info.upstream_cluster or "")
        if cluster is not None:
            cluster.stats.upstream_rq_timeout += 1
        if not self.started:
            await self.reply(TIMEOUT)
        else:
            self.info.add_flag(Flag.UPSTREAM_TIMEOUT)
            self.ep.reset(self.sid, ErrorCode.CANCEL)

    # ------------------------------------------------------------------ Downstream

    def peer(self) -> str | None:
        remote = self.conn.remote
        return format_hostport(*remote[:2]) if remote else None

    def original_dst(self) -> tuple[str, int] | None:
        return self.conn.original_dst

    def filter_context(self, route: Route | None, cluster: str | None) -> RequestContext:
        req = self.request
        conn = self.conn
        return RequestContext(
            "HTTP/2",
            method=req.method,
            path=req.path,
            authority=req.authority or "",
            route=route,
            cluster=cluster,
            downstream_remote=conn.remote,
            downstream_local=conn.local,
            listener=self.proxy.listener,
            grpc=self.grpc,
            tls=conn.tls,
        )

    async def filter_reply(self, reply: LocalReply) -> None:
        """Answer with a filter's reply; once the response began, the stream can only be cut.
        ``reply.close``: GOAWAY now (no new streams), the connection closes once the streams
        in flight are done."""
        if self.started:
            self.cut(Flag.FILTER_FAILED)
        else:
            await self.reply(Reply.from_filter(reply))
        if reply.close:
            self.ep.start_drain()

    def arm_route(self, timeout: float | None) -> None:
        timeout = timeout or None
        if self.grpc:
            deadline = grpc_timeout(self.request.headers)
            if deadline is not None and (timeout is None or deadline < timeout):
                timeout = deadline
        if timeout is not None and self.scope is not None:
            self.scope.deadline = trio.current_time() + timeout

    def try_scope(self, timeout: float) -> trio.CancelScope:
        return trio.CancelScope(deadline=trio.current_time() + timeout)

    def end_route(self) -> None:
        pass  # the stream's scope ends with the stream

    def route_expired(self) -> bool:
        scope = self.scope
        return scope is not None and scope.cancel_called and trio.current_time() >= scope.deadline

    def upstream_request(self, route: Route, info: RequestRecord) -> UpstreamRequest:
        """Regular headers for the upstream, forwarding headers added, mutations applied; for
        an HTTP/1 upstream, the body's framing from what the codec checked."""
        self._route = route
        config = self.proxy.config
        req = self.request
        out: list[tuple[bytes, bytes]] = []
        xff = None
        request_id = None
        for name, value in req.headers:
            if name == b"x-forwarded-for" and config.add_x_forwarded_for:
                xff = value if xff is None else xff + b", " + value
                continue
            if name == b"x-forwarded-proto" and config.add_x_forwarded_proto:
                continue
            if name == b"x-request-id":
                request_id = value
            out.append((name, value))
        remote = self.conn.remote
        if config.add_x_forwarded_for and remote:
            ip = remote[0].encode("latin-1")
            out.append((b"x-forwarded-for", ip if xff is None else xff + b", " + ip))
        if config.add_x_forwarded_proto:
            out.append((b"x-forwarded-proto", b"http" if self.conn.tls is None else b"https"))
        if request_id is None and config.generate_request_id:
            request_id = b"%032x" % _getrandbits(128)
            out.append((b"x-request-id", request_id))
        info.request_id = request_id.decode("latin-1") if request_id else None
        if route.request_headers_to_add or route.request_headers_to_remove:
            out = apply_header_mutations(
                out, route.request_headers_to_add, route.request_headers_to_remove
            )
        view_path, _, query = req.path.decode("latin-1").partition("?")
        new_path = route.rewrite_path(view_path)
        up = UpstreamRequest()
        up.method = req.method
        up.scheme = req.scheme or b"http"
        up.target = (new_path + "?" + query if query else new_path).encode("latin-1")
        up.headers = out
        if route.host_rewrite is not None:
            up.authority = route.host_rewrite.encode("latin-1")
        elif route.auto_host_rewrite or not req.authority:
            up.authority = None  # the chosen host's address
        else:
            up.authority = req.authority
        up.head_request = req.method == b"HEAD"
        if self.proxy.upstream_h1:
            self._h1_framing(up)
        elif self.proxy.auto_upstream:
            # Auto may go to an HTTP/1 upstream (a TLS host whose ALPN said so): its framing,
            # made from what the codec checked. (Expect: 100-continue is left to the client's
            # own timeout there: the HTTP/2 exchange forwards it.)
            self._h1_framing(up, answer_continue=False)
        return up

    def _h1_framing(self, up: UpstreamRequest, answer_continue: bool = True) -> None:
        """The framing is the encoder's, from what the codec checked: request_from_h2 left at
        most one content-length, all digits, and h2 holds the DATA to it (a stream error
        otherwise); no body when the headers ended the stream. A request filter that took it
        off (it changes the body's length), or anything that left it doubtful, makes the body
        chunked, as a body of unknown length is."""
        length: int | None = None
        lengths = 0
        for name, value in up.headers:
            if name == b"content-length":
                lengths += 1
                if value.isdigit():
                    length = int(value)
            elif name == b"expect" and answer_continue:
                # answered here, as the HTTP/1 side does: the body goes up without waiting
                self._continue = value.lower() == b"100-continue"
        ended = self.ended
        if ended:
            length = 0 if lengths else None
            self._continue = False
        elif lengths != 1:
            length = None
        up.length = length
        up.chunked = not ended and length is None

    async def reply(
        self,
        reply: Reply,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        route: Route | None = None,
    ) -> None:
        await self._local(reply, headers=headers, route=route)

    # ------------------------------------------------------------------ BodySource

    async def read(self) -> bytes:
        if self._continue:
            self._continue = False
            self._continued = True
            self.ep.send_headers(self.sid, [(b":status", b"100")])
        info = self.info
        while True:
            event = await self.channel.get()
            if type(event) is Data:
                data = event.data
                info.bytes_received += len(data)
                self._owed += event.flow_length
                if event.end_stream:
                    self.finished = True
                    info.request_received_duration = _monotonic() - info.start
                return data
            if type(event) is Trailers:
                self.finished = True
                trailers = event.headers
                self.request_trailers = self.xfcc.trailers(trailers) if trailers else trailers
                info.request_received_duration = _monotonic() - info.start
                return b""

    def sent(self) -> None:
        if self._owed:  # passed on: the client may send more
            self.ep.consumed(self.sid, self._owed)
            self._owed = 0

    def keep(self, n: int) -> bool:
        """Count ``n`` more bytes kept for a retry, if they fit the budgets: bytes whose
        credit went back to the client are held beyond its window only within them."""
        budget = self.ep.budget
        if budget is None:
            return True
        if not budget.fits(n):
            return False
        budget.take(n)
        budget.admit(n)
        self._kept += n
        return True

    def forget(self, n: int) -> None:
        """No retry will replay the body: what was kept leaves the budget."""
        kept = self._kept
        budget = self.ep.budget
        if kept and budget is not None:  # only counted when there is a budget (`keep`)
            self._kept = 0
            budget.give(kept)
            budget.unreserve(kept)

    # ------------------------------------------------------------------ ResponseSink

    def waiting(self) -> None:
        pass  # a connection with streams in flight is not idle already

    async def informational(
        self, status: int, reason: bytes | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if status == 100:
            if self._continued:  # each try's upstream says it: the client hears it once
                return
            self._continued = True
        if status != 101:
            self.ep.send_headers(self.sid, response_to_h2(status, headers))

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None:
        self.started = True
        info = self.info
        info.response_code = resp.status
        info.response_received_duration = _monotonic() - info.start
        # HTTP/2's own headers have no hop-by-hop fields (the codec refuses them)
        headers = resp.headers if resp.version == b"2" else strip_hop_by_hop(resp.headers)
        route = self._route
        if route is not None and (
            route.response_headers_to_add or route.response_headers_to_remove
        ):
            headers = apply_header_mutations(
                headers, route.response_headers_to_add, route.response_headers_to_remove
            )
        self.ep.send_headers(self.sid, response_to_h2(resp.status, headers), end)

    async def data(self, data: bytes, end: bool) -> None:
        self.info.bytes_sent += len(data)
        await self.ep.send_data(self.sid, data, end)

    async def trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        # fields HTTP/2 forbids (connection, keep-alive, ...) are dropped
        trailers = trailers_to_h2(trailers) if trailers else trailers
        if trailers:
            self.ep.send_trailers(self.sid, trailers)
        else:
            self.ep.end_stream(self.sid)

    async def flush(self) -> None:
        pass

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        """The response cannot go on: the client must see the stream fail, not end."""
        self.info.add_flag(flag)
        self.ep.reset(self.sid, code)

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None:
        raise AssertionError("HTTP/2 requests ask for no Upgrade")  # req.upgrade is None

    # ------------------------------------------------------------------ local replies

    async def _local(
        self,
        reply: Reply,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        route: Route | None = None,
    ) -> None:
        """A reply made by the proxy, or by a filter (whose own headers, ``reply.headers``, go
        in a gRPC trailers-only response too; ``headers``, a redirect's, do not)."""
        status, flag, body = reply.status, reply.flag, reply.body
        info = self.info
        if flag:
            info.add_flag(flag)
        if self.started:  # too late for a reply: the stream can only be cut
            self.ep.reset(self.sid, ErrorCode.INTERNAL_ERROR)
            return
        info.response_code = status
        self.started = True
        if self.grpc:
            # gRPC clients read the status from grpc-status, not from :status (Envoy's way).
            info.response_code = 200
            self.ep.send_headers(self.sid, reply.grpc_trailers_only(reply.headers), end_stream=True)
            return
        if reply.headers:
            headers = [*reply.headers, *headers] if headers else reply.headers
        if headers and any(name == b"content-type" for name, _ in headers):
            out = [(b"content-length", b"%d" % len(body)), *headers]  # a filter's own type
        else:
            out = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
            if headers:
                out.extend(headers)
        if route is not None and (
            route.response_headers_to_add or route.response_headers_to_remove
        ):
            out = apply_header_mutations(
                out, route.response_headers_to_add, route.response_headers_to_remove
            )
        head_only = self.request.method == b"HEAD"
        if not body or head_only or status in _NO_BODY_STATUSES:
            self.ep.send_headers(self.sid, response_to_h2(status, out), end_stream=True)
            return
        self.ep.send_headers(self.sid, response_to_h2(status, out))
        info.bytes_sent += len(body)
        await self.ep.send_data(self.sid, body, end_stream=True)
