"""Configuration classes of the filters, by type name.

The config layer must know each filter type's shape to validate a file before anything runs,
so filter packages register their config class here (pure data); their runtime factories are
registered in ``trio_mesh.filters``.
"""

from __future__ import annotations

import enum
import importlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from attrs import frozen

from . import refused
from .proxy_tracing import ProxyTracing
from .routes import Problem, _raise
from .scalars import Duration, NonNegativeInt, PositiveInt, cluster_ref, router_ref

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

FilterKind = Literal["network", "stream", "listener"]

_CONFIG_CLASSES: dict[FilterKind, dict[str, type[Any] | None]] = {
    "network": {},
    "stream": {},
    "listener": {},
}
_TERMINAL: set[str] = set()
#: Third-party filters: Python entry points of these groups, ``name = "pkg.module:Object"``
#: (listener filters are built in only: they run before any chain, on every connection).
ENTRY_POINT_GROUPS: dict[FilterKind, str] = {
    "network": "trio_mesh.network_filters",
    "stream": "trio_mesh.stream_filters",
}
_PLUGINS: dict[FilterKind, dict[str, Any]] = {"network": {}, "stream": {}, "listener": {}}
#: The built-in filters' config classes (``module:class``), one module per filter, imported
#: the first time a configuration names the filter: start-up pays only for the filters used.
_BUILTIN_CLASSES: dict[FilterKind, dict[str, str]] = {
    "stream": {
        "fault": "fault:FaultConfig",
        "flowcontrol": "flowcontrol:FlowControlConfig",
        "flowControlFilter": "flowcontrol:MosnFlowControlConfig",  # MOSN's name (and default)
        "healthcheck": "rpc_healthcheck:RpcHealthCheckConfig",  # MOSN's RPC heartbeats
        "gzip": "gzip:GzipConfig",
        "header_mutation": "header_mutation:HeaderMutationConfig",
        "health_check": "health_check:HealthCheckConfig",
        "ip_access": "ip_access:IpAccessConfig",
        "mirror": "mirror:MirrorConfig",
        "payload_limit": "payload_limit:PayloadLimitConfig",
    },
    "network": {"ip_access": "ip_access:IpAccessConfig"},
    "listener": {},
}
log = logging.getLogger("trio_mesh.config")

_GO_PLUGIN = "a MOSN Go plugin: Go code cannot run here (write the filter in Python instead)"
#: MOSN's filters that trio-mesh does not have, and why: said when a configuration names one.
MOSN_UNSUPPORTED: dict[FilterKind, dict[str, str]] = {
    "stream": {
        "proxywasm": "MOSN's WebAssembly filter: WebAssembly filters are not supported",
        "loadso": _GO_PLUGIN,
        "pluginfilter": _GO_PLUGIN,
        "demo_plugin": _GO_PLUGIN,
        "demo": "MOSN's example filter, compiled into MOSN: not part of trio-mesh",
        "dsl": "MOSN's DSL (CEL expression) filter is not supported",
        "jwt_authn": "JWT authentication is not supported",
        "seata": "MOSN's Seata (distributed transaction) filter is not supported",
        "transcoder": "protocol transcoding is not supported",
        "dubbo_stream": "MOSN's dubbo_stream filter (Dubbo routing from xDS) is not supported",
    },
    "network": {
        "tunnel": "MOSN's tunnel is not supported",
        "udp_proxy": "UDP proxying is not supported (TCP only)",
    },
    "listener": {},
}


def unknown_filter(kind: FilterKind, name: str) -> str:
    """The reason a filter type cannot load, with the known types."""
    known = ", ".join(known_filters(kind)) or "none"
    why = MOSN_UNSUPPORTED[kind].get(name)
    return f"unknown {kind} filter type {name!r}{f': {why}' if why else ''} (known: {known})"


