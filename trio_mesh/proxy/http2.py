"""The HTTP/2 proxy: every downstream stream is a task in its connection's nursery.

A stream's task routes the request, opens the upstream side (a stream on a pooled HTTP/2
connection, or an HTTP/1 connection from the HTTP/1 pool), and relays both directions at
once (gRPC streams are bidirectional), each chunk passed on before its flow-control credit
goes back to the sender: a slow reader anywhere slows the writer on the other side. Its
route timeout (capped by ``grpc-timeout``) is a cancel scope; a downstream RST_STREAM
cancels the task, whose exit resets the upstream stream, and an upstream reset is passed
downstream.

Stream filters (the listener's ``stream_filters``) run on both directions as in the HTTP/1
proxy: request headers before the router answers, request DATA and trailers on their way up
(filtered once: a retry replays the filtered bytes), response headers, DATA and trailers in
reverse order on their way down. A filter's `LocalReply` answers the stream (gRPC: a
trailers-only reply) while nothing of the response went; after that, the stream is reset.
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
from ..filters.stream import (
    FILTER_FAILED,
    REQUEST_DATA,
    REQUEST_HEADERS,
    REQUEST_TRAILERS,
    RESPONSE_DATA,
    RESPONSE_HEADERS,
    RESPONSE_TRAILERS,
    FilterChainFactory,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilterChain,
)
from ..network.connection import Connection
from ..network.h2 import H2Endpoint, Inbox, StreamGone
from ..network.stream import Stream
from ..protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    ResponseHead,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    strip_hop_by_hop,
)
from ..protocols.http2 import (
    Data,
    ErrorCode,
    H2Connection,
    H2HeaderError,
    H2Request,
    InformationalHeaders,
    RequestHeaders,
    ResponseHeaders,
    Trailers,
    request_from_h2,
    response_from_h2,
    response_to_h2,
    trailers_to_h2,
)
from ..router import Route, apply_header_mutations
from ..upstream import Cluster, Host, NoHostError
from .exchange import UpstreamFailed
from .exchange import http1 as h1_exchange
from .exchange import http2 as h2_exchange
from .grpc import grpc_timeout, is_grpc
from .headers import header_getter
from .observers import listener_observers
from .record import RequestRecord
from .replies import (
    BAD_RESPONSE,
    NO_CLUSTER,
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    OVERFLOW,
    TIMEOUT,
    UPSTREAM_RESET,
    Flag,
    Reply,
)
from .retry import RetryState
from .settings import h2_settings

log = logging.getLogger("trio_mesh.proxy.http2")

_NO_BODY_STATUSES = frozenset({204, 304})
_READ = 65536

#: A piece of the request body kept for a retry: DATA bytes, or the trailers that end it.
_Piece = bytes | list[tuple[bytes, bytes]]
#: `_Stream.request` until the request head parsed (a bad head is answered 400 from it).
_UNPARSED = H2Request(b"", b"", None, b"", [])


class _Reply(Exception):
    """Answer the stream with this local reply (nothing of the response went yet)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


class _FilterReply(Exception):
    """A stream filter answered (or failed): ``reply`` stands in for the upstream's response."""

    def __init__(self, reply: LocalReply) -> None:
        self.reply = reply


class _Refused(Exception):
    """The upstream did not process the stream: it may be sent again."""


