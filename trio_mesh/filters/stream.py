"""Stream filters: per-request hooks on both directions, for every protocol.

A stream filter type is registered once with its config class; a configuration builds one
factory per listener entry (and per route that overrides the entry's config in
``per_filter_config``), and the factory makes one filter object per request. The proxies call
the hooks of the request's filters in config order on the request and in reverse order on the
response. A hook returns ``None`` to go on, or a `LocalReply` to answer the request itself;
a data hook may instead return the bytes to pass on in place of what it was given.

The same filter serves HTTP/1, HTTP/2, gRPC and the RPC protocols: it sees `Headers` (for RPC,
the frame's header view), the body as bytes, and a `RequestContext` with the route, the
cluster, the addresses, the connection's TLS handshake (``tls``: the verified client
certificate's subject and SANs under mutual TLS) and a ``metadata`` dict shared by the
request's filters.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..config.filter_configs import register_filter_config
from ..config.routes import FILTER_DISABLED
from ..router import Route

if TYPE_CHECKING:
    from ..network.tls import TlsInfo

log = logging.getLogger("trio_mesh.filters")

__all__ = [
    "FilterChainFactory",
    "Headers",
    "LocalReply",
    "RequestContext",
    "StreamFilter",
    "StreamFilterChain",
    "register_stream_filter",
]


class LocalReply:
    """The answer a filter gives in place of the upstream's.

    HTTP gets ``status``, ``body`` and ``headers``; gRPC gets ``grpc_status`` (by default the
    gRPC code of ``status``, as Envoy maps them) and ``grpc_message`` (default: the body); an
    RPC protocol gets its own error reply for ``rpc_error`` (an `ErrorKind` name, by default
    worked out from ``status``). ``flag`` is the access log's response flag; ``close`` closes
    the downstream connection after the reply (HTTP/1) or the connection itself (HTTP/2, RPC).
    """

    __slots__ = (
        "body",
        "close",
        "flag",
        "grpc_message",
        "grpc_status",
        "headers",
        "rpc_error",
        "status",
    )

    def __init__(
        self,
        status: int = 500,
        body: bytes | str = b"",
        *,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        grpc_status: int | None = None,
        grpc_message: str | None = None,
        rpc_error: str | None = None,
        flag: str = "",
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = tuple(headers)
        self.grpc_status = grpc_status
        self.grpc_message = grpc_message
        self.rpc_error = rpc_error
        self.flag = flag
        self.close = close

    def __repr__(self) -> str:
        return f"LocalReply({self.status}, {self.body!r})"

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]


#: A filter that raised: its own request gets this (logged with the filter's name).
FILTER_FAILED = "stream filter failed\n"


class Headers:
    """A mutable view of one header block: names compare case-insensitively, names and values
    are ``str`` (latin-1). HTTP blocks wrap the proxy's own list, edited in place; RPC blocks
    wrap a copy of the frame's headers, which the proxy writes back into the frame when a filter
    changed it. ``status`` is the response status (``None`` on requests)."""

    __slots__ = ("changed", "raw", "status")

    def __init__(self, items: list[tuple[bytes, bytes]], status: int | None = None) -> None:
        #: The underlying ``(name, value)`` byte pairs (HTTP names are lower-case).
        self.raw = items
        self.status = status
        self.changed = False

    @classmethod
    def from_mapping(cls, mapping: Any, status: int | None = None) -> Headers:
        return cls(
            [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in mapping.items()],
            status,
        )

    def to_dict(self) -> dict[str, str]:
        """Header names as written, last value wins (RPC header maps hold one value a name)."""
        return {n.decode("latin-1"): v.decode("latin-1") for n, v in self.raw}

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for n, v in self.raw:
            if n.lower() == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self.raw if n.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for n, v in self.raw:
            yield n.decode("latin-1"), v.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def add(self, name: str, value: str) -> None:
        """Add a value, keeping those already there."""
        self.raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self.changed = True

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value`` (in the first one's place)."""
        key = name.lower().encode("latin-1")
        encoded = value.encode("latin-1")
        items = self.raw
        found = False
        i = 0
        while i < len(items):
            if items[i][0].lower() == key:
                if found:
                    del items[i]
                    continue
                items[i] = (key, encoded)
                found = True
            i += 1
        if not found:
            items.append((key, encoded))
        self.changed = True

    def remove(self, name: str) -> int:
        """Remove every value of ``name``; how many there were."""
        key = name.lower().encode("latin-1")
        items = self.raw
        before = len(items)
        items[:] = [h for h in items if h[0].lower() != key]
        removed = before - len(items)
        if removed:
            self.changed = True
        return removed