def entry_points(*, group: str) -> EntryPoints:
    """``importlib.metadata.entry_points``, imported on first use: scanning the installed
    distributions costs start-up time that only a filter no one built in needs."""
    from importlib.metadata import entry_points as scan

    return scan(group=group)


def _load_builtin(kind: FilterKind, name: str) -> bool:
    """Register built-in filter ``name``'s config class, importing its module; False when
    ``name`` is not built in."""
    where = _BUILTIN_CLASSES[kind].get(name)
    if where is None:
        return False
    module, attr = where.split(":")
    config_cls = getattr(importlib.import_module(f"{__package__}.stream_filters.{module}"), attr)
    _CONFIG_CLASSES[kind].setdefault(name, config_cls)
    return True


def register_filter_config(
    kind: FilterKind, name: str, config_cls: type | None, *, terminal: bool = False
) -> None:
    """Declare filter ``name`` of ``kind`` with its attrs config class (``None``: no config).

    A ``terminal`` network filter owns the connection to its end (``tcp_proxy``, ``proxy``):
    it must be the last of its chain.
    """
    table = _CONFIG_CLASSES[kind]
    if name not in table:
        _load_builtin(kind, name)  # a built-in name is taken before its module is imported
    if name in table and table[name] is not config_cls:
        raise ValueError(f"{kind} filter {name!r} is already registered")
    table[name] = config_cls
    if terminal:
        _TERMINAL.add(name)


def _entry_point(kind: FilterKind, name: str) -> Any:
    """Load the entry point ``name`` of ``kind``'s group: the object a package registered
    (a class or callable with a ``config_class`` attribute, ``None`` or absent: no config, and
    for network filters an optional ``terminal`` flag). ``KeyError`` when there is none."""
    loaded = _PLUGINS[kind]
    if name in loaded:
        return loaded[name]
    if kind not in ENTRY_POINT_GROUPS:
        raise KeyError(name)
    for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]):
        if ep.name != name:
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise ValueError(
                f"{kind} filter {name!r}: its entry point {ep.value!r} fails to load: {exc}"
            ) from None
        config_cls = getattr(obj, "config_class", None)
        terminal = bool(getattr(obj, "terminal", False))
        table = _CONFIG_CLASSES[kind]
        if name not in table:
            table[name] = config_cls
            if terminal:
                _TERMINAL.add(name)
        loaded[name] = obj
        log.info("%s filter %r from entry point %s", kind, name, ep.value)
        return obj
    raise KeyError(name)


def filter_config_class(kind: FilterKind, name: str) -> type[Any] | None:
    """The config class of a registered filter, or of one an installed package provides
    through an entry point; ``KeyError`` if the type is unknown."""
    table = _CONFIG_CLASSES[kind]
    if name not in table and not _load_builtin(kind, name):
        _entry_point(kind, name)
    return table[name]


def plugin_object(kind: FilterKind, name: str) -> Any:
    """The object an entry point provides for filter ``name`` (``KeyError``: none does)."""
    return _entry_point(kind, name)


def is_terminal(name: str) -> bool:
    return name in _TERMINAL


def known_filters(kind: FilterKind) -> list[str]:
    """Built-in and registered names, and those of installed entry points."""
    names = set(_CONFIG_CLASSES[kind]) | set(_BUILTIN_CLASSES[kind])
    if kind in ENTRY_POINT_GROUPS:
        names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]))
    return sorted(names)


@frozen(kw_only=True)
class TcpProxyConfig:
    """L4 proxy of a connection to one host of ``cluster``."""

    cluster: str = cluster_ref()
    #: Close both sides after this long with no bytes either way; ``None``: never.
    idle_timeout: Duration | None = None
    #: Hosts tried in turn when a connect fails (MOSN's name).
    max_connect_attempts: PositiveInt = PositiveInt(1)
    stat_prefix: str | None = None

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"routes"})


