"""The HTTP/1.1 proxy: one downstream connection's requests, in order, in its own task.

No task or nursery per request (DESIGN.md): the connection task reads a request head,
routes it, forwards it over a pooled upstream connection with a cancel scope per try and one
for the route timeout, streams both bodies chunk by chunk, and loops for the next request.
"""

from __future__ import annotations

import contextlib
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
    filter_failed,
)
from ..network.connection import DRAIN_IDLE_GRACE, Connection
from ..network.h2 import H2Endpoint, Inbox, StreamGone
from ..network.relay import CHUNK, relay
from ..network.stream import Stream
from ..pool import H1Connection
from ..protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
    strip_hop_by_hop,
)
from ..protocols.http2 import Data as H2Data
from ..protocols.http2 import (
    H2HeaderError,
    InformationalHeaders,
    request_to_h2,
    response_from_h2,
    trailers_to_h2,
)
from ..protocols.http2 import ResponseHeaders as H2ResponseHeaders
from ..protocols.http2 import Trailers as H2Trailers
from ..router import Route, apply_header_mutations
from ..upstream import Cluster, Host, NoHostError
from .exchange import UpstreamFailed
from .exchange import http1 as h1_exchange
from .exchange import http2 as h2_exchange
from .headers import header_getter
from .observers import listener_observers
from .record import RequestRecord
from .replies import (
    BAD_RESPONSE,
    CONNECT_REFUSED,
    NO_CLUSTER,
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    OVERFLOW,
    TIMEOUT,
    UPSTREAM_RESET,
    Cause,
    Flag,
    Reply,
)
from .retry import RetryState
from .settings import h2_settings

log = logging.getLogger("trio_mesh.proxy")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})
_NO_SCOPE = contextlib.nullcontext()  # stands in for a per-try scope when there is none
# Resent on their own after the keep-alive race: the upstream may have acted on a POST it
# read before closing, so only methods that may safely run twice are (as Go's net/http does).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class _Retry(Exception):
    """This try failed before any response byte went downstream; another may be made."""

    def __init__(self, reply: Reply, *, race: bool = False) -> None:
        self.reply = reply
        self.race = race  # a reused idle connection the upstream had closed


class _Fail(Exception):
    """Answer with this local reply (nothing of the response was sent yet)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _failed(reply: Reply) -> _Retry | _Fail:
    """A try's failure: one the retry policy may retry, or the proxy's own refusal."""
    return _Fail(reply) if reply.cause is Cause.REFUSED else _Retry(reply)


def _filter_fail(reply: LocalReply) -> _Fail:
    return _Fail(Reply.from_filter(reply))


class _DownstreamGone(Exception):
    """The client closed or reset mid-request: nothing more can be said to it."""


class _Rescope(Exception):
    """The connection's scope was cancelled (drain, idle timeout) as a request arrived."""