class RequestContext:
    """What a request's filters know of it, and share. ``protocol``: ``HTTP/1.1``,
    ``HTTP/1.0``, ``HTTP/2`` or an RPC codec's name (``bolt``, ``dubbo``); ``grpc``: an
    HTTP/2 request with a gRPC content type. ``route`` is ``None`` when no route matched (the
    proxy answers 404 once the filters let the request through). ``upstream_host`` is set once
    a host is chosen (so the response hooks see it). ``tls``: the downstream connection's
    handshake (:class:`~trio_mesh.network.tls.TlsInfo`: version, cipher, SNI, and the client
    certificate's ``peer_subject``, ``peer_uri_sans``... when it presented a verified one);
    ``None`` on a plaintext connection."""

    __slots__ = (
        "cluster",
        "downstream_local",
        "downstream_remote",
        "grpc",
        "listener",
        "_metadata",
        "_method",
        "_path",
        "_authority",
        "protocol",
        "request_id",
        "route",
        "tls",
        "upstream_host",
    )

    def __init__(
        self,
        protocol: str,
        method: str | bytes = "",
        path: str | bytes = "",
        authority: str | bytes = "",
        route: Route | None = None,
        cluster: str | None = None,
        downstream_remote: tuple | None = None,
        downstream_local: tuple | None = None,
        listener: str = "",
        grpc: bool = False,
        tls: TlsInfo | None = None,
    ) -> None:
        # Bytes (as HTTP/1 parses them) are decoded on first use: most filters never ask.
        self.protocol = protocol
        self._method = method
        self._path = path
        self._authority = authority
        self.route = route
        self.cluster = cluster
        self.downstream_remote = downstream_remote
        self.downstream_local = downstream_local
        self.listener = listener
        self.grpc = grpc
        self.tls = tls
        self.upstream_host: str | None = None
        self.request_id: str | None = None
        self._metadata: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        value = self._method
        if isinstance(value, bytes):
            value = self._method = value.decode("latin-1")
        return value

    @property
    def path(self) -> str:
        value = self._path
        if isinstance(value, bytes):
            value = self._path = value.decode("latin-1")
        return value

    @property
    def authority(self) -> str:
        value = self._authority
        if isinstance(value, bytes):
            value = self._authority = value.decode("latin-1")
        return value

    @property
    def metadata(self) -> dict[str, Any]:
        """Shared by the request's filters (made on first use)."""
        data = self._metadata
        if data is None:
            data = self._metadata = {}
        return data

    @property
    def is_rpc(self) -> bool:
        return not self.protocol.startswith("HTTP")


#: What a filter type's ``factory`` returns (see `StreamFilter.factory`).
FactoryResult = Any