class Protocol(enum.Enum):
    """Protocols of ``proxy`` (MOSN's names).

    ``Auto`` downstream: the first bytes of each connection decide (the HTTP/2 preface, an
    HTTP/1 method, or the magic of a registered RPC codec); ``Auto`` upstream: the same
    protocol as the request came in on. ``bolt`` and ``dubbo`` are the built-in RPC codecs;
    ``X`` (MOSN's older form) means the RPC codecs named in ``extend_config.sub_protocol``,
    detected per connection (any registered codec name, third-party ones included).
    """

    HTTP1 = "Http1"
    HTTP2 = "Http2"
    AUTO = "Auto"
    X = "X"
    BOLT = "bolt"
    DUBBO = "dubbo"


@frozen(kw_only=True)
class XProtocolExtend:
    """MOSN's ``extend_config`` of an ``X`` proxy."""

    #: Comma-separated RPC codec names, e.g. ``"bolt,dubbo"``.
    sub_protocol: str = ""

    def codecs(self) -> list[str]:
        return [name.strip() for name in self.sub_protocol.split(",") if name.strip()]


@frozen(kw_only=True)
class XProtocolOptions:
    """RPC proxying (bolt, Dubbo, other registered codecs): limits and upstream keepalive."""

    #: A frame declaring more bytes is refused before its body is read (the connection closes).
    max_frame_bytes: PositiveInt = PositiveInt(16 * 1024 * 1024)
    #: Requests of one downstream connection in flight at once; past it, reading pauses.
    max_requests_per_connection: PositiveInt = PositiveInt(1024)
    #: Multiplexed connections per upstream host.
    connections_per_host: PositiveInt = PositiveInt(1)
    #: An upstream connection idle this long gets a protocol heartbeat...
    heartbeat_interval: Duration = Duration(30.0)
    #: ...which, unanswered within this, closes the connection (the next request opens another).
    heartbeat_timeout: Duration = Duration(10.0)
    #: On drain, send bolt clients MOSN's GoAway (command code 100; MOSN's
    #: ``enable_bolt_goaway``). Off by default: SOFA bolt's and anthunder's clients do not
    #: know it; turn it on only for clients that do (a MOSN in front, say).
    bolt_goaway: bool = False
    #: A response frame begun on an upstream connection must be whole within this, else the
    #: connection is closed and its requests fail: a provider trickling a frame would otherwise
    #: hold the shared connection (each byte counts as traffic) and time out every request on it.
    upstream_frame_timeout: Duration = Duration(10.0)


@frozen(kw_only=True)
class Http2Options:
    """HTTP/2 settings of ``proxy`` (Envoy's ``http2_protocol_options``), both directions:
    what trio-mesh advertises downstream and upstream, and its abuse limits."""

    #: Streams a peer may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: PositiveInt = PositiveInt(100)
    #: Receive window per stream: bytes a peer may send on a stream before trio-mesh has
    #: passed them on (SETTINGS_INITIAL_WINDOW_SIZE): the per-stream buffer bound.
    initial_stream_window_size: PositiveInt = PositiveInt(256 * 1024)
    #: Receive window of the whole connection.
    initial_connection_window_size: PositiveInt = PositiveInt(1024 * 1024)
    #: Decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE); a larger one is refused.
    max_header_list_size: PositiveInt = PositiveInt(64 * 1024)
    #: Rapid reset (CVE-2023-44487): after this many streams reset by the peer before their
    #: response began, making up at least half of its streams, the connection gets GOAWAY
    #: ENHANCE_YOUR_CALM.
    max_premature_resets: PositiveInt = PositiveInt(100)
    # Envoy's frame-flood limits, with its names and defaults: over one, GOAWAY
    # ENHANCE_YOUR_CALM and the connection closes (counted in the listener's ``http2_*_flood``).
    #: PING/SETTINGS ACKs and RST_STREAMs queued for a peer that does not read them.
    max_outbound_control_frames: PositiveInt = PositiveInt(1000)
    #: Consecutive DATA/HEADERS/CONTINUATION frames with no payload and no END_STREAM, and
    #: frames of unknown types.
    max_consecutive_inbound_frames_with_empty_payload: NonNegativeInt = NonNegativeInt(1)
    #: PRIORITY frames per stream opened on the connection (plus one stream's worth).
    max_inbound_priority_frames_per_stream: NonNegativeInt = NonNegativeInt(100)
    #: WINDOW_UPDATE frames per DATA frame sent (allowed: 5 + 2 * (streams + this * DATA)).
    max_inbound_window_update_frames_per_data_frame_sent: PositiveInt = PositiveInt(10)