class Http2Proxy:
    """The ``proxy`` network filter for ``downstream_protocol: Http2`` (h2c, prior knowledge)."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext) -> None:
        self.config = config
        self.table = ctx.routes[config.router_config_name]
        self.clusters = ctx.clusters
        self.pools = ctx.pools
        self.stats = ctx.listener_stats
        #: Where requests end (stats, access logs); ``detailed``: fill what only logs read.
        self.observers = listener_observers(ctx.listener_stats, ctx.access_logs)
        self.detailed = self.observers.detailed
        self.settings = h2_settings(config)
        self.upstream_h1 = config.upstream_protocol == Protocol.HTTP1
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
        async with trio.open_nursery() as nursery:

            def on_request(sid: int, event: RequestHeaders) -> None:
                if ep.active_streams == 1:
                    conn.idle.pause()  # a connection with streams in flight is not idle
                nursery.start_soon(self._stream, ep, conn, sid, event)

            def on_drain(_: Connection) -> None:
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
            await ep.run(prefix)
            # The connection is over: streams still waiting on their upstream are cut.
            nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ one stream

    async def _stream(
        self, ep: H2Endpoint, conn: Connection, sid: int, event: RequestHeaders
    ) -> None:
        inbox = ep.inboxes.get(sid)
        if inbox is None:
            return  # reset before its task ran
        info = RequestRecord()
        info.start = _monotonic()
        info.protocol = "HTTP/2"
        stream = _Stream(self, ep, conn, sid, inbox, info)
        try:
            # One scope for the stream: a downstream reset cancels it, and its deadline is the
            # route timeout (set once the route is known).
            with trio.CancelScope() as scope:
                inbox.scope = scope
                await stream.handle(event, scope)
            if scope.cancelled_caught:
                if inbox.error is None:
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
            stream.forget_replay()
            ep.close_stream(sid)
            if ep.active_streams == 0:
                if ep.draining:
                    ep.close()
                else:
                    conn.idle.touch()
            self.observers.end(info)


class _Stream:
    """The work of one downstream stream (its task holds the only reference)."""

    __slots__ = (
        "_body_done",
        "_body_reply",
        "_keep_alive",
        "_kept",
        "_owed",
        "_replay",
        "chain",
        "cluster",
        "conn",
        "ended",
        "ep",
        "grpc",
        "inbox",
        "info",
        "proxy",
        "request",
        "retry",
        "sid",
        "started",
    )

    def __init__(
        self,
        proxy: Http2Proxy,
        ep: H2Endpoint,
        conn: Connection,
        sid: int,
        inbox: Inbox,
        info: RequestRecord,
    ) -> None:
        self.proxy = proxy
        self.ep = ep
        self.conn = conn
        self.sid = sid
        self.inbox = inbox
        self.info = info
        self.started = False  # response headers went downstream
        self.grpc = False
        #: The parsed request head (`_UNPARSED` until `handle` parsed it: only a 400 reads it).
        self.request = _UNPARSED
        self._keep_alive = False
        self.cluster: Cluster | None = None
        self._replay: list[_Piece] | None = None
        self.ended = False  # the request has no body (its headers ended the stream)
        #: The request's ``RetryState`` (``None``: its route retries nothing).
        self.retry: RetryState | None = None
        self._kept = 0  # bytes of ``_replay`` counted in the connection's budget
        self._body_done = False
        self._owed = 0
        #: The request's stream filters (``None``: none configured, or none for it).
        self.chain: StreamFilterChain | None = None
        #: A request data or trailers hook answered while the body went up.
        self._body_reply: LocalReply | None = None

    async def handle(self, event: RequestHeaders, scope: trio.CancelScope) -> None:
        """Answer the request; ``scope``: the stream's, whose deadline is the route timeout."""
        proxy = self.proxy
        info = self.info
        try:
            req = self.request = request_from_h2(event.headers)
        except H2HeaderError as exc:
            log.info("http2 stream %d: bad request: %s", self.sid, exc)
            await self._local(Reply(400, Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc).encode() + b"\n"))
            return
        self.grpc = is_grpc(req.headers)
        path, _, query = req.path.decode("latin-1").partition("?")
        host = req.authority.decode("latin-1") if req.authority else ""
        if proxy.detailed:
            info.start_time = time.time()
            info.method = req.method.decode("latin-1")
            info.path = req.path.decode("latin-1")
            info.authority = host or None
            remote, local = self.conn.remote, self.conn.local
            info.downstream_remote_address = format_hostport(*remote[:2]) if remote else None
            info.downstream_local_address = format_hostport(*local[:2]) if local else None
            for name, value in req.headers:
                if name == b"user-agent":
                    info.user_agent = value.decode("latin-1")
        if event.end_stream:
            info.request_received_duration = _monotonic() - info.start
        header = header_getter(req.headers)
        route = proxy.table.match(host, path, query, header)
        if route is not None and proxy.detailed:
            info.route_name = route.name
        filters = proxy.filters
        if filters is not None:
            # Envoy's order: the filters run first, then the router answers (404, ...).
            cluster_name = None
            if route is not None and route.direct_response is None and route.redirect is None:
                cluster_name = route.pick_cluster(header)
            reply = await self._request_filters(filters, route, cluster_name, event.end_stream)
            if reply is not None:
                await self._filter_reply(reply)
                return
        else:
            cluster_name = None
        if route is None:
            await self._local(NO_ROUTE)
            return
        if route.direct_response is not None:
            status, body = route.direct_response
            await self._local(Reply(status, Flag.NONE, body), route=route)
            return
        if route.redirect is not None:
            status, location = route.redirect.location("http", host, path, query)
            await self._local(
                Reply(status, Flag.NONE, b""),
                headers=[(b"location", location.encode("latin-1"))],
                route=route,
            )
            return
        if filters is None:
            cluster_name = route.pick_cluster(header)
        cluster = proxy.clusters.clusters.get(cluster_name) if cluster_name else None
        if cluster is None:
            await self._local(NO_CLUSTER)
            return
        info.upstream_cluster = cluster.name
        timeout = route.timeout or None
        if self.grpc:
            deadline = grpc_timeout(req.headers)
            if deadline is not None and (timeout is None or deadline < timeout):
                timeout = deadline
        new_path = route.rewrite_path(path)
        target = (new_path + "?" + query if query else new_path).encode("latin-1")
        stats = cluster.stats
        self.cluster = cluster
        if timeout is not None:
            scope.deadline = trio.current_time() + timeout
        # The request body as sent upstream, kept (up to retry_buffer_bytes) so that a retry,
        # or a stream the upstream refused, can send it again; None once it outgrew that.
        ended = self.ended = event.end_stream
        self._replay = [] if not ended else None
        self._body_done = ended
        regular = self._request_headers(route)  # once: a retry sends the same request id
        # Made only for a route with a retry policy (nothing allocated otherwise).
        retry = self.retry = RetryState(route.retry, cluster) if route.retry is not None else None
        per_try = retry.per_try_timeout if retry is not None else None
        try:
            while True:
                stats.upstream_rq_total += 1
                # circuit_breakers.max_requests: requests outstanding to the cluster.
                if cluster.max_requests is not None and cluster.request_overflows():
                    await self._local(OVERFLOW)
                    return
                stats.upstream_rq_active += 1
                try:
                    try:
                        if per_try is None:
                            await self._try(route, cluster, target, regular)
                        else:
                            with trio.move_on_after(per_try) as scope:
                                await self._try(route, cluster, target, regular)
                            if scope.cancelled_caught:
                                if self.started:  # too late to retry: the stream is cut
                                    self.info.add_flag(Flag.UPSTREAM_TIMEOUT)
                                    self.ep.reset(self.sid, ErrorCode.CANCEL)
                                    return
                                raise _Reply(TIMEOUT)
                        return
                    finally:
                        stats.upstream_rq_active -= 1
                except _Reply as exc:
                    if (
                        retry is None
                        or self.started
                        or not (ended or self._replay is not None)
                        or not retry.should_retry(exc.reply)
                    ):
                        await self._local(exc.reply)
                        return
        except _FilterReply as exc:
            await self._filter_reply(exc.reply)
        finally:
            if retry is not None:
                retry.release()

    async def _try(
        self, route: Route, cluster: Cluster, target: bytes, regular: list[tuple[bytes, bytes]]
    ) -> None:
        """One try, over the configured upstream protocol."""
        if self.proxy.upstream_h1:
            await self._to_h1(route, cluster, target, regular)
        else:
            await self._to_h2(route, cluster, target, regular)

    def _hold_back(self, status: int) -> None:
        """A response the route retries is not sent down: the try fails with its status."""
        retry = self.retry
        if (
            retry is not None
            and (self.ended or self._replay is not None)
            and retry.retries_status(status)
        ):
            raise _Reply(Reply(status, Flag.NONE, b""))

    async def timed_out(self) -> None:
        """The route timeout (the stream scope's deadline) fired."""
        if self.cluster is not None:
            self.cluster.stats.upstream_rq_timeout += 1
        if not self.started:
            await self._local(TIMEOUT)
        else:
            self.info.add_flag(Flag.UPSTREAM_TIMEOUT)
            self.ep.reset(self.sid, ErrorCode.CANCEL)

    # ------------------------------------------------------------------ stream filters

    async def _request_filters(
        self,
        filters: FilterChainFactory,
        route: Route | None,
        cluster_name: str | None,
        end_stream: bool,
    ) -> LocalReply | None:
        """Make the stream's filter chain and run its request-headers hooks on the request's
        own regular header list (what they change goes upstream)."""
        req = self.request
        conn = self.conn
        context = RequestContext(
            "HTTP/2",
            method=req.method.decode("latin-1"),
            path=req.path.decode("latin-1"),
            authority=req.authority.decode("latin-1") if req.authority else "",
            route=route,
            cluster=cluster_name,
            downstream_remote=conn.remote,
            downstream_local=conn.local,
            listener=self.proxy.listener,
            grpc=self.grpc,
        )
        chain = filters.create(context)
        if chain is None:
            return None
        self.chain = chain
        if not chain.mask & REQUEST_HEADERS:
            return None
        return await chain.request_headers(Headers(req.headers), end_stream)

    async def _filter_reply(self, reply: LocalReply) -> None:
        """Answer with a filter's reply; once the response began, the stream can only be cut.
        ``reply.close``: GOAWAY now (no new streams), the connection closes once the streams
        in flight are done."""
        if self.started:
            self._cut()
        else:
            await self._local(Reply.from_filter(reply))
        if reply.close:
            self.ep.start_drain()

    def _cut(self) -> None:
        """A filter failed (or answered) after the response began: the client must see the
        stream fail, not end."""
        self.info.add_flag(Flag.FILTER_FAILED)
        self.ep.reset(self.sid, ErrorCode.INTERNAL_ERROR)

    async def _filter_body(self, chain: StreamFilterChain, data: bytes, last: bool) -> bytes:
        out = await chain.request_data(data, last)
        if isinstance(out, LocalReply):
            raise _FilterReply(out)
        return out

    async def _filter_request_trailers(
        self, chain: StreamFilterChain, trailers: list[tuple[bytes, bytes]]
    ) -> None:
        reply = await chain.request_trailers(Headers(trailers))
        if reply is not None:
            raise _FilterReply(reply)

    async def _filter_response_head(
        self,
        chain: StreamFilterChain,
        status: int,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], bool]:
        """The response-headers hooks (before anything goes downstream, so that a reply can
        replace the response): the status and headers to send, and whether the data hooks
        are to see the body (not when the head ends the stream)."""
        data_hooks = not end_stream and bool(chain.mask & RESPONSE_DATA)
        if not chain.mask & RESPONSE_HEADERS:
            return status, headers, data_hooks
        view = Headers(headers, status)
        reply = await chain.response_headers(view, end_stream)
        if reply is not None:
            raise _FilterReply(reply)
        new = view.status or status
        if new != status and (type(new) is not int or not 200 <= new <= 999):
            log.error("http2 stream %d: a response filter set status %r", self.sid, new)
            raise _FilterReply(LocalReply(500, FILTER_FAILED, flag=Flag.FILTER_FAILED))
        return new, view.raw, data_hooks

    async def _filter_response_end(
        self,
        chain: StreamFilterChain,
        trailers: list[tuple[bytes, bytes]] | None,
        data_hooks: bool,
    ) -> bool:
        """Before the response ends (with ``trailers``, or none): the data hooks' last piece,
        sent, then the trailers hooks. False: a filter failed, the stream is to be cut."""
        if data_hooks:
            tail = await chain.response_data(b"", True)
            if isinstance(tail, LocalReply):
                return False
            if tail:
                self.info.bytes_sent += len(tail)
                await self.ep.send_data(self.sid, tail)
        if trailers and chain.mask & RESPONSE_TRAILERS:
            if await chain.response_trailers(Headers(trailers)) is not None:
                return False
        return True

    # ------------------------------------------------------------------ upstream headers

    def _request_headers(self, route: Route) -> list[tuple[bytes, bytes]]:
        """Regular headers for the upstream, forwarding headers added, mutations applied."""
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
            out.append((b"x-forwarded-proto", b"http"))
        if request_id is None and config.generate_request_id:
            request_id = b"%032x" % _getrandbits(128)
            out.append((b"x-request-id", request_id))
        self.info.request_id = request_id.decode("latin-1") if request_id else None
        if route.request_headers_to_add or route.request_headers_to_remove:
            out = apply_header_mutations(
                out, route.request_headers_to_add, route.request_headers_to_remove
            )
        return out

    def _authority(self, route: Route, host_label: bytes) -> bytes:
        if route.host_rewrite is not None:
            return route.host_rewrite.encode("latin-1")
        if route.auto_host_rewrite or not self.request.authority:
            return host_label
        return self.request.authority

    def _choose(self, cluster: Cluster) -> Host:
        retry = self.retry
        try:
            return cluster.choose_host() if retry is None else retry.choose_host()
        except NoHostError:
            raise _Reply(NO_HEALTHY_UPSTREAM) from None

    # ------------------------------------------------------------------ HTTP/2 upstream

    async def _to_h2(
        self, route: Route, cluster: Cluster, target: bytes, regular: list[tuple[bytes, bytes]]
    ) -> None:
        ended = self.ended
        for attempt in range(2):
            try:
                await self._h2_try(route, cluster, target, regular)
                return
            except _Refused:
                # The upstream never processed the stream (REFUSED_STREAM, or beyond its
                # GOAWAY): safe to send again, once, with the body so far replayed.
                if attempt or (not ended and self._replay is None):
                    raise _Reply(UPSTREAM_RESET) from None
                cluster.stats.upstream_rq_retry += 1

    async def _h2_try(
        self,
        route: Route,
        cluster: Cluster,
        target: bytes,
        regular: list[tuple[bytes, bytes]],
    ) -> None:
        host = self._choose(cluster)
        self.info.upstream_host = host.label
        chain = self.chain
        if chain is not None:
            self._chosen(chain, host.label)
        pool = self.proxy.pools.http2(cluster, host, self.proxy.settings)
        try:
            up, usid, uinbox = await h2_exchange.open_stream(pool)
        except UpstreamFailed as exc:
            raise _Reply(exc.reply) from None
        if self.proxy.detailed:
            self.info.upstream_connect_duration = _monotonic() - self.info.start
        req = self.request
        headers = [
            (b":method", req.method),
            (b":scheme", req.scheme or b"http"),
            (b":authority", self._authority(route, host.label_bytes)),
            (b":path", target),
            *regular,
        ]
        replay = self._replay
        host.active_requests += 1
        failure: Exception | None = None
        try:
            up.send_headers(usid, headers, end_stream=replay is None)
            if replay is None:
                await self._h2_response(route, up, usid, uinbox)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._h2_request_body, up, usid, list(replay), nursery.cancel_scope
                )
                try:
                    await self._h2_response(route, up, usid, uinbox)
                except (_Reply, _Refused, _FilterReply) as exc:
                    failure = exc  # raised below, not wrapped in the nursery's group
                # The response is complete (or failed): what the client still sends has no
                # reader on this stream.
                nursery.cancel_scope.cancel()
        finally:
            host.active_requests -= 1
            up.close_stream(usid)  # resets the upstream stream if it is still open
        if self._body_reply is not None:
            # A request filter answered mid-upload (the response side was cancelled).
            raise _FilterReply(self._body_reply)
        if failure is not None:
            raise failure

    async def _h2_request_body(
        self, up: H2Endpoint, usid: int, resend: list[_Piece], scope: trio.CancelScope
    ) -> None:
        """Pump the request body upstream: first what an earlier, refused try sent (``resend``),
        then the rest as it arrives, each piece recorded for a retry before it is sent (after
        the request filters: a retry does not filter again). A filter's reply cancels
        ``scope`` (the try) and is left in ``_body_reply``."""
        ep, sid, inbox, info = self.ep, self.sid, self.inbox, self.info
        limit = self.proxy.config.retry_buffer_bytes
        chain = self.chain
        data_hooks = chain is not None and chain.mask & REQUEST_DATA != 0
        try:
            for piece in resend:
                if isinstance(piece, bytes):  # narrows to the trailers below (cold: a retry)
                    await up.send_data(usid, piece)
                else:
                    up.send_trailers(usid, piece)
            if self._owed:  # credit of a piece the failed try never finished sending
                ep.consumed(sid, self._owed)
                self._owed = 0
            if self._body_done:
                if not resend or type(resend[-1]) is bytes:
                    up.end_stream(usid)
                return
            kept = sum(len(p) for p in resend if type(p) is bytes)
            while True:
                event = await inbox.get()
                replay = self._replay
                if type(event) is Data:
                    data = event.data
                    info.bytes_received += len(data)
                    if data_hooks and chain is not None:
                        data = await self._filter_body(chain, data, event.end_stream)
                    if replay is not None:
                        kept += len(data)
                        if kept <= limit and self._keep(len(data)):
                            replay.append(data)
                        else:
                            self.forget_replay()
                    if event.end_stream:
                        self._body_done = True
                    self._owed += event.flow_length
                    await up.send_data(usid, data, event.end_stream)
                    ep.consumed(sid, self._owed)  # passed on: the client may send more
                    self._owed = 0
                    if event.end_stream:
                        break
                elif type(event) is Trailers:
                    if chain is not None:
                        await self._filter_h2_trailers(chain, up, usid, event.headers, data_hooks)
                        replay = self._replay
                    if replay is not None:
                        replay.append(event.headers)
                    self._body_done = True
                    up.send_trailers(usid, event.headers)
                    break
            info.request_received_duration = _monotonic() - info.start
        except StreamGone:
            # The client reset (the stream's scope is cancelled already), or the upstream
            # stream ended first (it answered early or was reset): the response side says
            # what happens next.
            pass
        except _FilterReply as exc:
            self._body_reply = exc.reply
            scope.cancel()

    def _keep(self, n: int) -> bool:
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

    def forget_replay(self) -> None:
        """No retry will replay the body: what was kept leaves the budget."""
        self._replay = None
        kept = self._kept
        budget = self.ep.budget
        if kept and budget is not None:  # only counted when there is a budget (`_keep`)
            self._kept = 0
            budget.give(kept)
            budget.unreserve(kept)

    async def _filter_h2_trailers(
        self,
        chain: StreamFilterChain,
        up: H2Endpoint,
        usid: int,
        trailers: list[tuple[bytes, bytes]],
        data_hooks: bool,
    ) -> None:
        """Before request trailers go up: the data hooks' last piece (sent and kept for a
        retry), then the trailers hooks."""
        if data_hooks:
            tail = await self._filter_body(chain, b"", True)
            if tail:
                replay = self._replay
                if replay is not None:
                    kept = sum(len(p) for p in replay if type(p) is bytes) + len(tail)
                    if kept <= self.proxy.config.retry_buffer_bytes and self._keep(len(tail)):
                        replay.append(tail)
                    else:
                        self.forget_replay()
                await up.send_data(usid, tail)
        if chain.mask & REQUEST_TRAILERS:
            await self._filter_request_trailers(chain, trailers)

    async def _h2_response(self, route: Route, up: H2Endpoint, usid: int, uinbox: Inbox) -> None:
        ep, sid, info = self.ep, self.sid, self.info
        chain = self.chain
        data_hooks = False  # the response data hooks see this body (known from the head)
        while True:
            try:
                event = await uinbox.get()
            except StreamGone as exc:
                if uinbox.error is not exc and self.inbox.error is not None:
                    raise
                if not self.started:
                    if exc.refused:
                        raise _Refused() from None
                    raise _Reply(UPSTREAM_RESET) from None
                info.add_flag(Flag.UPSTREAM_RESET)  # upstream reset mid-response: pass the reset on
                ep.reset(sid, exc.code if exc.code != ErrorCode.NO_ERROR else ErrorCode.CANCEL)
                return
            # `type(...) is`, not a local `kind`: the checker narrows only this form (and
            # it costs the same per event: Data, the common one, is the first test).
            if type(event) is Data:
                data = event.data
                if data_hooks and chain is not None:
                    out = await chain.response_data(data, event.end_stream)
                    if isinstance(out, LocalReply):
                        self._cut()
                        return
                    data = out
                info.bytes_sent += len(data)
                await ep.send_data(sid, data, event.end_stream)
                up.consumed(usid, event.flow_length)
                if event.end_stream:
                    return
            elif type(event) is ResponseHeaders:
                try:
                    status, headers = response_from_h2(event.headers)
                except H2HeaderError:
                    raise _Reply(BAD_RESPONSE) from None
                if self.retry is not None:
                    self._hold_back(status)
                if chain is not None:
                    status, headers, data_hooks = await self._filter_response_head(
                        chain, status, headers, event.end_stream
                    )
                self._response_started(status)
                if route.response_headers_to_add or route.response_headers_to_remove:
                    headers = apply_header_mutations(
                        headers, route.response_headers_to_add, route.response_headers_to_remove
                    )
                ep.send_headers(sid, response_to_h2(status, headers), event.end_stream)
                if event.end_stream:
                    return
            elif type(event) is Trailers:
                if chain is not None and not await self._filter_response_end(
                    chain, event.headers, data_hooks
                ):
                    self._cut()
                    return
                ep.send_trailers(sid, event.headers)
                return
            elif type(event) is InformationalHeaders:
                ep.send_headers(sid, event.headers)

    def _chosen(self, chain: StreamFilterChain, label: str) -> None:
        """The filters learn the upstream host (and the request id) before the response."""
        context = chain.context
        context.upstream_host = label
        context.request_id = self.info.request_id

    def _response_started(self, status: int) -> None:
        self.forget_replay()  # the upstream took the stream: no retry replays the body
        self.started = True
        self.info.response_code = status
        self.info.response_received_duration = _monotonic() - self.info.start

    # ------------------------------------------------------------------ HTTP/1 upstream

    async def _to_h1(
        self, route: Route, cluster: Cluster, target: bytes, regular: list[tuple[bytes, bytes]]
    ) -> None:
        req = self.request
        ended = self.ended
        host = self._choose(cluster)
        self.info.upstream_host = host.label
        headers = [(b"host", self._authority(route, host.label_bytes))]
        length: int | None = None
        lengths = 0
        expect_continue = False
        chain = self.chain
        if chain is not None:
            self._chosen(chain, host.label)
        # The framing is the encoder's, from what the codec checked: request_from_h2 left at
        # most one content-length, all digits, and h2 holds the DATA to it (a stream error
        # otherwise); no body when the headers ended the stream. A request filter that took
        # it off (it changes the body's length), or anything that left it doubtful, makes
        # the body chunked, as a body of unknown length is.
        for name, value in regular:
            if name == b"content-length":
                lengths += 1
                if value.isdigit():
                    length = int(value)
            elif name == b"te":
                continue  # "te: trailers" is HTTP/2's business
            elif name == b"expect":
                # answered here, as the HTTP/1 side does: the body goes up without waiting
                expect_continue = value.lower() == b"100-continue"
            else:
                headers.append((name, value))
        if ended:
            length = 0 if lengths else None
        elif lengths != 1:
            length = None
        chunked = not ended and length is None
        wire = encode_request_head(req.method, target, headers, length=length, chunked=chunked)
        pool = self.proxy.pools.http1(cluster, host)
        fresh = False
        while True:
            conn = None if fresh else pool.take_idle()
            reused = conn is not None
            if conn is None:
                try:
                    conn, reused = await h1_exchange.acquire(pool, fresh)
                except UpstreamFailed as exc:
                    raise _Reply(exc.reply) from None
            if self.proxy.detailed:
                self.info.upstream_connect_duration = _monotonic() - self.info.start
            reusable = False
            host.active_requests += 1
            try:
                await conn.stream.send_all(wire)
                if not ended:
                    self.forget_replay()  # streamed, not kept: no retry can resend it
                    if expect_continue:
                        expect_continue = False
                        self.ep.send_headers(self.sid, [(b":status", b"100")])
                    await self._h1_request_body(conn.stream, chunked)
                reusable = await self._h1_response(route, conn.stream, req.method == b"HEAD")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if not self.started:
                    if reused and ended and not fresh:
                        # The keep-alive race: the upstream closed the idle connection as we
                        # reused it. Nothing was consumed: once more on a new connection.
                        fresh = True
                        continue
                    raise _Reply(UPSTREAM_RESET) from None
                self.info.add_flag(Flag.UPSTREAM_TERMINATION)
                self.ep.reset(self.sid, ErrorCode.INTERNAL_ERROR)
                return
            finally:
                host.active_requests -= 1
                if reusable:
                    pool.release(conn, True)
                else:
                    pool.close(conn)

    async def _h1_request_body(self, upstream: Stream, chunked: bool) -> None:
        ep, sid, inbox, info = self.ep, self.sid, self.inbox, self.info
        chain = self.chain
        data_hooks = chain is not None and chain.mask & REQUEST_DATA != 0
        while True:
            event = await inbox.get()
            if type(event) is Data:
                data = event.data
                info.bytes_received += len(data)
                if data_hooks and chain is not None:
                    data = await self._filter_body(chain, data, event.end_stream)
                if data:
                    await upstream.send_all(encode_chunk(data) if chunked else data)
                ep.consumed(sid, event.flow_length)
                if event.end_stream:
                    if chunked:
                        await upstream.send_all(encode_last_chunk(None))
                    break
            elif type(event) is Trailers:
                if chain is not None:
                    if data_hooks:
                        tail = await self._filter_body(chain, b"", True)
                        if tail:
                            await upstream.send_all(encode_chunk(tail) if chunked else tail)
                    if chain.mask & REQUEST_TRAILERS:
                        await self._filter_request_trailers(chain, event.headers)
                if chunked:
                    await upstream.send_all(encode_last_chunk(event.headers))
                break
        info.request_received_duration = _monotonic() - info.start

    async def _h1_response(self, route: Route, upstream: Stream, head_request: bool) -> bool:
        """Relay the HTTP/1 response as HTTP/2; returns whether the connection is reusable."""
        ep, sid, info = self.ep, self.sid, self.info
        parser = ResponseParser(head_request=head_request)
        got = False
        chain = self.chain
        data_hooks = False  # the response data hooks see this body (known from the head)
        while True:
            data = await upstream.receive_some(_READ)
            try:
                events = parser.feed(data) if data else parser.feed_eof() if got else None
            except H1Error:
                if not self.started:
                    raise _Reply(BAD_RESPONSE) from None
                info.add_flag(Flag.UPSTREAM_PROTOCOL_ERROR)
                ep.reset(sid, ErrorCode.INTERNAL_ERROR)
                return False
            if events is None:
                raise trio.BrokenResourceError("upstream closed before a response")
            got = True
            last = len(events) - 1
            for i, event in enumerate(events):
                # `type(...) is`, not a local `kind`: the checker narrows only this form.
                if type(event) is Body:
                    data = event.data
                    # The last chunk carries END_STREAM itself: one frame less.
                    if i < last and type(nxt := events[i + 1]) is EndOfMessage and not nxt.trailers:
                        if data_hooks and chain is not None:
                            out = await chain.response_data(data, True)
                            if isinstance(out, LocalReply):
                                self._cut()
                                return False
                            data = out
                        info.bytes_sent += len(data)
                        await ep.send_data(sid, data, end_stream=True)
                        return parser.complete and not parser.trailing and self._keep_alive
                    if data_hooks and chain is not None:
                        out = await chain.response_data(data, False)
                        if isinstance(out, LocalReply):
                            self._cut()
                            return False
                        data = out
                    info.bytes_sent += len(data)
                    await ep.send_data(sid, data)
                elif type(event) is EndOfMessage:
                    # fields HTTP/2 forbids (connection, keep-alive, ...) are dropped
                    trailers = trailers_to_h2(event.trailers) if event.trailers else None
                    if chain is not None and not await self._filter_response_end(
                        chain, trailers, data_hooks
                    ):
                        self._cut()
                        return False
                    if trailers:
                        ep.send_trailers(sid, trailers)
                    else:
                        ep.end_stream(sid)
                    return parser.complete and not parser.trailing and self._keep_alive
                elif type(event) is ResponseHead:
                    if event.status >= 200:
                        if self.retry is not None:
                            self._hold_back(event.status)
                        if chain is None:
                            self._send_h1_head(route, event)
                        else:
                            data_hooks = await self._filtered_h1_head(
                                chain, route, event, head_request
                            )
                    elif event.status != 101:
                        ep.send_headers(sid, response_to_h2(event.status, event.headers))

    def _send_h1_head(self, route: Route, resp: ResponseHead) -> None:
        self._response_started(resp.status)
        self._keep_alive = resp.keep_alive
        headers = strip_hop_by_hop(resp.headers)
        if route.response_headers_to_add or route.response_headers_to_remove:
            headers = apply_header_mutations(
                headers, route.response_headers_to_add, route.response_headers_to_remove
            )
        self.ep.send_headers(self.sid, response_to_h2(resp.status, headers))

    async def _filtered_h1_head(
        self, chain: StreamFilterChain, route: Route, resp: ResponseHead, head_request: bool
    ) -> bool:
        """``_send_h1_head`` after the response-headers hooks (which may change the status and
        the headers, or replace the response); whether the data hooks see the body."""
        empty = head_request or resp.status in _NO_BODY_STATUSES or resp.content_length == 0
        status, headers, data_hooks = await self._filter_response_head(
            chain, resp.status, strip_hop_by_hop(resp.headers), empty
        )
        self._response_started(status)
        self._keep_alive = resp.keep_alive
        if route.response_headers_to_add or route.response_headers_to_remove:
            headers = apply_header_mutations(
                headers, route.response_headers_to_add, route.response_headers_to_remove
            )
        self.ep.send_headers(self.sid, response_to_h2(status, headers))
        return data_hooks

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