class StreamFilter:
    """Base class of a stream filter: override the hooks it needs (the others cost nothing:
    the proxy calls only the hooks a filter's class overrides).

    ``end_stream``: nothing follows this block (no body). Data hooks get ``last`` true on the
    final piece of the body (possibly empty; trailers may still follow). A data hook returns
    ``None`` to pass ``data`` on unchanged, the bytes to pass on instead, or a `LocalReply`.

    Subclasses are built by `factory`: ``cls(config, context)`` per request; override it to do
    work once per configuration (compile, allocate shared state).
    """

    #: The attrs class of the filter's ``config`` (``None``: it takes none). Used when the
    #: class is registered through an entry point.
    config_class: ClassVar[type | None] = None

    def __init__(self, config: Any, context: RequestContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def factory(cls, config: Any, build: Any) -> FactoryResult:
        """Built once per configuration (``build``: the listener's `BuildContext`). Returns
        what makes the filter of one request (``context -> filter``, ``None`` from it: no
        filter for that request), or one filter object that serves every request (it must
        keep nothing of a request), or ``None``: this config never filters anything."""
        return lambda context: cls(config, context)

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        return None

    async def on_request_data(self, data: bytes, last: bool) -> bytes | LocalReply | None:
        return None

    async def on_request_trailers(self, trailers: Headers) -> LocalReply | None:
        return None

    async def on_response_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        return None

    async def on_response_data(self, data: bytes, last: bool) -> bytes | LocalReply | None:
        return None

    async def on_response_trailers(self, trailers: Headers) -> LocalReply | None:
        return None


_HOOKS = (
    "on_request_headers",
    "on_request_data",
    "on_request_trailers",
    "on_response_headers",
    "on_response_data",
    "on_response_trailers",
)
REQUEST_HEADERS, REQUEST_DATA, REQUEST_TRAILERS = 1, 2, 4
RESPONSE_HEADERS, RESPONSE_DATA, RESPONSE_TRAILERS = 8, 16, 32
_MASKS: dict[type, int] = {}


def hook_mask(cls: type) -> int:
    """Which hooks ``cls`` overrides, as bits (cached per class)."""
    mask = _MASKS.get(cls)
    if mask is None:
        mask = 0
        for bit, name in enumerate(_HOOKS):
            if getattr(cls, name, None) is not getattr(StreamFilter, name):
                mask |= 1 << bit
        _MASKS[cls] = mask
    return mask


# --------------------------------------------------------------------------- registry

#: name -> (config, BuildContext) -> per-request maker
StreamFactoryBuilder = Callable[[Any, Any], Callable[[RequestContext], "StreamFilter | None"]]
_STREAM: dict[str, StreamFactoryBuilder] = {}
#: Built-in stream filters, each registered by its own module, imported the first time a
#: configuration builds the filter: start-up pays only for the filters a configuration names.
_BUILTIN: dict[str, str] = {
    name: f"{__package__}.{name}"
    for name in (
        "fault",
        "flowcontrol",
        "gzip",
        "header_mutation",
        "health_check",
        "ip_access",
        "mirror",
        "payload_limit",
    )
} | {
    # MOSN's names: its flow control filter (the same config as ``flowcontrol``) and its
    # RPC heartbeat filter.
    "flowControlFilter": f"{__package__}.flowcontrol",
    "healthcheck": f"{__package__}.rpc_healthcheck",
}


def register_stream_filter(
    name: str, filter_or_builder: type[StreamFilter] | StreamFactoryBuilder, config_cls: type | None
) -> None:
    """Register stream filter type ``name``: a `StreamFilter` subclass (built by its
    ``factory``), or a callable ``(config, build) -> (context -> filter)``. ``config_cls``
    (an attrs class, or ``None``) validates its ``config`` when a file loads."""
    builder: StreamFactoryBuilder
    if isinstance(filter_or_builder, type) and issubclass(filter_or_builder, StreamFilter):
        builder = filter_or_builder.factory
    else:
        # the checker cannot narrow the union through issubclass; any other callable (a
        # class too) is a builder
        builder = cast(StreamFactoryBuilder, filter_or_builder)
    if name not in _STREAM and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])  # a built-in name is taken (a no-op inside it)
    if name in _STREAM and _STREAM[name] != builder:
        raise ValueError(f"stream filter {name!r} is already registered")
    register_filter_config("stream", name, config_cls)
    _STREAM[name] = builder


def stream_filter_builder(name: str) -> StreamFactoryBuilder:
    """The builder registered under ``name``, loading an entry point of that name if need be."""
    builder = _STREAM.get(name)
    if builder is None and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
        builder = _STREAM.get(name)
    if builder is None:
        from ..config.filter_configs import plugin_object

        obj = plugin_object("stream", name)  # KeyError when nobody provides it
        if isinstance(obj, type) and issubclass(obj, StreamFilter):
            builder = obj.factory
        else:
            builder = obj
        _STREAM[name] = builder
    return builder