class ForwardClientCert(enum.Enum):
    """``forward_client_cert_details``: what happens to ``x-forwarded-client-cert`` (XFCC),
    Envoy's enum and semantics. Only a connection whose client presented a certificate
    (mutual TLS) can keep or get one; on any other the header is removed, except with
    ``ALWAYS_FORWARD_ONLY``."""

    #: The client's XFCC is removed, always (the default: a client cannot forge it).
    SANITIZE = "SANITIZE"
    #: mTLS: the client's XFCC goes on unchanged; otherwise removed.
    FORWARD_ONLY = "FORWARD_ONLY"
    #: mTLS: this hop's element is appended to the client's XFCC (``,``); otherwise removed.
    APPEND_FORWARD = "APPEND_FORWARD"
    #: mTLS: the client's XFCC is replaced by this hop's element; otherwise removed.
    SANITIZE_SET = "SANITIZE_SET"
    #: The client's XFCC goes on unchanged, TLS or not (trust whoever connects).
    ALWAYS_FORWARD_ONLY = "ALWAYS_FORWARD_ONLY"


@frozen(kw_only=True)
class ClientCertDetails:
    """``set_current_client_cert_details``: the fields this hop's XFCC element carries
    besides ``By`` (its own URI SANs) and ``Hash`` (always), as Envoy's."""

    subject: bool = False
    uri: bool = False
    dns: bool = False
    cert: bool = False
    #: Refused: Python 3.11's ``ssl`` does not give the peer's chain.
    chain: bool = False

    def __attrs_post_init__(self) -> None:
        if self.chain:
            _raise(
                [
                    (
                        ("chain",),
                        "not supported: the peer's certificate chain is not available"
                        " (cert: true forwards the client's own certificate)",
                    )
                ]
            )


