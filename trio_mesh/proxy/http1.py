"""The HTTP/1.1 downstream adapter: one connection's requests, in order, in its own task.

No task or nursery per request (DESIGN.md): the connection task reads a request head, turns
it into the lifecycle's request view (``lifecycle.RequestView``) and runs the one request
lifecycle (``lifecycle.handle``), then loops for the next request. The session is the
request's body source (its parsed body events, ``100 Continue`` when first asked) and its
response sink (each read's worth of response written in one send; an upstream HTTP/1 head
that needs no change goes down verbatim), and writes local replies as HTTP/1. The route
timeout is the connection scope's deadline (``IdleTimer.arm_route``): its 504 is answered
here, from the Cancelled it raises; per-try timeouts start once the whole request is in.
"""

from __future__ import annotations

import logging
import math
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
    REQUEST_HEADERS,
    FilterChainFactory,
    LocalReply,
    RequestContext,
    StreamFilterChain,
)
from ..network.connection import DRAIN_IDLE_GRACE, Connection
from ..network.relay import CHUNK, relay
from ..network.stream import Stream
from ..protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    ResponseHead,
    encode_chunk,
    encode_last_chunk,
    encode_response_head,
    strip_hop_by_hop,
)
from ..protocols.http2 import ErrorCode
from ..router import Route, apply_header_mutations
from . import lifecycle
from .exchange import http1 as h1_exchange
from .exchange import http2 as h2_exchange
from .lifecycle import ProxyCore, RequestBody, RequestView, UpstreamRequest
from .observers import listener_observers
from .record import RequestRecord
from .replies import CONNECT_REFUSED, TIMEOUT, Flag, Reply
from .settings import h2_settings
from .xfcc import XfccPolicy

log = logging.getLogger("trio_mesh.proxy")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


class _DownstreamGone(Exception):
    """The client closed or reset mid-request: nothing more can be said to it."""


class _Rescope(Exception):
    """The connection's scope was cancelled (drain, idle timeout) as a request arrived."""


class Http1Proxy(ProxyCore):
    """The ``proxy`` network filter for ``downstream_protocol: Http1``."""

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
        #: The listener's stream filters (``None``: none configured; the context says Any).
        self.filters: FilterChainFactory | None = ctx.stream_filters
        self.listener = ctx.listener
        # Upstream HTTP/2 only when asked: "Auto" means the protocol the request came in on.
        upstream_h2 = config.upstream_protocol == Protocol.HTTP2
        # A body streamed as HTTP/2 DATA is not kept for a retry (-1: not even an empty one).
        self.retry_buffer_bytes = config.retry_buffer_bytes if not upstream_h2 else -1
        self.exchange = h2_exchange.exchange if upstream_h2 else h1_exchange.exchange
        self.auto_upstream = config.upstream_protocol == Protocol.AUTO
        self.counts_refused = False
        self.h2_settings = h2_settings(config)
        self.xfcc = XfccPolicy(
            config.forward_client_cert_details, config.set_current_client_cert_details
        )
        self.limits = Limits(
            max_head_bytes=config.max_request_header_bytes,
            max_url_bytes=config.max_url_bytes,
            max_headers=config.max_request_headers,
            max_body_bytes=config.max_request_body_bytes,
        )

    def on_connection(self, conn: Connection) -> Coroutine[Any, Any, None]:
        # The session's coroutine itself, not one awaiting it: a frame less on every idle
        # connection (10,000 idle connections are a target).
        return _Session(self, conn).run()

    async def serve(self, conn: Connection, prefix: bytes = b"") -> None:
        """Serve a connection whose first bytes were already read (protocol detection)."""
        session = _Session(self, conn)
        session.feed_prefix(prefix)
        await session.run()