# --------------------------------------------------------------------------- chains


class _Entry:
    """One listener filter as built: ``shared`` when one object serves every request (the
    factory returned a filter, not a maker), else ``make`` per request."""

    __slots__ = ("bits", "make", "name", "shared")

    def __init__(self, name: str, made: Any) -> None:
        self.name = name
        self.shared: StreamFilter | None = made if isinstance(made, StreamFilter) else None
        # create() takes ``shared`` when there is one and then never calls ``make``
        self.make: Callable[[RequestContext], StreamFilter | None] = as_maker(made)
        self.bits = hook_mask(type(self.shared)) if self.shared is not None else 0


def as_maker(made: FactoryResult) -> Callable[[RequestContext], StreamFilter | None]:
    """A factory's result as a per-request maker, whichever of its three forms it took."""
    if made is None:
        return lambda context: None
    if isinstance(made, StreamFilter):
        return lambda context: made
    return made


def _entries(pairs: Any) -> tuple[_Entry, ...]:
    """Entries of ``(name, factory result)``; a factory that returned ``None`` (never a
    filter, e.g. a fault at 0%) leaves no entry: it costs its requests nothing."""
    return tuple(_Entry(name, made) for name, made in pairs if made is not None)


class FilterChainFactory:
    """A listener's ``stream_filters``, built once per configuration: makes each request's
    chain, with a route's ``per_filter_config`` in place of the listener's config for the
    filters it names (built on first use of that route, then kept)."""

    def __init__(self, configs: tuple, build: Any) -> None:
        self.configs = tuple(configs)
        self.build = build
        # (config entry, what its factory returned), in config order
        self._built = [(c, stream_filter_builder(c.type)(c.config, build)) for c in self.configs]
        self.entries = _entries((c.type, made) for c, made in self._built)
        self._by_route: dict[int, tuple[_Entry, ...]] = {}
        # Routes whose chains are cached, kept alive so that their ids are not reused.
        self._kept: list[Route] = []

    def forget_routes(self) -> None:
        """The route tables were replaced: drop the chains cached for the old routes."""
        self._by_route = {}
        self._kept = []

    def __bool__(self) -> bool:
        return bool(self.configs)  # route overrides may filter even when the listener's own do not

    def _entries_for(self, route: Route) -> tuple[_Entry, ...]:
        overrides = route.per_filter_config
        if not overrides:
            return self.entries
        key = id(route)
        entries = self._by_route.get(key)
        if entries is None:
            pairs = []
            for c, made in self._built:
                if c.type in overrides:
                    override = overrides[c.type]
                    if override is FILTER_DISABLED:
                        continue
                    made = stream_filter_builder(c.type)(override, self.build)
                pairs.append((c.type, made))
            entries = self._by_route[key] = _entries(pairs)
            self._kept.append(route)
        return entries

    def create(self, context: RequestContext) -> StreamFilterChain | None:
        """The filters of one request; ``None`` when there are none for it."""
        made: list[tuple[StreamFilter, int, str]] = []
        mask = 0
        route = context.route
        entries = (
            self.entries
            if route is None or not route.per_filter_config
            else (self._entries_for(route))
        )
        for entry in entries:
            f = entry.shared
            if f is not None:
                made.append((f, entry.bits, entry.name))
                mask |= entry.bits
                continue
            try:
                f = entry.make(context)
            except Exception:
                log.exception("stream filter %r: creating it for a request failed", entry.name)
                return _FailedChain(context, entry.name)
            if f is None:
                continue
            cls = type(f)
            bits = _MASKS.get(cls)
            if bits is None:
                bits = hook_mask(cls)
            made.append((f, bits, entry.name))
            mask |= bits
        if not made:
            return None
        return StreamFilterChain(context, made, mask)


def filter_failed(name: str, where: str) -> LocalReply:
    """Log a filter's exception (call it in the ``except``); the 500 its request gets."""
    log.exception("stream filter %r failed in %s", name, where)
    return LocalReply(500, FILTER_FAILED, flag="FF", rpc_error="INTERNAL")