class Http1Proxy:
    """The ``proxy`` network filter for ``downstream_protocol: Http1``."""

    def __init__(self, config: ProxyConfig, ctx: BuildContext) -> None:
        self.config = config
        self.table = ctx.routes[config.router_config_name]
        self.clusters = ctx.clusters
        self.pools = ctx.pools
        self.stats = ctx.listener_stats
        #: Where requests end (stats, access logs); ``detailed``: fill what only logs read.
        self.observers = listener_observers(ctx.listener_stats, ctx.access_logs)
        self.detailed = self.observers.detailed
        #: The listener's stream filters (``None``: none configured; the context says Any).
        self.filters: FilterChainFactory | None = ctx.stream_filters
        self.listener = ctx.listener
        # Upstream HTTP/2 only when asked: "Auto" means the protocol the request came in on.
        self.upstream_h2 = config.upstream_protocol == Protocol.HTTP2
        self.h2_settings = h2_settings(config)
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
    __slots__ = (
        "_armed",
        "_chain",
        "_up_chunked",
        "_retry",
        "_replay_left",
        "_upstream_keep_alive",
        "conn",
        "eof",
        "events",
        "parser",
        "proxy",
        "remote_ip",
        "request_done",
        "response_started",
        "sent_continue",
        "stream",
    )

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
        self.request_done = True
        self.response_started = False
        self.sent_continue = False
        self._replay_left: list[bytes] | None = None
        #: The request's ``RetryState`` (``None``: its route retries nothing).
        self._retry: RetryState | None = None
        # Route and per-try timeouts start once the whole request is in (Envoy's rule: a
        # slow upload is bounded by the idle timeout, not by the response timeout).
        self._armed: list[tuple[trio.CancelScope | None, float]] = []
        self._upstream_keep_alive = False
        #: The request's stream filters (``None``: none configured, or none for it).
        self._chain: StreamFilterChain | None = None
        #: The body goes upstream chunked (it came chunked, or a filter took its length off).
        self._up_chunked = False

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
        while True:
            info = head = None
            self.response_started = False
            try:
                head = await self._next_head(served)
                if head is None:
                    return
                info = self._start_info(head)
                keep = await self._handle(head, info)
            except H1Error as exc:
                # Bad request bytes: a defined status, and the connection is done.
                if info is None:
                    info = RequestRecord()
                    info.start_time, info.start = time.time(), _monotonic()
                log.info("downstream %s: bad request: %s", self.conn.remote, exc.reason)
                if not self.response_started:
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
                elif self.conn.idle.scope.cancel_called and self._request_begun():
                    # Our scope fired (drain, idle timeout) as a request began: answer it
                    # under a fresh scope. An outer cancellation is raised again there.
                    self.conn.resume = self.run
                    return
                raise
            if info is not None:
                self._done(info)
            conn = self.conn
            conn.busy = False
            if not keep or (conn.draining and not self._request_begun()):
                return  # draining: what had arrived (pipelined requests) is served first
            self.conn.idle.touch()
            served += 1

    def _done(self, info: RequestRecord) -> None:
        self._chain = None  # nothing of a finished request stays on an idle connection
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
        if not self.response_started:
            data, keep = self._reply_bytes(head, info, TIMEOUT)
            try:
                sent = self.stream.socket.send(data)
            except OSError:
                sent = -1
            if sent != len(data):
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
        if self.proxy.detailed:  # what only a log line reads is not worked out for nothing
            info.start_time = time.time()
            info.protocol = "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0"
            info.method = head.method.decode("latin-1")
            info.path = head.target.decode("latin-1")
            info.authority = head.host.decode("latin-1") if head.host else None
            remote, local = self.conn.remote, self.conn.local
            info.downstream_remote_address = format_hostport(*remote[:2]) if remote else None
            info.downstream_local_address = format_hostport(*local[:2]) if local else None
            for name, value in head.headers:
                if name == b"user-agent":
                    info.user_agent = value.decode("latin-1")
                    break
        self.conn.busy = True
        self.request_done = False
        self.response_started = False
        self.sent_continue = False
        self._armed.clear()
        return info

    # ------------------------------------------------------------------ one request

    async def _handle(self, head: RequestHead, info: RequestRecord) -> bool:
        """Answer one request; return whether the connection goes on to the next."""
        if not (head.chunked or head.content_length):
            await self._consume_end(info)  # no body: its EndOfMessage is already parsed
        if head.method == b"CONNECT":
            return await self._local_reply(head, info, CONNECT_REFUSED)
        # Hop-by-hop fields go as the request is decoded (Envoy's order): what Connection
        # names cannot take off what routing matched or a filter adds later.
        head.headers = strip_hop_by_hop(head.headers, keep_upgrade=head.upgrade is not None)
        host = head.host.decode("latin-1") if head.host else ""
        path = head.path.decode("latin-1")
        query = head.query.decode("latin-1")
        header = header_getter(head.headers)
        route = self.proxy.table.match(host, path, query, header)
        if route is not None and self.proxy.detailed:
            info.route_name = route.name
        self._up_chunked = head.chunked
        filters = self.proxy.filters
        if filters is not None:
            cluster_name = None
            if route is not None and route.direct_response is None and route.redirect is None:
                cluster_name = route.pick_cluster(header)
            reply = await self._request_filters(filters, head, route, cluster_name)
            if reply is not None:
                return await self._filter_reply(head, info, reply)
            if route is None:
                return await self._local_reply(head, info, NO_ROUTE)
        else:
            if route is None:
                return await self._local_reply(head, info, NO_ROUTE)
            cluster_name = None
        if route.direct_response is not None:
            status, body = route.direct_response
            return await self._local_reply(head, info, Reply(status, Flag.NONE, body), route=route)
        if route.redirect is not None:
            status, location = route.redirect.location("http", host, path, query)
            location_header = [(b"location", location.encode("latin-1"))]
            return await self._local_reply(
                head, info, Reply(status, Flag.NONE, b""), headers=location_header, route=route
            )
        if filters is None:
            cluster_name = route.pick_cluster(header)
        cluster = self.proxy.clusters.clusters.get(cluster_name) if cluster_name else None
        if cluster is None:
            return await self._local_reply(head, info, NO_CLUSTER)
        info.upstream_cluster = cluster.name
        return await self._forward(head, info, route, cluster, path, query)

    # ------------------------------------------------------------------ stream filters

    async def _request_filters(
        self,
        filters: FilterChainFactory,
        head: RequestHead,
        route: Route | None,
        cluster_name: str | None,
    ) -> LocalReply | None:
        """Make the request's filter chain and run its request-headers hooks (on the head's
        own header list: what they change goes upstream)."""
        conn = self.conn
        context = RequestContext(
            "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0",
            head.method,
            head.target,
            head.host or "",
            route,
            cluster_name,
            conn.remote,
            conn.local,
            self.proxy.listener,
        )
        chain = filters.create(context)
        if chain is None:
            return None
        self._chain = chain
        has_body = bool(head.chunked or head.content_length)
        # chain.request_headers, inlined: a coroutine less on every request
        headers = Headers(head.headers)
        reply = None
        for f, bits, name in chain.made:
            if bits & REQUEST_HEADERS:
                try:
                    reply = await f.on_request_headers(headers, not has_body)
                except Exception:
                    reply = filter_failed(name, "on_request_headers")
                if reply is not None:
                    chain.replied = True
                    break
        if reply is None and head.content_length and not head.chunked:
            # A filter that changes the body's length takes Content-Length off (or changes
            # it): the body goes chunked, never framed by a value we did not parse.
            length = b"%d" % head.content_length
            if not any(n == b"content-length" and v == length for n, v in head.headers):
                self._up_chunked = True
        return reply

    async def _filter_reply(
        self, head: RequestHead, info: RequestRecord, reply: LocalReply
    ) -> bool:
        return await self._local_reply(head, info, Reply.from_filter(reply))

    async def _filter_body(self, chain: StreamFilterChain, data: bytes, last: bool) -> bytes:
        out = await chain.request_data(data, last)
        if isinstance(out, LocalReply):
            raise _filter_fail(out)
        return out

    async def _filter_request_trailers(
        self, chain: StreamFilterChain, trailers: list[tuple[bytes, bytes]] | None
    ) -> None:
        if trailers and chain.mask & REQUEST_TRAILERS:
            reply = await chain.request_trailers(Headers(trailers))
            if reply is not None:
                raise _filter_fail(reply)

    async def _filtered_head(
        self,
        chain: StreamFilterChain,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        resp: ResponseHead,
        end: bool,
    ) -> tuple[bool, bool, bytes] | LocalReply:
        """``_response_head`` after the response-headers hooks, which may change the status
        and the headers (taking Content-Length off makes the body chunked downstream)."""
        if not chain.mask & (RESPONSE_HEADERS | RESPONSE_DATA):
            return self._response_head(head, info, route, resp)
        headers = Headers(strip_hop_by_hop(resp.headers), resp.status)
        chain.context.upstream_host = info.upstream_host
        if not chain.replied:  # chain.response_headers, inlined
            for f, bits, filter_name in reversed(chain.made):
                if bits & RESPONSE_HEADERS:
                    try:
                        reply = await f.on_response_headers(headers, end)
                    except Exception:
                        reply = filter_failed(filter_name, "on_response_headers")
                    if reply is not None:
                        chain.replied = True
                        return reply
        status = headers.status or resp.status
        length = resp.content_length
        if headers.changed or status != resp.status:
            length = None
            for name, value in headers.raw:
                if name == b"content-length" and value.isdigit():
                    length = int(value)
            if status != resp.status or length != resp.content_length:
                resp = ResponseHead(
                    status,
                    None if status != resp.status else resp.reason,
                    resp.version,
                    headers.raw,
                    resp.keep_alive,
                    length,
                    resp.chunked,
                )
        return self._response_head(head, info, route, resp, headers.raw)

    async def _filtered_tail(
        self, chain: StreamFilterChain, chunked: bool, trailers: list[tuple[bytes, bytes]] | None
    ) -> bytes | None:
        """What ends a filtered response body: the data hooks' last piece, then the trailers
        (after their hooks) or the last chunk. ``None``: a filter failed the response after
        it began, so it can only be cut."""
        out = b""
        if chain.mask & RESPONSE_DATA:
            tail = await chain.response_data(b"", True)
            if isinstance(tail, LocalReply):
                return None
            out = encode_chunk(tail) if chunked else tail
        if trailers and chain.mask & RESPONSE_TRAILERS:
            if await chain.response_trailers(Headers(trailers)) is not None:
                return None
        if chunked:
            out += encode_last_chunk(trailers)
        return out

    def _cut(self, info: RequestRecord) -> tuple[bool, bool]:
        """A response filter failed mid-response: the client must see it cut short."""
        info.add_flag(Flag.FILTER_FAILED)
        self.stream.abort()
        return False, False

    async def _consume_end(self, info: RequestRecord) -> None:
        event = await self._next_body_event()
        if not isinstance(event, EndOfMessage):  # the parser's framing says otherwise: a bug
            raise H1Error(400, "unexpected body")
        self._request_complete(info)

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
        info.request_received_duration = _monotonic() - info.start
        if self._armed:
            now = trio.current_time()
            for scope, timeout in self._armed:
                self._set_deadline(scope, now + timeout)

    def _upstream_headers(
        self, head: RequestHead, route: Route, info: RequestRecord
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The upstream request's headers, and whether they carry a Host (when not, each try
        adds its chosen host's address)."""
        config = self.proxy.config
        headers = head.headers  # stripped in _handle
        if self._chain is not None:  # what filters added: hop-by-hop fields still never go
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
            out.append((b"x-forwarded-proto", b"http"))
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

    async def _forward(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        cluster: Cluster,
        path: str,
        query: str,
    ) -> bool:
        headers, has_host = self._upstream_headers(head, route, info)
        new_path = route.rewrite_path(path)
        target = (new_path + "?" + query if query else new_path).encode("latin-1")
        if head.query and not query:
            target += b"?"
        # Made only for a route with a retry policy (nothing allocated otherwise).
        retry = self._retry = RetryState(route.retry, cluster) if route.retry is not None else None
        raced = False
        # The request body as sent upstream, kept while small so that a retry can resend it.
        replay: list[bytes] | None = []
        # The route timeout is the connection scope's deadline meanwhile: a timeout ends
        # in run()'s Cancelled handler (a cancel scope per request costs too much).
        self._arm(None, route.timeout)
        stats = cluster.stats
        try:
            while True:
                stats.upstream_rq_total += 1
                # circuit_breakers.max_requests: tries outstanding to the cluster (inline,
                # not a context manager: this is the per-request path).
                if cluster.max_requests is not None and cluster.request_overflows():
                    return await self._local_reply(head, info, OVERFLOW)
                stats.upstream_rq_active += 1
                try:
                    try:
                        return await self._try(
                            head, info, route, cluster, target, headers, has_host, replay, raced
                        )
                    finally:
                        stats.upstream_rq_active -= 1
                except _Retry as exc:
                    replay = self._replay_left  # what the failed try left resendable
                    if self.response_started:  # defensive: nothing can be retried now
                        return False
                    if exc.race and not raced and replay is not None:
                        if retry is not None:
                            retry.release()  # not a route retry: no max_retries slot
                        raced = True  # the keep-alive race: once, on a new connection
                        continue
                    if retry is None or replay is None or not retry.should_retry(exc.reply):
                        return await self._local_reply(head, info, exc.reply)
                except _Fail as exc:
                    return await self._local_reply(head, info, exc.reply)
        finally:
            if retry is not None:
                retry.release()
                self._retry = None
            self._armed.clear()
            self.conn.idle.end_route()

    async def _try(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        cluster: Cluster,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        has_host: bool,
        replay: list[bytes] | None,
        fresh: bool,
    ) -> bool:
        """One try against one host. Returns the keep-alive decision for downstream, or
        raises ``_Retry`` / ``_Fail`` while nothing of the response has gone downstream."""
        self._replay_left = replay
        retry = self._retry
        try:
            host = cluster.choose_host() if retry is None else retry.choose_host()
        except NoHostError:
            raise _Fail(NO_HEALTHY_UPSTREAM) from None
        if self.proxy.upstream_h2:
            return await self._try_h2(head, info, route, cluster, host, target, headers, has_host)
        pool = self.proxy.pools.http1(cluster, host)
        conn = None if fresh else pool.take_idle()  # the common case, without a coroutine
        reused = conn is not None
        if conn is None:
            try:
                conn, reused = await h1_exchange.acquire(pool, fresh)
            except UpstreamFailed as exc:
                raise _failed(exc.reply) from None
        info.upstream_host = host.label
        if self.proxy.detailed:
            info.upstream_connect_duration = _monotonic() - info.start
        if route.auto_host_rewrite or not has_host:
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.append((b"host", host.label_bytes))
        reusable = False
        per_try = retry.per_try_timeout if retry is not None else None
        host.active_requests += 1  # what LB_LEAST_REQUEST compares
        timed_out = False
        # One frame for the whole exchange (each coroutine layer is paid on every resume).
        scope: trio.CancelScope | contextlib.nullcontext[None] = _NO_SCOPE
        try:
            if per_try:
                # Armed before it is entered: a deadline already past cancels on entry.
                scope = trio.CancelScope()
                self._arm(scope, per_try)
            with scope:
                replay = self._replay_left
                # framing from our parse: a Content-Length or chunked the client sent, or
                # chunked when a filter changed the body
                chunked = self._up_chunked
                wire = encode_request_head(
                    head.method,
                    target,
                    headers,
                    length=None if chunked else head.content_length,
                    chunked=chunked,
                )
                if replay:
                    wire += b"".join(replay)
                try:
                    await conn.stream.send_all(wire)
                    if not self.request_done:
                        await self._send_body(head, info, conn.stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The upstream went away while we were sending. It may still have
                    # answered (an early 413, say): read what it said before giving up.
                    pass
                keep, reusable = await self._relay_response(head, info, route, conn, reused)
                return keep
            # The per-try timeout fired.
            timed_out = True
            if self.response_started:
                self.stream.abort()
                return False
            raise _Retry(TIMEOUT)
        finally:
            host.active_requests -= 1
            if timed_out or not reusable:
                pool.close(conn)
            else:
                pool.release(conn, True)

    async def _try_h2(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        cluster: Cluster,
        host: Host,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        has_host: bool,
    ) -> bool:
        """One try over an upstream HTTP/2 stream: HTTP/1 framing in, HTTP/2 frames out."""
        pool = self.proxy.pools.http2(cluster, host, self.proxy.h2_settings)
        try:
            up, usid, uinbox = await h2_exchange.open_stream(pool)
        except UpstreamFailed as exc:
            raise _failed(exc.reply) from None
        info.upstream_host = host.label
        if self.proxy.detailed:
            info.upstream_connect_duration = _monotonic() - info.start
        authority = head.host if has_host and head.host else None
        if route.host_rewrite is not None:
            authority = route.host_rewrite.encode("latin-1")
        elif route.auto_host_rewrite or not authority:
            authority = host.label_bytes
        h2_headers = request_to_h2(head.method, target, authority, headers)
        h2_headers = [h for h in h2_headers if h[0] != b"content-length"]
        if not self._up_chunked and head.content_length is not None:
            h2_headers.append((b"content-length", b"%d" % head.content_length))
        if not self.request_done:
            self._replay_left = None  # a body streamed as DATA is not kept for a retry
        host.active_requests += 1
        try:
            up.send_headers(usid, h2_headers, end_stream=self.request_done)
            if not self.request_done:
                if head.expect_continue and not self.sent_continue and head.version == b"1.1":
                    self.sent_continue = True
                    await self._send_down(CONTINUE)
                chain = self._chain
                # the chain when its data hooks run (narrowed once, not per chunk)
                data_chain = chain if chain is not None and chain.mask & REQUEST_DATA else None
                while True:
                    event = await self._next_body_event()
                    if type(event) is Body:
                        info.bytes_received += len(event.data)
                        data = event.data
                        if data_chain is not None:
                            data = await self._filter_body(data_chain, data, False)
                        await up.send_data(usid, data)
                    elif type(event) is EndOfMessage:
                        if data_chain is not None:
                            tail = await self._filter_body(data_chain, b"", True)
                            if tail:
                                await up.send_data(usid, tail)
                        if chain is not None:
                            await self._filter_request_trailers(chain, event.trailers)
                        self._request_complete(info)
                        # connection-specific fields are refused by HTTP/2: dropped here
                        trailers = trailers_to_h2(event.trailers) if event.trailers else None
                        if trailers:
                            up.send_trailers(usid, trailers)
                        else:
                            up.end_stream(usid)
                        break
                    else:  # a head inside a body: the parser's framing says otherwise (a bug)
                        raise H1Error(400, "unexpected request head")
            return await self._relay_h2_response(head, info, route, up, usid, uinbox)
        except StreamGone as exc:
            if not self.response_started:
                raise _Retry(UPSTREAM_RESET, race=exc.refused) from None
            info.add_flag(Flag.UPSTREAM_RESET)
            self.stream.abort()
            return False
        finally:
            host.active_requests -= 1
            up.close_stream(usid)

    async def _relay_h2_response(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        up: H2Endpoint,
        usid: int,
        uinbox: Inbox,
    ) -> bool:
        chunked = close = False
        self.conn.idle.pause()
        chain = self._chain
        while True:
            event = await uinbox.get()
            # `type(...) is`, not a local `kind`: the checker narrows only this form.
            if type(event) is H2Data:
                data = event.data
                info.bytes_sent += len(data)
                if chain is not None and chain.mask & RESPONSE_DATA:
                    out = await chain.response_data(data, False)
                    if isinstance(out, LocalReply):
                        return self._cut(info)[0]
                    data = out
                if data:
                    await self._send_down(encode_chunk(data) if chunked else data)
                up.consumed(usid, event.flow_length)
                if event.end_stream:
                    if chain is not None:
                        tail = await self._filtered_tail(chain, chunked, None)
                        if tail is None:
                            return self._cut(info)[0]
                        if tail:
                            await self._send_down(tail)
                    elif chunked:
                        await self._send_down(encode_last_chunk(None))
                    break
            elif type(event) is H2ResponseHeaders:
                try:
                    status, headers = response_from_h2(event.headers)
                except H2HeaderError:
                    raise _Fail(BAD_RESPONSE) from None
                length = None
                for name, value in headers:
                    if name == b"content-length" and value.isdigit():
                        length = int(value)
                if event.end_stream and length is None:
                    length = 0
                    headers.append((b"content-length", b"0"))
                # reason None: the encoder writes the standard phrase (HTTP/2 has none)
                resp = ResponseHead(status, None, b"2", headers, True, length, False)
                framing: tuple[bool, bool, bytes] | LocalReply
                if chain is None:
                    framing = self._response_head(head, info, route, resp)
                else:
                    framing = await self._filtered_head(
                        chain, head, info, route, resp, event.end_stream
                    )
                    if isinstance(framing, LocalReply):
                        return await self._filter_reply(head, info, framing)
                chunked, close, wire = framing
                await self._send_down(wire)
                if event.end_stream:
                    if chain is not None and chunked:
                        await self._send_down(encode_last_chunk(None))
                    break
            elif type(event) is H2Trailers:
                if chain is not None:
                    # a content-length body has no room for trailers: dropped
                    trailers = event.headers if chunked else None
                    tail = await self._filtered_tail(chain, chunked, trailers)
                    if tail is None:
                        return self._cut(info)[0]
                    if tail:
                        await self._send_down(tail)
                elif chunked:  # a content-length body has no room for trailers: dropped
                    await self._send_down(encode_last_chunk(event.headers))
                break
            elif type(event) is InformationalHeaders and head.version == b"1.1":
                status, headers = response_from_h2(event.headers)
                if status != 100:
                    await self._send_down(encode_response_head(status, None, headers))
        return head.keep_alive and not close and self.request_done

    async def _send_body(self, head: RequestHead, info: RequestRecord, upstream: Stream) -> None:
        if head.expect_continue and not self.sent_continue and head.version == b"1.1":
            self.sent_continue = True
            await self._send_down(CONTINUE)
        limit = self.proxy.config.retry_buffer_bytes
        kept = sum(map(len, self._replay_left)) if self._replay_left else 0
        chunked = self._up_chunked
        chain = self._chain
        # the chain when its data hooks run (narrowed once, not per chunk)
        data_chain = chain if chain is not None and chain.mask & REQUEST_DATA else None
        chunks = 0
        while True:
            event = await self._next_body_event()
            chunks += 1
            if chunks % 16 == 0:  # a fast client must not keep the loop to itself
                await trio.lowlevel.checkpoint()
            if type(event) is Body:
                data = event.data
                info.bytes_received += len(data)
                if data_chain is not None:
                    data = await self._filter_body(data_chain, data, False)
                wire = encode_chunk(data) if chunked else data
            elif type(event) is EndOfMessage:
                wire = b""
                if data_chain is not None:
                    wire = await self._filter_body(data_chain, b"", True)
                    if chunked:
                        wire = encode_chunk(wire)
                if chain is not None:
                    await self._filter_request_trailers(chain, event.trailers)
                if chunked:
                    wire += encode_last_chunk(event.trailers)
                self._request_complete(info)
            else:  # a head inside a body: the parser's framing says otherwise (a bug)
                raise H1Error(400, "unexpected request head")
            if self._replay_left is not None:
                kept += len(wire)
                if kept <= limit:
                    self._replay_left.append(wire)
                else:
                    self._replay_left = None
            if wire:
                await upstream.send_all(wire)
            if self.request_done:
                return

    async def _relay_response(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        conn: H1Connection,
        reused: bool,
    ) -> tuple[bool, bool]:
        upstream = conn.stream
        parser = conn.parser
        if parser is None:
            parser = conn.parser = ResponseParser(head_request=head.method == b"HEAD")
        else:  # a reused connection: its last exchange ended clean, or it was not reused
            parser.reset(head_request=head.method == b"HEAD")
        # Waiting on the upstream is the route timeout's business, not the idle timeout's.
        self.conn.idle.pause()
        got_bytes = False
        chunked_down = False
        close_after = False
        receive = upstream.receive_after_wait  # the answer cannot be there yet
        reads = 0
        while True:
            reads += 1
            if reads % 16 == 0:  # a fast upstream must not keep the loop to itself
                await trio.lowlevel.checkpoint()
            try:
                data = await receive(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = None  # reset
            receive = upstream.receive_some
            events = None
            if data:
                got_bytes = True
                try:
                    events = parser.feed(data)
                except H1Error:
                    if not self.response_started:
                        raise _Fail(BAD_RESPONSE) from None
                    info.add_flag(Flag.UPSTREAM_PROTOCOL_ERROR)
            elif data is not None and got_bytes:
                try:
                    events = parser.feed_eof()  # a close-delimited body ends here
                except H1Error:
                    pass  # cut short: the same as a reset
            if events is None:
                if not self.response_started:
                    # Closed or reset before any response byte: on a reused idle
                    # connection that is the keep-alive race, safe to send again.
                    race = reused and not got_bytes and head.method in _IDEMPOTENT
                    raise _Retry(UPSTREAM_RESET, race=race)
                # Mid-body: the status line is gone; the client must see a failure.
                info.add_flag(Flag.UPSTREAM_TERMINATION)
                self.stream.abort()
                return False, False
            out: list[bytes] = []
            done = False
            chain = self._chain
            for event in events:
                # `type(...) is`, not a local `kind`: the checker narrows only this form.
                if type(event) is Body:
                    piece = event.data
                    info.bytes_sent += len(piece)
                    if chain is not None and chain.mask & RESPONSE_DATA:
                        filtered = await chain.response_data(piece, False)
                        if isinstance(filtered, LocalReply):
                            return self._cut(info)
                        piece = filtered
                    out.append(encode_chunk(piece) if chunked_down else piece)
                elif type(event) is EndOfMessage:
                    if chain is not None and chain.mask & (RESPONSE_DATA | RESPONSE_TRAILERS):
                        tail = await self._filtered_tail(chain, chunked_down, event.trailers)
                        if tail is None:
                            return self._cut(info)
                        out.append(tail)
                    elif chunked_down:
                        out.append(encode_last_chunk(event.trailers))
                    done = True
                elif type(event) is ResponseHead:
                    if event.status < 200:
                        if event.status == 101:
                            if head.upgrade is not None and _switches_to_asked(head.upgrade, event):
                                return await self._upgrade(event, info, route, conn, parser, out)
                            if not self.response_started:  # a switch nobody asked for, or to h2c
                                raise _Fail(BAD_RESPONSE)
                            info.add_flag(Flag.UPSTREAM_PROTOCOL_ERROR)
                            self.stream.abort()
                            return False, False
                        # Our own 100 went already, or none was asked; HTTP/1.0 has no 1xx at all.
                        if event.status != 100 and head.version == b"1.1":
                            out.append(_informational(event))
                    else:
                        retry = self._retry
                        if (
                            retry is not None
                            and self._replay_left is not None
                            and retry.retries_status(event.status)
                        ):
                            raise _Retry(Reply(event.status, Flag.NONE, b""))
                        framing: tuple[bool, bool, bytes] | LocalReply
                        if chain is None:
                            framing = self._response_head(
                                head, info, route, event, None, parser.head_raw
                            )
                        else:
                            framing = await self._filtered_head(
                                chain, head, info, route, event, event.content_length == 0
                            )
                            if isinstance(framing, LocalReply):
                                # The filter's reply stands in for the upstream's response, whose
                                # unread rest makes the upstream connection unusable.
                                return await self._filter_reply(head, info, framing), False
                        chunked_down, close_after, head_bytes = framing
                        out.append(head_bytes)
            if out:
                await self._send_down(b"".join(out) if len(out) > 1 else out[0])
            if done:
                # After an Upgrade request that was refused, the request parser has stopped:
                # the connection cannot carry another request.
                keep = (
                    head.keep_alive
                    and not close_after
                    and self.request_done
                    and head.upgrade is None
                )
                reusable = (
                    self.request_done
                    and parser.complete
                    and not parser.trailing
                    and info.response_code != 0
                    and self._upstream_keep_alive
                )
                return keep, reusable

    def _response_head(
        self,
        head: RequestHead,
        info: RequestRecord,
        route: Route,
        resp: ResponseHead,
        stripped: list[tuple[bytes, bytes]] | None = None,
        raw: bytes | None = None,
    ) -> tuple[bool, bool, bytes]:
        """Downstream head for the upstream's final response: (chunked, close, bytes).
        ``stripped``: its headers, hop-by-hop ones already taken off (response filters).
        ``raw``: the upstream's head as received, which the parser vouches is exactly what we
        would write (``ResponseParser.head_raw``): sent as it is when nothing here changes it."""
        info.response_code = resp.status
        info.response_received_duration = _monotonic() - info.start
        self._upstream_keep_alive = resp.keep_alive
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
        if (
            raw is not None
            and not close
            and head.version == b"1.1"
            and not (route.response_headers_to_add or route.response_headers_to_remove)
        ):
            self.response_started = True
            return chunked, False, raw
        headers = strip_hop_by_hop(resp.headers) if stripped is None else stripped
        if close:
            headers.append((b"connection", b"close"))
        elif head.version == b"1.0":  # an HTTP/1.0 client closes unless told otherwise
            headers.append((b"connection", b"keep-alive"))
        if route.response_headers_to_add or route.response_headers_to_remove:
            headers = apply_header_mutations(
                headers, route.response_headers_to_add, route.response_headers_to_remove
            )
        self.response_started = True
        wire = encode_response_head(
            resp.status, resp.reason, headers, length=length, chunked=chunked
        )
        return chunked, close, wire

    async def _upgrade(
        self,
        resp: ResponseHead,
        info: RequestRecord,
        route: Route,
        conn: H1Connection,
        parser: ResponseParser,
        out: list[bytes],
    ) -> tuple[bool, bool]:
        """101 Switching Protocols: send the head on, then relay bytes both ways."""
        info.response_code = 101
        headers = strip_hop_by_hop(resp.headers, keep_upgrade=True)
        headers.append((b"connection", b"upgrade"))
        out.append(encode_response_head(101, resp.reason, headers))
        if parser.upgraded_tail:
            out.append(parser.upgraded_tail)
        self.response_started = True
        await self._send_down(b"".join(out))
        # A tunnel lasts as long as its two ends want: only the idle timeout bounds it now,
        # not the route or per-try timeouts that bounded the upgrade request.
        for scope, _ in self._armed:
            if scope is not None:
                scope.deadline = math.inf
        self.conn.idle.end_route()
        client_tail = self.parser.upgraded_tail
        try:
            if client_tail:
                await conn.stream.send_all(client_tail)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False, False
        await relay(self.stream, conn.stream, self.conn.idle)
        return False, False

    # ------------------------------------------------------------------ downstream writes

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
            self.response_started = True
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
        self.response_started = True
        return data, not close

    async def _try_local_reply(
        self, head: RequestHead | None, info: RequestRecord, reply: Reply
    ) -> None:
        try:
            await self._local_reply(head, info, reply, close=True)
        except _DownstreamGone:
            info.add_flag(Flag.DOWNSTREAM_TERMINATION)


def _switches_to_asked(asked: bytes, resp: ResponseHead) -> bool:
    """A 101 may switch only to protocols the client asked for (RFC 9110 7.8), and never to
    h2c: the proxy strips that offer, so an upstream switching to it is not to be relayed."""
    got = b",".join([v for n, v in resp.headers if n == b"upgrade"]).lower()
    tokens = [t for t in (t.strip(b" \t") for t in got.split(b",")) if t]
    wanted = {t.strip(b" \t") for t in asked.split(b",")}
    return bool(tokens) and all(t in wanted and t != b"h2c" for t in tokens)


def _informational(resp: ResponseHead) -> bytes:
    return encode_response_head(resp.status, resp.reason, strip_hop_by_hop(resp.headers))
