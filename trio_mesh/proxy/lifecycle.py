"""The life of one request, whatever its protocols: one driver, ``handle``.

MOSN's split: a downstream *adapter* per protocol (``http1._Session``, ``http2._Stream``,
``xprotocol._Call``) decodes its codec's events into a :class:`RequestView` and provides three
things; this module runs the protocol-independent part between them; an upstream *exchange* per
protocol (``exchange/http1.py``, ``exchange/http2.py``, ``exchange/rpc.py``) talks to the chosen
host.

What an adapter provides (:class:`Downstream`):

- a **request-body source** (:class:`BodySource`): ``await read()`` gives the next chunk
  (``finished`` set on the last one, ``request_trailers`` then the request's trailers or
  ``None``; ``duplex``: the body goes up while the response comes down); ``sent()`` after a
  chunk was passed on (HTTP/2 returns its flow-control credit then); ``keep(n)`` /
  ``forget(n)`` count the bytes kept for a retry in its budgets (HTTP/2; HTTP/1 has none:
  ``retry_buffer_bytes`` alone bounds them). The source itself answers ``Expect:
  100-continue`` when the body is first asked for.
- a **response sink** (:class:`ResponseSink`): ``informational``, ``head(resp, end, raw)``
  (``raw``: the upstream's HTTP/1 head bytes when they may go down verbatim), ``data(bytes,
  end)``, ``trailers(headers)`` (ends the response), ``flush()`` when ``buffers`` (HTTP/1
  writes what a read brought in one send; a buffering sink sends what it holds itself when
  the response ends), ``cut(flag, code)`` once the response began,
  ``upgrade`` (HTTP/1 only: a 101 tunnel), ``waiting()`` (the request is upstream) and the
  ``started`` flag.
- **local replies** in its protocol (``reply``), from the one ``Reply`` table
  (``replies.py``), and its timeouts: ``arm_route`` (the route timeout), ``try_scope`` (a
  per-try cancel scope), ``end_route``.

``handle`` runs: the route match, the stream filters' chain (made with the route) and its
request-headers hooks (so a filter's header changes do not re-route), then the router's own
answers (no route, a direct response or redirect), the cluster, its circuit breaker, the tries
(``forward``; a ``RetryState`` for a route with a
retry policy: the host, the per-try timeout, ``retry_on`` by the failure's cause, never the
host that just failed when another exists; the keep-alive race, or a stream the upstream
refused, tried once more on a fresh connection while the body is replayable; HTTP/1 only for
idempotent methods), each try one ``exchange`` call. The request body goes through
:class:`RequestBody` (request data and trailers hooks run once, the result kept for a retry
while small) and the response through :class:`FilteredSink` when the chain has response hooks
(:class:`HeadFilteredSink` when it hooks the response headers only: the body goes straight
down). An exchange raises ``UpstreamFailed(reply)`` while nothing of the response
went down; after that it cuts the response through the sink. The adapter ends the request
(``Observers.end(record)``): the route timeout and a downstream reset are its scopes' business.

An RPC exchange fits the same shape: a request without a body stream (``RequestBody`` empty),
routed by its header map (``handle_message`` takes the frame's header lookup), its response one
frame handed to the adapter's sink, and no ``RetryState`` (an RPC route's retry policy is not
applied: config warns of one).

RPC as built (the section "a request that is one message" at the end): ``handle_message`` is
the head of ``handle`` for a request that is one message, then the same ``forward`` (the
tries); the response goes down whole through ``MessageSink.message``. With no stream filter on
the listener, the RPC adapter runs the same steps synchronously on its reader, without a task
per call (``route_message``, ``message_cluster``, ``open_try`` / ``close_try``): the fast path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from time import monotonic as _monotonic
from time import time as _time
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

import trio

from ..config.subset import MatchKey
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
    filter_failed,
)
from ..network.stream import Stream
from ..protocols.http1 import ResponseHead, strip_hop_by_hop
from ..protocols.http2 import ErrorCode
from ..router import Route
from ..upstream import Cluster, Host, NoHostError
from ..upstream.outlier import OutlierDetector
from .exchange import UpstreamFailed
from .exchange.auto import exchange as auto_exchange
from .headers import header_getter
from .record import RequestRecord
from .replies import (
    NO_CLUSTER,
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    OVERFLOW,
    TIMEOUT,
    Cause,
    Flag,
    Reply,
)
from .retry import RetryState

if TYPE_CHECKING:
    from ..pool import Pools
    from ..protocols.http2 import H2Settings
    from ..router.table import RouteTable
    from ..tracing.tracer import Tracer
    from ..upstream import ClusterManager

Header = tuple[bytes, bytes]

_RESPONSE_HOOKS = RESPONSE_HEADERS | RESPONSE_DATA | RESPONSE_TRAILERS
_REQUEST_BODY_HOOKS = REQUEST_DATA | REQUEST_TRAILERS


class FilterReplied(Exception):
    """A stream filter answered (or failed) mid-request: ``reply`` stands in for the response."""

    def __init__(self, reply: LocalReply) -> None:
        self.reply = reply


class ResponseCut(Exception):
    """The response was cut (a response filter failed after it began): the request is over."""


class RequestView:
    """One request as every protocol sees it. ``headers``: its regular header list (the
    request-headers hooks change it in place); ``end``: it has no body."""

    __slots__ = (
        "authority",
        "end",
        "grpc",
        "headers",
        "host",
        "method",
        "path",
        "protocol",
        "query",
        "target",
    )

    def __init__(self) -> None:
        self.protocol = ""
        self.method = b""
        self.target = b""  # path and query, as received
        self.authority: bytes | None = None
        self.host = ""
        self.path = ""
        self.query = ""
        self.headers: list[Header] = []
        self.end = True
        self.grpc = False


class UpstreamRequest:
    """The request as an exchange sends it, prepared once per request (a retry sends the same).

    ``authority``: the Host / ``:authority`` (``None``: the chosen host's address);
    ``host_in_headers``: ``headers`` carry the Host field in place (HTTP/1 downstream);
    ``length`` / ``chunked``: the body's framing from our own parse; ``from_h1``: the headers
    are HTTP/1's (the HTTP/2 exchange converts them); ``upgrade``: the Upgrade asked for."""

    __slots__ = (
        "authority",
        "chunked",
        "from_h1",
        "head_request",
        "headers",
        "host_in_headers",
        "length",
        "method",
        "scheme",
        "target",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.scheme = b"http"
        self.authority: bytes | None = None
        self.headers: list[Header] = []
        self.host_in_headers = False
        self.length: int | None = None
        self.chunked = False
        self.from_h1 = False
        self.head_request = False
        self.upgrade: bytes | None = None


class BodySource(Protocol):
    """The downstream side of a request body (see the module docstring)."""

    @property
    def finished(self) -> bool:
        """The last chunk was read."""

    @property
    def request_trailers(self) -> list[Header] | None:
        """The request's trailers, once ``finished``."""

    @property
    def duplex(self) -> bool:
        """The body goes up while the response comes down (HTTP/2: gRPC streams both ways)."""

    async def read(self) -> bytes: ...

    def sent(self) -> None: ...

    def keep(self, n: int) -> bool: ...

    def forget(self, n: int) -> None: ...


class ResponseSink(Protocol):
    """The downstream side of a response (see the module docstring)."""

    @property
    def started(self) -> bool:
        """Something of the response went downstream: it can no longer be replaced."""

    @property
    def buffers(self) -> bool:
        """Writes wait for ``flush`` (HTTP/1: one send per read of the upstream)."""

    def waiting(self) -> None: ...

    async def informational(
        self, status: int, reason: bytes | None, headers: list[Header]
    ) -> None: ...

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None: ...

    async def data(self, data: bytes, end: bool) -> None: ...

    async def trailers(self, trailers: list[Header]) -> None: ...

    async def flush(self) -> None: ...

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None: ...

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None: ...


class Downstream(Protocol):
    """What a downstream adapter gives the lifecycle (see the module docstring)."""

    chain: StreamFilterChain | None

    def filter_context(self, route: Route | None, cluster: str | None) -> RequestContext: ...

    def peer(self) -> str | None:
        """The client's address as logs write it (asked only for a sampled trace's span)."""

    def original_dst(self) -> tuple[str, int] | None:
        """The connection's original destination (asked only by an ORIGINAL_DST cluster)."""

    def upstream_request(self, route: Route, info: RequestRecord) -> UpstreamRequest: ...

    async def reply(
        self, reply: Reply, *, headers: list[Header] | None = None, route: Route | None = None
    ) -> None: ...

    async def filter_reply(self, reply: LocalReply) -> None: ...

    def arm_route(self, timeout: float | None) -> None: ...

    def try_scope(self, timeout: float) -> trio.CancelScope: ...

    def end_route(self) -> None: ...

    def route_expired(self) -> bool:
        """Whether the route timeout is what cancelled the request (asked only then)."""


#: An upstream exchange: one try of ``req`` against ``host`` (see ``exchange/``).
Exchange = Callable[
    ["ProxyCore", Cluster, Host, UpstreamRequest, "RequestBody", ResponseSink, RequestRecord,
     RetryState | None, bool],
    Awaitable[None],
]  # fmt: skip


class ProxyCore:
    """What one listener's HTTP proxy knows, built once per configuration (the adapters' proxy
    objects are this, plus their codec's settings)."""

    table: RouteTable
    clusters: ClusterManager
    pools: Pools
    detailed: bool
    filters: FilterChainFactory | None
    #: What a request body may keep for a retry (-1: nothing, the body is streamed).
    retry_buffer_bytes: int
    #: The configured upstream protocol's exchange.
    exchange: Exchange
    #: ``upstream_protocol: Auto``: to a cluster with TLS, the upstream's ALPN answer picks
    #: the protocol (``exchange/auto.py``) instead of the request's.
    auto_upstream: bool = False
    #: Settings of upstream HTTP/2 connections (``settings.h2_settings``).
    h2_settings: H2Settings
    #: A stream the upstream refused, sent again, counts as a retry (HTTP/2 both sides).
    counts_refused: bool
    #: The configuration's tracer (``tracing/tracer.py``); ``None``: tracing off.
    tracer: Tracer | None = None


class RequestBody:
    """The request body as exchanges read it: pulled from the adapter's source once, through
    the request data and trailers hooks, each piece kept (while the whole stays within
    ``retry_buffer_bytes`` and the source's budgets) so that a retry sends it again.

    ``next()`` gives the next chunk; ``done`` is set with the last one (``trailers``: the
    request's, or ``None``). ``empty``: the request has no body at all. ``replayable``: all
    of it read so far is kept (a retry may resend it)."""

    __slots__ = (
        "_at",
        "_dirty",
        "_hooks",
        "_kept",
        "_limit",
        "chain",
        "done",
        "empty",
        "pieces",
        "replayable",
        "source",
        "trailers",
    )

    def __init__(self, source: BodySource) -> None:
        self.source = source
        self.chain: StreamFilterChain | None = None
        self.pieces: list[bytes] = []
        self.empty = True
        self.done = True
        self.replayable = True
        self.trailers: list[Header] | None = None
        self._at = 0  # the next piece to replay
        self._kept = 0
        self._limit = 0
        self._hooks = 0
        self._dirty = False  # something of a request is in the fields ``reset`` clears

    def reset(self, empty: bool, limit: int) -> None:
        """A new request (an HTTP/1 connection reuses its body object): the rest is cleared
        only when the last request used it (the common bodyless request writes three fields)."""
        self.empty = self.done = empty
        self._limit = limit
        if self._dirty:
            self._dirty = False
            self.chain = None
            self._hooks = 0
            self.replayable = True
            self.trailers = None
            self._at = 0
            self.pieces = []
            self._kept = 0

    def use_chain(self, chain: StreamFilterChain) -> None:
        """The request's filters (known once the route is): their body hooks run here."""
        self.chain = chain
        self._hooks = chain.mask & _REQUEST_BODY_HOOKS
        self._dirty = True

    def rewind(self) -> None:
        """Another try: what was kept goes again (only called when ``replayable``)."""
        self._at = 0
        self.done = self.empty

    @property
    def duplex(self) -> bool:
        return self.source.duplex

    async def next(self) -> bytes:
        pieces = self.pieces
        at = self._at
        if at < len(pieces):  # a retry: what the earlier try sent first
            self._at = at + 1
            self.done = self.source.finished and at + 1 == len(pieces)
            return pieces[at]
        source = self.source
        self._dirty = True
        data = await source.read()
        last = source.finished
        hooks = self._hooks
        if hooks:
            chain = self.chain
            assert chain is not None
            if hooks & REQUEST_DATA:
                out = await chain.request_data(data, last)
                if isinstance(out, LocalReply):
                    raise FilterReplied(out)
                data = out
            if last and source.request_trailers and hooks & REQUEST_TRAILERS:
                reply = await chain.request_trailers(Headers(source.request_trailers))
                if reply is not None:
                    raise FilterReplied(reply)
        if last:
            self.trailers = source.request_trailers
            self.done = True
        if self.replayable:
            kept = self._kept + len(data)
            if kept <= self._limit and source.keep(len(data)):
                self._kept = kept
                pieces.append(data)
                self._at += 1
            else:
                self.forget()
        return data

    def sent(self) -> None:
        """The last chunk went upstream (its flow-control credit may go back)."""
        self.source.sent()

    def forget(self) -> None:
        """No retry will replay the body (the response began, or it outgrew the buffer)."""
        if self.replayable and not self.empty:
            self.replayable = False
            self._dirty = True
            self.pieces = []
            if self._kept:
                self.source.forget(self._kept)
                self._kept = 0


class FilteredSink:
    """A response sink behind the chain's response hooks (made only when it has some)."""

    __slots__ = ("_data_hooks", "buffers", "chain", "inner", "info")

    def __init__(self, inner: ResponseSink, chain: StreamFilterChain, info: RequestRecord) -> None:
        self.inner = inner
        self.chain = chain
        self.info = info
        self.buffers = inner.buffers
        self._data_hooks = False

    @property
    def started(self) -> bool:
        return self.inner.started

    def waiting(self) -> None:
        self.inner.waiting()

    async def informational(self, status: int, reason: bytes | None, headers: list[Header]) -> None:
        await self.inner.informational(status, reason, headers)

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None:
        """The response-headers hooks (which may change the status and the headers, or answer
        instead of the upstream), then the head; taking Content-Length off makes the body
        chunked downstream (HTTP/1)."""
        chain = self.chain
        self._data_hooks = not end and bool(chain.mask & RESPONSE_DATA)
        if not chain.mask & RESPONSE_HEADERS:
            await self.inner.head(resp, end, None)
            return
        headers = Headers(strip_hop_by_hop(resp.headers), resp.status)
        if not chain.replied:  # chain.response_headers, inlined: a coroutine less
            for f, bits, filter_name in reversed(chain.made):
                if bits & RESPONSE_HEADERS:
                    try:
                        reply = await f.on_response_headers(headers, end)
                    except Exception:
                        reply = filter_failed(filter_name, "on_response_headers")
                    if reply is not None:
                        chain.replied = True
                        raise FilterReplied(reply)
        status = headers.status or resp.status
        if status != resp.status and (type(status) is not int or not 200 <= status <= 999):
            raise FilterReplied(LocalReply(500, FILTER_FAILED, flag=Flag.FILTER_FAILED))
        length = resp.content_length
        if headers.changed or status != resp.status:
            length = None
            for name, value in headers.raw:
                if name == b"content-length" and value.isdigit():
                    length = int(value)
            if end and length is None and resp.version == b"2":
                length = 0
        if status == resp.status and length == resp.content_length:
            # The usual case: the upstream's head, its headers the filtered list (the
            # exchange reads nothing more of the event): no new head per request.
            resp.headers = headers.raw
        else:
            resp = ResponseHead(
                status,
                None if status != resp.status else resp.reason,
                resp.version,
                headers.raw,
                resp.keep_alive,
                length,
                resp.chunked,
            )
        await self.inner.head(resp, end, None)

    async def data(self, data: bytes, end: bool) -> None:
        if self._data_hooks:
            out = await self.chain.response_data(data, end)
            if isinstance(out, LocalReply):
                self._cut()
            data = out
        await self.inner.data(data, end)

    async def trailers(self, trailers: list[Header]) -> None:
        chain = self.chain
        if self._data_hooks:
            tail = await chain.response_data(b"", True)
            if isinstance(tail, LocalReply):
                self._cut()
            if tail:
                await self.inner.data(tail, False)
        if trailers and chain.mask & RESPONSE_TRAILERS:
            if await chain.response_trailers(Headers(trailers)) is not None:
                self._cut()
        await self.inner.trailers(trailers)

    def _cut(self) -> NoReturn:
        self.inner.cut(Flag.FILTER_FAILED)
        raise ResponseCut()

    async def flush(self) -> None:
        await self.inner.flush()

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        self.inner.cut(flag, code)

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None:
        await self.inner.upgrade(resp, upstream, tail)

    async def message(self, msg: Any) -> None:
        """A response that is one message (RPC): its sink runs the chain's hooks on it."""
        await cast("MessageSink", self.inner).message(msg)


class HeadFilteredSink(FilteredSink):
    """A `FilteredSink` for a chain whose only response hooks are on the headers: the body
    goes straight to the inner sink (its bound methods, not a wrapper coroutine per piece)."""

    __slots__ = ("data", "flush")

    data: Callable[[bytes, bool], Coroutine[Any, Any, None]]  # type: ignore[assignment]
    flush: Callable[[], Coroutine[Any, Any, None]]

    def __init__(self, inner: ResponseSink, chain: StreamFilterChain, info: RequestRecord) -> None:
        # (FilteredSink's fields set here: no super() call on every request)
        self.inner = inner
        self.chain = chain
        self.info = info
        self.buffers = inner.buffers
        self._data_hooks = False
        self.data = inner.data
        self.flush = inner.flush


class CookieSink:
    """A sink that adds the ``Set-Cookie`` of a cookie a route's hash policy made up to the
    upstream's response head (made only for such a request: no cost otherwise)."""

    __slots__ = ("buffers", "cookie", "data", "flush", "inner", "trailers")

    def __init__(self, inner: ResponseSink, cookie: bytes) -> None:
        self.inner = inner
        self.cookie = cookie
        self.buffers = inner.buffers
        # the body goes straight to the inner sink
        self.data = inner.data
        self.trailers = inner.trailers
        self.flush = inner.flush

    @property
    def started(self) -> bool:
        return self.inner.started

    def waiting(self) -> None:
        self.inner.waiting()

    async def informational(self, status: int, reason: bytes | None, headers: list[Header]) -> None:
        await self.inner.informational(status, reason, headers)

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None:
        # the raw head bytes no longer match: the adapter encodes the head again
        resp.headers = [*resp.headers, (b"set-cookie", self.cookie)]
        await self.inner.head(resp, end, None)

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        self.inner.cut(flag, code)

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None:
        await self.inner.upgrade(resp, upstream, tail)


async def handle(
    core: ProxyCore,
    ad: Downstream,
    view: RequestView,
    info: RequestRecord,
    body: RequestBody,
    sink: ResponseSink,
) -> None:
    """Answer one request: filters, route, local answers, then the tries to its cluster.
    ``body``: the request's, over the adapter as its source (the adapter holds no reference
    to it: no cycle, so a finished request is freed at once, not by the cycle collector);
    ``sink``: where its response goes (usually the adapter itself)."""
    if core.tracer is not None:
        # Before the filters: they, the upstream and the access log see this hop's context.
        core.tracer.start_http(view.headers, info)
        if info.trace_sampled and not core.detailed:
            _describe(ad, view, info)
    header = header_getter(view.headers)
    route = core.table.match(view.host, view.path, view.query, header)
    if route is not None and (core.detailed or info.trace_sampled):
        info.route_name = route.name
    filters = core.filters
    cluster_name = None
    if filters is not None:
        # Envoy's order: the filters run first, then the router answers (404, ...).
        if route is not None and route.direct_response is None and route.redirect is None:
            cluster_name = route.pick_cluster(header)
        chain = filters.create(ad.filter_context(route, cluster_name))
        if chain is not None:
            ad.chain = chain
            body.use_chain(chain)
            if chain.mask & REQUEST_HEADERS:
                # chain.request_headers, inlined: a coroutine less on every request
                headers = Headers(view.headers)
                end = view.end
                for f, bits, name in chain.made:
                    if bits & REQUEST_HEADERS:
                        try:
                            reply = await f.on_request_headers(headers, end)
                        except Exception:
                            reply = filter_failed(name, "on_request_headers")
                        if reply is not None:
                            chain.replied = True
                            await ad.filter_reply(reply)
                            return
    if route is None:
        await ad.reply(NO_ROUTE)
        return
    if route.direct_response is not None:
        status, payload = route.direct_response
        await ad.reply(Reply(status, Flag.NONE, payload), route=route)
        return
    if route.redirect is not None:
        status, location = route.redirect.location("http", view.host, view.path, view.query)
        await ad.reply(
            Reply(status, Flag.NONE, b""),
            headers=[(b"location", location.encode("latin-1"))],
            route=route,
        )
        return
    if filters is None:
        cluster_name = route.pick_cluster(header)
    cluster = core.clusters.clusters.get(cluster_name) if cluster_name else None
    if cluster is None:
        await ad.reply(NO_CLUSTER)
        return
    info.upstream_cluster = cluster.name
    key = None
    if route.hash_policy is not None and cluster.hashing:
        key, set_cookie = route.hash_policy.key(header, view.query, ad.peer)
        if set_cookie is not None:
            sink = CookieSink(sink, set_cookie)
    match = subset_match(route, cluster)
    await forward(core, ad, route, cluster, info, body, sink, key=key, match=match)


def _describe(ad: Downstream, view: RequestView, info: RequestRecord) -> None:
    """What a sampled request's span reads that only a detailed observer has the adapters
    fill (tracing alone is not one: unsampled requests cost no more than that)."""
    info.start_time = _time() - (_monotonic() - info.start)
    info.protocol = view.protocol
    info.method = view.method.decode("latin-1")
    info.path = view.target.decode("latin-1")
    info.authority = view.host or None
    info.downstream_remote_address = ad.peer()


async def forward(
    core: ProxyCore,
    ad: Downstream,
    route: Route,
    cluster: Cluster,
    info: RequestRecord,
    body: RequestBody,
    sink: ResponseSink,
    retries: bool = True,
    key: int | None = None,
    match: MatchKey | None = None,
) -> None:
    """The tries of one routed request to ``cluster``, until one answers or none is left: the
    one copy every protocol uses (``handle``, ``handle_message``). ``retries``: the route's
    retry policy applies (RPC calls are not retried: config warns of such a policy).
    ``key``: the route's hash of this request, for a hashing balancer. ``match``: the
    route's ``metadata_match`` key (subset balancing; it takes precedence over ``key``)."""
    req = ad.upstream_request(route, info)  # once: a retry sends the same request id
    chain = ad.chain
    if chain is not None:
        chain.context.request_id = info.request_id
        if chain.mask & _RESPONSE_HOOKS:
            if chain.mask & _RESPONSE_HOOKS == RESPONSE_HEADERS:
                sink = HeadFilteredSink(sink, chain, info)
            else:
                sink = FilteredSink(sink, chain, info)
    # Made only for a route with a retry policy (nothing allocated otherwise).
    retry = RetryState(route.retry, cluster) if retries and route.retry is not None else None
    if retry is not None and match is not None:
        retry.match = match
    exchange = core.exchange
    if core.auto_upstream and cluster.tls is not None:
        exchange = auto_exchange
    ad.arm_route(route.timeout)
    stats = cluster.stats
    raced = False
    host: Host | None = None
    try:
        while True:
            stats.upstream_rq_total += 1
            # circuit_breakers.max_requests: tries outstanding to the cluster (inline, not
            # a context manager: this is the per-request path).
            if cluster.max_requests is not None and cluster.request_overflows():
                await ad.reply(OVERFLOW)
                return
            stats.upstream_rq_active += 1
            try:
                try:
                    if cluster.original_dst is not None:
                        host = cluster.choose_original_dst(ad.original_dst())
                    elif retry is not None:
                        host = retry.choose_host(key)
                    elif match is not None:
                        host = cluster.choose_subset(match, key)
                    elif key is None:
                        host = cluster.choose_host()
                    else:
                        host = cluster.choose_host_for(key)
                except NoHostError:
                    await ad.reply(NO_HEALTHY_UPSTREAM)
                    return
                info.upstream_host = host.label
                if chain is not None:
                    chain.context.upstream_host = host.label
                per_try = retry.per_try_timeout if retry is not None else None
                # upstream_rq_time: from here to the try's response complete (as Envoy's)
                tried = _monotonic()
                if not per_try:
                    await exchange(core, cluster, host, req, body, sink, info, retry, raced)
                    if info.response_code:
                        stats.upstream_response(info.response_code, (_monotonic() - tried) * 1000.0)
                        if cluster.outlier is not None:
                            cluster.outlier.response(host, info.response_code)
                    return
                scope = ad.try_scope(per_try)
                with scope:
                    await exchange(core, cluster, host, req, body, sink, info, retry, raced)
                if not scope.cancelled_caught:
                    if info.response_code:
                        stats.upstream_response(info.response_code, (_monotonic() - tried) * 1000.0)
                        if cluster.outlier is not None:
                            cluster.outlier.response(host, info.response_code)
                    return
                stats.upstream_rq_per_try_timeout += 1
                if sink.started:  # too late to retry: the response is cut
                    sink.cut(Flag.UPSTREAM_TIMEOUT, ErrorCode.CANCEL)
                    return
                raise UpstreamFailed(TIMEOUT)
            except UpstreamFailed as exc:
                if sink.started:  # defensive: nothing can be retried now
                    return
                if exc.race and not raced and body.replayable:
                    # The keep-alive race (or a stream the upstream refused): once more, on
                    # a new connection; not a route retry (no max_retries slot).
                    if retry is not None:
                        retry.release()
                    raced = True
                    if core.counts_refused:
                        stats.upstream_rq_retry += 1
                    body.rewind()
                    continue
                failed = exc.reply
                # A try that got no response counts as the reply it becomes (503 for a
                # reset or connect failure, 504 for a timeout), as Envoy charges aborts.
                stats.upstream_response(failed.status, (_monotonic() - tried) * 1000.0)
                if cluster.outlier is not None and host is not None:
                    outlier_failure(cluster.outlier, host, failed)
                if failed.transport_failure is not None:
                    info.upstream_transport_failure_reason = failed.transport_failure
                if (
                    retry is None
                    or failed.cause is Cause.REFUSED
                    or not body.replayable
                    or not retry.should_retry(failed)
                ):
                    await ad.reply(failed)
                    return
                body.rewind()
            except trio.Cancelled:
                # The route timeout (504) is the host's timeout too, as Envoy counts it;
                # a client going away is not.
                if host is not None and cluster.outlier is not None and ad.route_expired():
                    cluster.outlier.local_failure(host, TIMEOUT.status)
                raise
            finally:
                stats.upstream_rq_active -= 1
    except FilterReplied as exc:
        await ad.filter_reply(exc.reply)
    except ResponseCut:
        pass
    finally:
        if retry is not None:
            retry.release()
        # No try follows: what was kept for one goes now, not when an idle keep-alive
        # connection starts its next request (a no-op when nothing is kept).
        body.forget()
        ad.end_route()


# ---------------------------------------------------------------- a request that is one message
#
# RPC (bolt, Dubbo, any registered codec): the request is one message and so is its response;
# there is no body stream, no redirect or direct response (a route that gives one does not
# forward: no route), and no retry policy. ``handle_message`` is ``handle``'s head for it (the
# router reads the message's own header view, the adapter runs the request hooks on the
# message), then the same ``forward``: breaker, host, the exchange (``exchange/rpc.py``), the
# replies. The response goes down through ``MessageSink.message`` (the adapter runs the
# response hooks on it: only it knows the message's shape).
#
# The same steps, synchronous, make the RPC fast path (``proxy/xprotocol.py``): with no stream
# filter on the listener (decided at config time) a call needs nothing of its own, so the
# connection's reader routes it (``route_message``, ``message_cluster``), opens the try
# (``open_try``: the breaker, the host), writes it upstream and leaves a completion in the
# upstream connection's pending table; the upstream reader (or its timer) completes it: the
# response (or the reply from the one table) written down, ``close_try``, ``Observers.end``.


class MessageSink(ResponseSink, Protocol):
    """A response sink for a response that is one message (RPC)."""

    async def message(self, msg: Any) -> None:
        """Write the response message down, after the response hooks when the request's
        chain has some. Whatever answers instead (a filter's reply, ``INTERNAL``, the
        budget's ``OVERFLOW``) is raised as ``UpstreamFailed(reply)``: nothing went down yet,
        and ``forward`` answers it (RPC routes are not retried)."""


class MessageDownstream(Downstream, Protocol):
    """A downstream adapter whose requests are one message each (RPC): it hands ``forward``
    the proxy's empty body (``message_body``) and itself as the sink."""

    @property
    def body(self) -> RequestBody: ...

    @property
    def sink(self) -> MessageSink: ...

    async def request_filters(self, chain: StreamFilterChain) -> Reply | None:
        """Run ``chain``'s request hooks on the message; the reply that answers instead, if
        any (a filter's, or ``INTERNAL`` when the message cannot carry what they changed)."""


class WholeMessage:
    """For an adapter of a one-message protocol that is its own sink: the stream-shaped half
    of a ``ResponseSink`` (an exchange of a message protocol never calls it) and the route
    timeout hooks of a ``Downstream`` (the upstream connection times the call instead)."""

    __slots__ = ()
    buffers = False

    def waiting(self) -> None:
        pass

    async def informational(self, status: int, reason: bytes | None, headers: list[Header]) -> None:
        raise NotImplementedError("a one-message response has no informational head")

    async def head(self, resp: ResponseHead, end: bool, raw: bytes | None) -> None:
        raise NotImplementedError("a one-message response has no head: message()")

    async def data(self, data: bytes, end: bool) -> None:
        raise NotImplementedError("a one-message response has no body stream: message()")

    async def trailers(self, trailers: list[Header]) -> None:
        raise NotImplementedError("a one-message response has no trailers: message()")

    async def flush(self) -> None:
        pass

    def cut(self, flag: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        pass  # a message goes out whole or not at all: nothing is begun to cut

    async def upgrade(self, resp: ResponseHead, upstream: Stream, tail: bytes) -> None:
        raise NotImplementedError("a one-message protocol has no upgrade")

    def arm_route(self, timeout: float | None) -> None:
        pass  # the exchange's upstream connection times the call (one timer per connection)

    def try_scope(self, timeout: float) -> trio.CancelScope:
        raise NotImplementedError("message routes carry no retry policy")

    def end_route(self) -> None:
        pass

    def route_expired(self) -> bool:
        return False  # the call's timeout is an upstream failure (TIMEOUT), not a cancel


def route_message(
    core: ProxyCore, header: Callable[[str], str | None], info: RequestRecord
) -> tuple[Route | None, Route | None]:
    """The route of a request that is one message (its header view: ``header``), and that
    route again if it forwards (``None``: no route matched, or it answers itself)."""
    route = core.table.match("", "/", "", header)
    if route is None:
        return None, None
    if core.detailed or info.trace_sampled:
        info.route_name = route.name
    if route.direct_response is not None or route.redirect is not None:
        return route, None
    return route, route


def message_cluster(core: ProxyCore, name: str | None, info: RequestRecord) -> Cluster | None:
    """The cluster a routed request goes to (``None``: it does not exist: ``NO_CLUSTER``)."""
    cluster = core.clusters.clusters.get(name) if name else None
    if cluster is not None:
        info.upstream_cluster = cluster.name
    return cluster


def subset_match(route: Route, cluster: Cluster) -> MatchKey | None:
    """The subset key of a request (``None``: the cluster has no subsets): the route's
    ``metadata_match``, or ``()`` for a route without one, which the fallback policy serves
    (Envoy's: NO_FALLBACK refuses it, DEFAULT_SUBSET sends it to the default subset)."""
    if cluster.subsets is None:
        return None
    return route.match_for(cluster.name) if route.subset_on else ()


def open_try(
    cluster: Cluster,
    info: RequestRecord,
    key: int | None = None,
    match: MatchKey | None = None,
    dst: tuple[str, int] | None = None,
) -> Host | Reply:
    """``forward``'s try opening, synchronous (the RPC fast path): counted, the cluster's
    breaker, a host (by ``key``, the route's hash, when given); the reply if the try cannot
    open. A host returned: ``close_try`` ends it."""
    stats = cluster.stats
    stats.upstream_rq_total += 1
    if cluster.max_requests is not None and cluster.request_overflows():
        return OVERFLOW
    try:
        if cluster.original_dst is not None:
            host = cluster.choose_original_dst(dst)  # ``dst``: the connection's
        elif match is not None:
            host = cluster.choose_subset(match, key)
        elif key is None:
            host = cluster.choose_host()
        else:
            host = cluster.choose_host_for(key)
    except NoHostError:
        return NO_HEALTHY_UPSTREAM
    stats.upstream_rq_active += 1
    info.upstream_host = host.label
    return host


def close_try(cluster: Cluster) -> None:
    cluster.stats.upstream_rq_active -= 1


def outlier_failure(detector: OutlierDetector, host: Host, failed: Reply) -> None:
    """A failed try, as outlier detection counts it: a status the upstream gave is its
    response; a connect failure, reset or timeout is a local-origin failure; the proxy's own
    refusal (overflow...) says nothing of the host."""
    cause = failed.cause
    if cause is Cause.STATUS:
        detector.response(host, failed.status)
    elif cause is not Cause.REFUSED:
        detector.local_failure(host, failed.status)


async def handle_message(
    core: ProxyCore, ad: MessageDownstream, header: Callable[[str], str | None], info: RequestRecord
) -> None:
    """Answer one request that is one message: filters, route, then ``forward``."""
    route, routed = route_message(core, header, info)
    filters = core.filters
    cluster_name = None
    if filters is not None:
        # Envoy's order: the filters see the request before the proxy refuses it.
        if routed is not None:
            cluster_name = routed.pick_cluster(header)
        chain = filters.create(ad.filter_context(route, cluster_name))
        if chain is not None:
            ad.chain = chain
            reply = await ad.request_filters(chain)
            if reply is not None:
                await ad.reply(reply)
                return
    if routed is None:
        await ad.reply(NO_ROUTE)
        return
    if filters is None:
        cluster_name = routed.pick_cluster(header)
    cluster = message_cluster(core, cluster_name, info)
    if cluster is None:
        await ad.reply(NO_CLUSTER)
        return
    key = None
    if routed.hash_policy is not None and cluster.hashing:
        key = routed.hash_policy.key(header, "", ad.peer)[0]
    match = subset_match(routed, cluster)
    await forward(
        core, ad, routed, cluster, info, ad.body, ad.sink, retries=False, key=key, match=match
    )


class _NoBodySource:
    """The body source of a request that is one message: there is no body stream."""

    __slots__ = ()
    finished = True
    request_trailers = None
    duplex = False

    async def read(self) -> bytes:
        return b""

    def sent(self) -> None:
        pass

    def keep(self, n: int) -> bool:
        return False

    def forget(self, n: int) -> None:
        pass


def message_body() -> RequestBody:
    """The ``RequestBody`` of requests that are one message: empty, never read, so one per
    proxy serves all its requests (``forward`` only rewinds a body for a retry)."""
    return RequestBody(_NoBodySource())