class _Session:
    """One downstream connection: the lifecycle's ``Downstream`` for each of its requests,
    their ``BodySource`` and ``ResponseSink``."""

    __slots__ = (
        "_armed",
        "_chunked",
        "_close",
        "_pending",
        "_route",
        "chain",
        "conn",
        "eof",
        "events",
        "finished",
        "info",
        "keep_conn",
        "parser",
        "proxy",
        "remote_ip",
        "req_head",
        "xfcc",
        "request_done",
        "sent_continue",
        "started",
        "stream",
        "request_trailers",
        "ureq",
        "view",
    )

    #: ResponseSink: what one read of the response brought goes down in one send (flush).
    buffers = True
    #: BodySource: the body goes up before the response is read.
    duplex = False

    def __init__(self, proxy: Http1Proxy, conn: Connection) -> None:
        self.proxy = proxy
        self.conn = conn
        self.stream = conn.stream
        conn.drain_grace = DRAIN_IDLE_GRACE
        self.parser = RequestParser(proxy.limits)
        # A list, not a deque: it holds a handful of events at most, and an empty deque
        # costs half a KiB on every idle connection.
        self.events: list[RequestEvent] = []
        self.eof = False
        self.remote_ip = conn.remote[0] if conn.remote else None
        #: What the connection's requests do with x-forwarded-client-cert (xfcc.py).
        self.xfcc = proxy.xfcc.for_connection(conn.tls)
        self.request_done = True
        self.started = False  # something of the response went downstream
        self.sent_continue = False
        # Route and per-try timeouts start once the whole request is in (Envoy's rule: a
        # slow upload is bounded by the idle timeout, not by the response timeout).
        self._armed: list[tuple[trio.CancelScope | None, float]] = []
        #: The request's stream filters (``None``: none configured, or none for it).
        self.chain: StreamFilterChain | None = None
        # Per-request state in objects made once per connection, not per request.
        self.view = RequestView()
        self.ureq = UpstreamRequest()
        self.ureq.host_in_headers = self.ureq.from_h1 = True  # the same for every request
        self.req_head: RequestHead | None = None
        self.info = RequestRecord()
        self._route: Route | None = None
        self.keep_conn = False
        # BodySource: the request body read to its end (``trailers``: its trailers)
        self.finished = True
        self.request_trailers: list[tuple[bytes, bytes]] | None = None
        # ResponseSink: the response's framing downstream, and what waits for the send
        self._chunked = False
        self._close = False
        self._pending: list[bytes] = []

    def feed_prefix(self, data: bytes) -> None:
        if data:
            try:
                self.events.extend(self.parser.feed(data))
            except H1Error:
                pass  # kept in parser.error: the first read answers it

    # ------------------------------------------------------------------ downstream reads

    async def _fill(self, wait_first: bool = False) -> None:
        """One read from the client into parsed events; ``wait_first``: the bytes cannot be
        there yet (spares a failing syscall and its exception)."""
        if self.parser.error is not None:
            raise self.parser.error  # found after good pipelined requests, answered first
        stream = self.stream
        try:
            if wait_first:
                data = await stream.receive_after_wait(CHUNK)
            else:
                data = await stream.receive_some(CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _DownstreamGone() from None
        self.conn.idle.touch()
        if data:
            self.events.extend(self.parser.feed(data))
        else:
            self.eof = True
            self.events.extend(self.parser.feed_eof())

    async def _next_head(self, served: int) -> RequestHead | None:
        """The next request head, or ``None`` when the client closed between requests.

        Waiting for a request is bounded by the connection idle timeout; once its first
        bytes arrived, the whole head must follow within ``request_header_timeout``.
        ``served``: requests answered so far; after one, a client that does not pipeline
        sends its next request only once it has read the response.
        """
        events = self.events
        if served % 8 == 0 and served:
            # The stream yields only when it must wait: a client pipelining a flood, or
            # answered from direct responses, must still share the loop.
            await trio.lowlevel.checkpoint()
        answered = served > 0
        deadline = math.inf
        while not events:
            if self.eof:
                return None
            if deadline == math.inf:  # between requests: the idle timeout alone applies
                await self._fill(answered)
                answered = False
            else:
                with trio.move_on_at(deadline) as scope:
                    await self._fill()
                if scope.cancelled_caught:
                    raise H1Error(408, "request header timeout")
            if not events and deadline == math.inf:
                deadline = trio.current_time() + self.proxy.config.request_header_timeout
        if self.conn.idle.scope.cancel_called:
            # The drain or the idle timeout fired while this request came in: served under
            # a fresh scope, it can neither be cut nor be taken for a route timeout.
            raise _Rescope()
        head = events.pop(0)
        if type(head) is RequestHead:
            return head
        # A body event before the head: the parser's framing says otherwise (a bug).
        raise H1Error(400, "unexpected body")

    def _request_begun(self) -> bool:
        """A byte of the next request has come (parsed, or waiting on the socket)."""
        return bool(self.events) or not self.parser.between_requests or self.conn.input_waiting()

    async def _next_body_event(self) -> RequestEvent:
        """The next event of the request body: a ``Body`` or its ``EndOfMessage`` (the
        parser gives no head before that; callers dispatch on the type)."""
        events = self.events
        while not events:
            if self.eof:
                raise _DownstreamGone()
            await self._fill()
        return events.pop(0)

    # ------------------------------------------------------------------ the connection loop

    async def run(self) -> None:
        served = 0
        # The requests' body, reset per request; held by this frame, not by the session (it
        # refers to the session: a cycle would leave every session to the cycle collector).
        body = RequestBody(self)
        while True:
            info = head = None
            self.started = False
            try:
                head = await self._next_head(served)
                if head is None:
                    return
                info = self._start_info(head)
                keep = await self._handle(head, info, body)
            except H1Error as exc:
                # Bad request bytes: a defined status, and the connection is done.
                if info is None:
                    info = RequestRecord()
                    info.start_time, info.start = time.time(), _monotonic()
                    self.proxy.stats.downstream_rq_active += 1  # it ends in _done too
                log.info("downstream %s: bad request: %s", self.conn.remote, exc.reason)
                if not self.started:
                    reply = Reply(
                        exc.status,
                        Flag.DOWNSTREAM_PROTOCOL_ERROR,
                        exc.reason.encode("latin-1", "replace") + b"\n",
                    )
                    await self._try_local_reply(None, info, reply)
                keep = False
            except _DownstreamGone:
                if info is not None:
                    info.add_flag(Flag.DOWNSTREAM_TERMINATION)
                keep = False
            except _Rescope:
                self.conn.resume = self.run  # the listener runs it under a fresh scope
                return
            except trio.Cancelled:
                if info is not None:
                    if self.conn.idle.route_expired:
                        self._route_timed_out(head, info)
                    else:  # cut short, never ended: no longer active all the same
                        self.proxy.stats.downstream_rq_active -= 1
                elif self.conn.idle.scope.cancel_called and self._request_begun():
                    # Our scope fired (drain, idle timeout) as a request began: answer it
                    # under a fresh scope. An outer cancellation is raised again there.
                    self.conn.resume = self.run
                    return
                raise
            except BaseException:
                # A bug (the listener logs it and closes the connection): not active still.
                if info is not None:
                    self.proxy.stats.downstream_rq_active -= 1
                raise
            if info is not None:
                self._done(info)
            conn = self.conn
            conn.busy = False
            if not keep:
                return
            if conn.draining and not self._request_begun():
                # The drain began after this response's head promised keep-alive: its client
                # may be sending the next request now, and closing would reset it. That one
                # is waited for (the drain's idle grace) and answered with Connection: close.
                conn.idle.shorten(conn.drain_grace)
            self.conn.idle.touch()
            served += 1

    def _done(self, info: RequestRecord) -> None:
        self.chain = None  # nothing of a finished request stays on an idle connection
        self.proxy.observers.end(info)

    def _route_timed_out(self, head: RequestHead | None, info: RequestRecord) -> None:
        """The route deadline fired on the connection's scope (see ``IdleTimer.arm_route``):
        the request is over, and nothing can be awaited in a cancelled scope. So answer 504
        with one non-blocking send; if all of it went, the listener resumes this session on a
        fresh timer for the next request, else the connection is reset."""
        cluster = self.proxy.clusters.clusters.get(info.upstream_cluster or "")
        if cluster is not None:
            cluster.stats.upstream_rq_timeout += 1
        keep = False
        if not self.started:
            data, keep = self._reply_bytes(head, info, TIMEOUT)
            if not self.stream.send_nowait(data):
                keep = False
                self.stream.abort()
        else:
            info.add_flag(Flag.UPSTREAM_TIMEOUT)
            self.stream.abort()
        self._done(info)
        if keep:
            self.conn.resume = self.run

    def _start_info(self, head: RequestHead) -> RequestRecord:
        info = RequestRecord()
        info.start = _monotonic()
        self.proxy.stats.downstream_rq_active += 1  # until ``_done`` (the observers)
        if self.proxy.detailed:  # what only a log line reads is not worked out for nothing
            info.start_time = time.time()
            info.protocol = "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0"
            info.method = head.method.decode("latin-1")
            info.path = head.target.decode("latin-1")
            info.authority = head.host.decode("latin-1") if head.host else None
            remote, local = self.conn.remote, self.conn.local
            info.downstream_remote_address = format_hostport(*remote[:2]) if remote else None
            info.downstream_local_address = format_hostport(*local[:2]) if local else None
            info.tls = self.conn.tls
            for name, value in head.headers:
                if name == b"user-agent":
                    info.user_agent = value.decode("latin-1")
                    break
        self.conn.busy = True
        self.request_done = False
        self.started = False
        self.sent_continue = False
        self._armed.clear()
        self.info = info
        self.req_head = head
        self.keep_conn = False
        self.finished = False
        self.request_trailers = None
        if self._pending:
            self._pending.clear()
        return info

    # ------------------------------------------------------------------ one request

    async def _handle(self, head: RequestHead, info: RequestRecord, body: RequestBody) -> bool:
        """Answer one request; return whether the connection goes on to the next."""
        has_body = bool(head.chunked or head.content_length)
        if not has_body:
            await self._consume_end(info)  # no body: its EndOfMessage is already parsed
        if head.method == b"CONNECT":
            return await self._local_reply(head, info, CONNECT_REFUSED)
        # Hop-by-hop fields go as the request is decoded (Envoy's order): what Connection
        # names cannot take off what routing matched or a filter adds later. A client's
        # x-forwarded-client-cert goes in the same pass, before routing sees it (xfcc.py).
        xfcc = self.xfcc
        head.headers = strip_hop_by_hop(
            head.headers, keep_upgrade=head.upgrade is not None, drop_xfcc=xfcc.drop
        )
        if xfcc.value is not None:
            xfcc.apply(head.headers)
        view = self.view
        view.protocol = "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0"
        view.method = head.method
        view.target = head.target
        view.authority = head.host
        view.host = head.host.decode("latin-1") if head.host else ""
        view.path = head.path.decode("latin-1")
        view.query = head.query.decode("latin-1")
        view.headers = head.headers
        view.end = not has_body
        proxy = self.proxy
        body.reset(not has_body, proxy.retry_buffer_bytes)
        # the session is its requests' response sink too (no object per request)
        await lifecycle.handle(proxy, self, view, info, body, self)
        return self.keep_conn

    async def _consume_end(self, info: RequestRecord) -> None:
        event = await self._next_body_event()
        if not isinstance(event, EndOfMessage):  # the parser's framing says otherwise: a bug
            raise H1Error(400, "unexpected body")
        self._request_complete(info)

    # ------------------------------------------------------------------ Downstream

    def peer(self) -> str | None:
        remote = self.conn.remote
        return format_hostport(*remote[:2]) if remote else None

    def original_dst(self) -> tuple[str, int] | None:
        return self.conn.original_dst

    def filter_context(self, route: Route | None, cluster: str | None) -> RequestContext:
        head = self.req_head
        assert head is not None
        conn = self.conn
        return RequestContext(
            self.view.protocol,
            head.method,
            head.target,
            head.host or "",
            route,
            cluster,
            conn.remote,
            conn.local,
            self.proxy.listener,
            tls=conn.tls,
        )

    async def reply(
        self,
        reply: Reply,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        route: Route | None = None,
    ) -> None:
        if self.started:  # too late for a reply: the response can only be cut
            self.cut(reply.flag or Flag.FILTER_FAILED)
            return
        self._pending.clear()  # an informational response waiting for its send: replaced
        self.keep_conn = await self._local_reply(
            self.req_head, self.info, reply, headers=headers, route=route
        )

    async def filter_reply(self, reply: LocalReply) -> None:
        if self.started:  # a filter failed after the response began: it is cut
            self.cut(Flag.FILTER_FAILED)
            return
        await self.reply(Reply.from_filter(reply))

    def arm_route(self, timeout: float | None) -> None:
        # The route timeout is the connection scope's deadline meanwhile: a timeout ends in
        # run()'s Cancelled handler (a cancel scope per request costs too much). `_arm`,
        # inlined: this is every request's path.
        if timeout:
            self._armed.append((None, timeout))
            if self.request_done:
                self.conn.idle.arm_route(trio.current_time() + timeout)

    def try_scope(self, timeout: float) -> trio.CancelScope:
        # Armed before it is entered: a deadline already past cancels on entry.
        scope = trio.CancelScope()
        self._arm(scope, timeout)
        return scope

    def end_route(self) -> None:
        self._armed.clear()
        self.conn.idle.end_route()

    def route_expired(self) -> bool:
        return self.conn.idle.route_expired

    def _arm(self, scope: trio.CancelScope | None, timeout: float | None) -> None:
        """Give ``scope`` its ``timeout``, counted from the end of the request; ``None``:
        the route timeout, carried by the connection's own scope. The timeouts of the
        request stay listed in ``_armed`` so that an upgrade can lift them all."""
        if not timeout:
            return
        self._armed.append((scope, timeout))
        if self.request_done:
            self._set_deadline(scope, trio.current_time() + timeout)

    def _set_deadline(self, scope: trio.CancelScope | None, deadline: float) -> None:
        if scope is None:
            self.conn.idle.arm_route(deadline)
        else:
            scope.deadline = min(scope.deadline, deadline)

    def _request_complete(self, info: RequestRecord) -> None:
        self.request_done = True
        if self.proxy.detailed:  # a clock read only a log line needs
            info.request_received_duration = _monotonic() - info.start
        if self._armed:
            now = trio.current_time()
            for scope, timeout in self._armed:
                self._set_deadline(scope, now + timeout)

    def upstream_request(self, route: Route, info: RequestRecord) -> UpstreamRequest:
        """The upstream request: headers prepared once, the target rewritten, the framing
        from our parse (chunked when a filter changed the body's length)."""
        head = self.req_head
        assert head is not None
        self._route = route
        headers, has_host = self._upstream_headers(head, route, info)
        view = self.view
        new_path = route.rewrite_path(view.path)
        query = view.query
        target = (new_path + "?" + query if query else new_path).encode("latin-1")
        if head.query and not query:
            target += b"?"
        chunked = head.chunked
        if self.chain is not None and head.content_length and not chunked:
            # A filter that changes the body's length takes Content-Length off (or changes
            # it): the body goes chunked, never framed by a value we did not parse.
            length = b"%d" % head.content_length
            if not any(n == b"content-length" and v == length for n, v in head.headers):
                chunked = True
        req = self.ureq
        req.method = head.method
        req.target = target
        req.headers = headers
        if route.auto_host_rewrite or not has_host:
            req.authority = None  # the chosen host's address
        elif route.host_rewrite is not None:
            req.authority = route.host_rewrite.encode("latin-1")
        else:
            req.authority = head.host
        req.length = None if chunked else head.content_length
        req.chunked = chunked
        req.head_request = head.method == b"HEAD"
        req.upgrade = head.upgrade
        return req

    def _upstream_headers(
        self, head: RequestHead, route: Route, info: RequestRecord
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The upstream request's headers, and whether they carry a Host (when not, each try
        adds its chosen host's address)."""
        config = self.proxy.config
        headers = head.headers  # stripped in _handle
        chain = self.chain
        if chain is not None and chain.mask & REQUEST_HEADERS:
            # what the headers hooks added: hop-by-hop fields still never go
            headers = strip_hop_by_hop(headers, keep_upgrade=head.upgrade is not None)
        out: list[tuple[bytes, bytes]] = []
        xff = None
        request_id = None
        has_host = False
        for name, value in headers:
            if name == b"x-forwarded-for" and config.add_x_forwarded_for:
                xff = value if xff is None else xff + b", " + value
                continue
            if name == b"x-forwarded-proto" and config.add_x_forwarded_proto:
                continue
            if name == b"expect":
                continue  # the proxy answers 100-continue itself
            if name == b"x-request-id":
                request_id = value
            elif name == b"host":
                has_host = True
                if route.host_rewrite is not None:
                    value = route.host_rewrite.encode("latin-1")
                elif head.host is not None:
                    value = head.host  # an absolute-form target's authority wins (RFC 9112)
            out.append((name, value))
        if not has_host:
            # HTTP/1.0 without Host (1.1 without one is refused by the parser): upstream
            # requests are HTTP/1.1 and need one; the chosen host's address is the default.
            if route.host_rewrite is not None:
                out.append((b"host", route.host_rewrite.encode("latin-1")))
                has_host = True
            elif head.host is not None:
                out.append((b"host", head.host))
                has_host = True
        if config.add_x_forwarded_for and self.remote_ip:
            ip = self.remote_ip.encode("latin-1")
            out.append((b"x-forwarded-for", ip if xff is None else xff + b", " + ip))
        if config.add_x_forwarded_proto:
            out.append((b"x-forwarded-proto", b"http" if self.conn.tls is None else b"https"))
        if request_id is None and config.generate_request_id:
            # Unique, not secret: a PRNG draw is ten times cheaper than uuid4's urandom.
            request_id = b"%032x" % _getrandbits(128)
            out.append((b"x-request-id", request_id))
        info.request_id = request_id.decode("latin-1") if request_id else None
        if head.upgrade is not None:
            out.append((b"connection", b"upgrade"))
        if route.request_headers_to_add or route.request_headers_to_remove:
            out = apply_header_mutations(
                out, route.request_headers_to_add, route.request_headers_to_remove
            )
        return out, has_host

    # ------------------------------------------------------------------ BodySource

    async def read(self) -> bytes:
        head = self.req_head
        assert head is not None
        if head.expect_continue and not self.sent_continue and head.version == b"1.1":
            self.sent_continue = True
            await self._send_down(CONTINUE)
        event = await self._next_body_event()
        if type(event) is Body:
            self.info.bytes_received += len(event.data)
            return event.data
        if type(event) is EndOfMessage:
            self.finished = True
            trailers = event.trailers
            self.request_trailers = self.xfcc.trailers(trailers) if trailers else trailers
            self._request_complete(self.info)
            return b""
        # a head inside a body: the parser's framing says otherwise (a bug)
        raise H1Error(400, "unexpected request head")

    def sent(self) -> None:
        pass  # TCP's own flow control: nothing to give back

    def keep(self, n: int) -> bool:
        return True  # retry_buffer_bytes alone bounds what an HTTP/1 request keeps

    def forget(self, n: int) -> None:
        pass

    # ------------------------------------------------------------------ ResponseSink

    def waiting(self) -> None:
        # Waiting on the upstream is the route timeout's business, not the idle timeout's.
        self.conn.idle.pause()

    async def informational(
        self, status: int, reason: bytes | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        head = self.req_head
        # Our own 100 went already, or none was asked; HTTP/1.0 has no 1xx at all.
        if status != 100 and head is not None and head.version == b"1.1":
            self._pending.append(encode_response_head(status, reason, strip_hop_by_hop(headers)))

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None:
        """The downstream head for the upstream's final response. ``raw``: the upstream's head
        as received, which its parser vouches is exactly what we would write
        (``ResponseParser.head_raw``): sent as it is when nothing here changes it."""
        head = self.req_head
        route = self._route
        assert head is not None and route is not None
        info = self.info
        info.response_code = resp.status
        if self.proxy.detailed:
            info.response_received_duration = _monotonic() - info.start
        chunked = close = False
        # The framing is our parse's, written by the encoder; a HEAD or 304 response still
        # says the length a GET would get (parsed, so one valid number), a 204 none.
        length = resp.content_length if resp.status != 204 else None
        if resp.content_length is None and not (
            head.method == b"HEAD" or resp.status in _NO_BODY_STATUSES
        ):
            # Chunked or close-delimited upstream: re-chunk for an HTTP/1.1 client; an
            # HTTP/1.0 client gets a close-delimited body.
            if head.version == b"1.1":
                chunked = True
            else:
                close = True
        if (
            not head.keep_alive
            or not self.request_done
            or head.upgrade is not None
            or (self.conn.draining and not self._request_begun())
        ):
            close = True
        mutates = route.response_headers_to_add or route.response_headers_to_remove
        self.started = True
        self._chunked = chunked
        self._close = close
        if raw is not None and not close and head.version == b"1.1" and not mutates:
            self._pending.append(raw)
        else:
            headers = strip_hop_by_hop(resp.headers)
            if close:
                headers.append((b"connection", b"close"))
            elif head.version == b"1.0":  # an HTTP/1.0 client closes unless told otherwise
                headers.append((b"connection", b"keep-alive"))
            if mutates:
                headers = apply_header_mutations(
                    headers, route.response_headers_to_add, route.response_headers_to_remove
                )
            self._pending.append(
                encode_response_head(
                    resp.status, resp.reason, headers, length=length, chunked=chunked
                )
            )
        if end:
            if chunked:
                self._pending.append(encode_last_chunk(None))
            self.keep_conn = not self._close  # close covers the request side too
            await self.flush()  # the response's end: what is held goes now

    async def data(self, data: bytes, end: bool) -> None:
        pending = self._pending
        if data:
            self.info.bytes_sent += len(data)
            pending.append(encode_chunk(data) if self._chunked else data)
        if end:
            if self._chunked:
                pending.append(encode_last_chunk(None))
            self.keep_conn = not self._close  # close covers the request side too
            # the response's end: what is held goes now (flush, inlined: a coroutine less
            # on every response)
            if pending:
                out = b"".join(pending) if len(pending) > 1 else pending[0]
                pending.clear()
                try:
                    await self.stream.send_all(out)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _DownstreamGone() from None

    async def trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self._chunked:  # a content-length body has no room for trailers: dropped
            self._pending.append(encode_last_chunk(trailers))
        self.keep_conn = not self._close  # close covers the request side too
        await self.flush()  # the response's end

    async def flush(self) -> None:
        pending = self._pending
        if pending:
            data = b"".join(pending) if len(pending) > 1 else pending[0]
            pending.clear()
            try:  # _send_down, inlined: a coroutine less on every response
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _DownstreamGone() from None

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        """The response cannot go on: the client must see it cut short, not end."""
        self.info.add_flag(flag)
        self._pending.clear()
        self.keep_conn = False
        self.stream.abort()

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None:
        """101 Switching Protocols: send the head on, then relay bytes both ways."""
        self.info.response_code = 101
        headers = strip_hop_by_hop(resp.headers, keep_upgrade=True)
        headers.append((b"connection", b"upgrade"))
        out = self._pending
        out.append(encode_response_head(101, resp.reason, headers))
        if tail:
            out.append(tail)
        self.started = True
        self.keep_conn = False
        await self.flush()
        # A tunnel lasts as long as its two ends want: only the idle timeout bounds it now,
        # not the route or per-try timeouts that bounded the upgrade request.
        for scope, _ in self._armed:
            if scope is not None:
                scope.deadline = math.inf
        self.conn.idle.end_route()
        client_tail = self.parser.upgraded_tail
        try:
            if client_tail:
                await upstream.send_all(client_tail)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await relay(self.stream, upstream, self.conn.idle)

    # ------------------------------------------------------------------ local replies

    async def _send_down(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _DownstreamGone() from None

    async def _local_reply(
        self,
        head: RequestHead | None,
        info: RequestRecord,
        reply: Reply,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
        route: Route | None = None,
    ) -> bool:
        """A response made by the proxy; returns whether the connection goes on."""
        data, keep = self._reply_bytes(head, info, reply, headers=headers, close=close, route=route)
        await self._send_down(data)
        return keep

    def _reply_bytes(
        self,
        head: RequestHead | None,
        info: RequestRecord,
        reply: Reply,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
        route: Route | None = None,
    ) -> tuple[bytes, bool]:
        """A local reply's bytes, and whether the connection may go on after it. An unread
        request body means it cannot (its remaining bytes would be taken for a new request).
        A matched route's response header mutations apply to its direct responses and
        redirects too."""
        status, flag, body = reply.status, reply.flag, reply.body
        close = (
            close
            or reply.close
            or (self.conn.draining and not self._request_begun())
            or head is None
            or not head.keep_alive
            or not self.request_done
            or head.upgrade is not None
        )
        if (
            (data := reply.h1_close if close else reply.h1_keep) is not None
            and head is not None
            and head.version == b"1.1"
            and head.method != b"HEAD"
            and not headers
            and route is None
        ):
            # A constant reply on the usual request: its bytes were encoded at import.
            info.bytes_sent += len(body)
            info.response_code = status
            if flag:
                info.add_flag(flag)
            self.started = True
            return data, not close
        out = [(b"content-type", b"text/plain")]
        if reply.headers:
            out.extend(reply.headers)
        if headers:
            out.extend(headers)
        if close:
            out.append((b"connection", b"close"))
        elif head is not None and head.version == b"1.0":
            out.append((b"connection", b"keep-alive"))
        if route is not None and (
            route.response_headers_to_add or route.response_headers_to_remove
        ):
            out = apply_header_mutations(
                out, route.response_headers_to_add, route.response_headers_to_remove
            )
        data = encode_response_head(status, None, out, length=len(body))
        if head is None or head.method != b"HEAD":
            data += body
            info.bytes_sent += len(body)
        info.response_code = status
        if flag:
            info.add_flag(flag)
        self.started = True
        return data, not close

    async def _try_local_reply(
        self, head: RequestHead | None, info: RequestRecord, reply: Reply
    ) -> None:
        try:
            await self._local_reply(head, info, reply, close=True)
        except _DownstreamGone:
            info.add_flag(Flag.DOWNSTREAM_TERMINATION)