@frozen(kw_only=True)
class ProxyConfig:
    """``proxy``: the L7 proxy. Protocol and route table are MOSN's keys; the limits and
    forwarding switches are Envoy's HTTP connection manager settings under trio-mesh names."""

    downstream_protocol: Protocol = Protocol.HTTP1
    upstream_protocol: Protocol = Protocol.AUTO
    http2: Http2Options = Http2Options()
    #: ``X``: which RPC codecs (MOSN's shape).
    extend_config: XProtocolExtend | None = None
    xprotocol: XProtocolOptions = XProtocolOptions()
    router_config_name: str = router_ref()
    #: Request line plus headers (431 above it).
    max_request_header_bytes: PositiveInt = PositiveInt(60 * 1024)
    #: Request target (414 above it).
    max_url_bytes: PositiveInt = PositiveInt(8 * 1024)
    #: Header count (431 above it).
    max_request_headers: PositiveInt = PositiveInt(100)
    #: Request body (413 above it); ``None``: no limit.
    max_request_body_bytes: PositiveInt | None = None
    #: From a request's first byte to its complete head (408 and close: slowloris). RPC:
    #: from a frame's first byte (or from its admission to the buffer budget) to its last
    #: byte; past it the connection closes, so a slow sender cannot keep the budget.
    request_header_timeout: Duration = Duration(10.0)
    add_x_forwarded_for: bool = True
    add_x_forwarded_proto: bool = True
    generate_request_id: bool = True
    #: ``x-forwarded-client-cert`` (Envoy's ``forward_client_cert_details``; see
    #: :class:`ForwardClientCert`).
    forward_client_cert_details: ForwardClientCert = ForwardClientCert.SANITIZE
    #: What this hop's XFCC element says of the client (``APPEND_FORWARD``, ``SANITIZE_SET``).
    set_current_client_cert_details: ClientCertDetails = ClientCertDetails()
    #: Request body kept for a retry; a larger body is streamed once and not retried.
    retry_buffer_bytes: int = 64 * 1024
    #: Envoy's HCM ``tracing`` (see :mod:`.proxy_tracing`); ``None``: the top-level
    #: ``tracing`` block alone decides.
    tracing: ProxyTracing | None = None

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {"name", "fallback_for_unknown_protocol", "router_handler_name"}
    )

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        rpc = (Protocol.X, Protocol.BOLT, Protocol.DUBBO)
        if self.downstream_protocol == Protocol.X and (
            self.extend_config is None or not self.extend_config.codecs()
        ):
            problems.append(
                (("extend_config",), 'downstream_protocol X needs sub_protocol, e.g. "bolt,dubbo"')
            )
        if self.downstream_protocol in rpc and self.upstream_protocol not in (
            Protocol.AUTO,
            self.downstream_protocol,
        ):
            problems.append(
                (
                    ("upstream_protocol",),
                    f"{self.upstream_protocol.value}: an RPC request goes upstream in its own"
                    " protocol (leave it Auto)",
                )
            )
        if self.downstream_protocol not in rpc and self.upstream_protocol in rpc:
            problems.append(
                (
                    ("upstream_protocol",),
                    f"{self.upstream_protocol.value}: an HTTP request cannot go upstream as RPC",
                )
            )
        if self.extend_config is not None and self.downstream_protocol != Protocol.X:
            problems.append((("extend_config",), "only downstream_protocol X reads extend_config"))
        _raise(problems)


@frozen(kw_only=True)
class ProxyProtocolConfig:
    """Envoy's ``proxy_protocol`` listener filter (v1 and v2 headers)."""

    #: A client that sends no PROXY header is served with its socket's address. This lets any
    #: client that can reach the port choose its own address for ``ip_access`` and
    #: ``X-Forwarded-For`` by sending a header, or skip it: off unless set (Envoy's default).
    allow_requests_without_proxy_protocol: bool = False

    # TLVs are read past, never copied to metadata nor forwarded.
    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"rules", "pass_through_tlvs"})
    MOSN_REFUSED: ClassVar[dict[str, Any]] = {
        "disallowed_versions": (
            refused.given,
            "not supported: a header of a version it names would be accepted",
        ),
    }


@frozen(kw_only=True)
class OriginalDstConfig:
    """MOSN's ``original_dst`` listener filter config: ``type`` ``redirect`` (the default;
    connections redirected with iptables REDIRECT, read with SO_ORIGINAL_DST) or ``tproxy``."""

    type: str = "redirect"

    def __attrs_post_init__(self) -> None:
        if self.type.strip().lower() == "tproxy":
            _raise(
                [
                    (
                        ("type",),
                        "tproxy (transparent proxying with IP_TRANSPARENT) is not supported;"
                        " redirect (iptables REDIRECT) is",
                    )
                ]
            )
        elif self.type.strip().lower() != "redirect":
            _raise([(("type",), f"expected redirect, got {self.type!r}")])


# Built-in filters' shapes are known to the config layer itself, so a file validates without
# importing the runtime; their factories register in ``trio_mesh.filters``.
register_filter_config("network", "tcp_proxy", TcpProxyConfig, terminal=True)
register_filter_config("listener", "proxy_protocol", ProxyProtocolConfig)
register_filter_config("listener", "original_dst", OriginalDstConfig)  # = use_original_dst: true
register_filter_config("network", "echo", None, terminal=True)
register_filter_config("network", "proxy", ProxyConfig, terminal=True)