class StreamFilterChain:
    """One request's filters. Each method calls the hook on every filter that has it
    (requests in config order, responses in reverse) and returns the first `LocalReply`;
    a filter that raises yields a 500 reply for its request, logged with its name.
    ``made``: ``(filter, hook bits, type name)`` in config order."""

    __slots__ = ("context", "made", "mask", "replied")

    def __init__(
        self, context: RequestContext, made: list[tuple[StreamFilter, int, str]], mask: int
    ) -> None:
        self.context = context
        self.made = made
        self.mask = mask
        #: Set once a filter answered (a reply's own response does not run the filters).
        self.replied = False

    @property
    def filters(self) -> list[StreamFilter]:
        return [f for f, _, _ in self.made]

    @property
    def names(self) -> list[str]:
        return [name for _, _, name in self.made]

    def wants(self, bit: int) -> bool:
        return bool(self.mask & bit)

    async def request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        for f, bits, name in self.made:
            if bits & REQUEST_HEADERS:
                try:
                    reply = await f.on_request_headers(headers, end_stream)
                except Exception:
                    reply = filter_failed(name, "on_request_headers")
                if reply is not None:
                    self.replied = True
                    return reply
        return None

    async def request_data(self, data: bytes, last: bool) -> bytes | LocalReply:
        for f, bits, name in self.made:
            if bits & REQUEST_DATA:
                try:
                    out = await f.on_request_data(data, last)
                except Exception:
                    out = filter_failed(name, "on_request_data")
                if out is None:
                    continue
                if isinstance(out, LocalReply):
                    self.replied = True
                    return out
                data = bytes(out)
        return data

    async def request_trailers(self, trailers: Headers) -> LocalReply | None:
        for f, bits, name in self.made:
            if bits & REQUEST_TRAILERS:
                try:
                    reply = await f.on_request_trailers(trailers)
                except Exception:
                    reply = filter_failed(name, "on_request_trailers")
                if reply is not None:
                    self.replied = True
                    return reply
        return None

    async def response_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        if self.replied:
            return None
        for f, bits, name in reversed(self.made):
            if bits & RESPONSE_HEADERS:
                try:
                    reply = await f.on_response_headers(headers, end_stream)
                except Exception:
                    reply = filter_failed(name, "on_response_headers")
                if reply is not None:
                    self.replied = True
                    return reply
        return None

    async def response_data(self, data: bytes, last: bool) -> bytes | LocalReply:
        if self.replied:
            return data
        for f, bits, name in reversed(self.made):
            if bits & RESPONSE_DATA:
                try:
                    out = await f.on_response_data(data, last)
                except Exception:
                    out = filter_failed(name, "on_response_data")
                if out is None:
                    continue
                if isinstance(out, LocalReply):
                    self.replied = True
                    return out
                data = bytes(out)
        return data

    async def response_trailers(self, trailers: Headers) -> LocalReply | None:
        if self.replied:
            return None
        for f, bits, name in reversed(self.made):
            if bits & RESPONSE_TRAILERS:
                try:
                    reply = await f.on_response_trailers(trailers)
                except Exception:
                    reply = filter_failed(name, "on_response_trailers")
                if reply is not None:
                    self.replied = True
                    return reply
        return None


class _FailedChain(StreamFilterChain):
    """A filter could not even be made for this request: the request gets a 500."""

    __slots__ = ("name",)

    def __init__(self, context: RequestContext, name: str) -> None:
        super().__init__(context, [], REQUEST_HEADERS)
        self.name = name

    async def request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        self.replied = True
        return LocalReply(500, FILTER_FAILED, flag="FF", rpc_error="INTERNAL")


def http_status_to_rpc_error(reply: LocalReply) -> str:
    """The `ErrorKind` name an RPC protocol answers a `LocalReply` with."""
    if reply.rpc_error:
        return reply.rpc_error
    status = reply.status
    if status in (429, 503):
        return "OVERFLOW"
    if status == 504:
        return "TIMEOUT"
    if status in (404, 403):
        return "NO_ROUTE"
    if status in (400, 413, 431):
        return "CODEC_ERROR"
    return "INTERNAL"
