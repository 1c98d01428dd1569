"""The configuration as frozen attrs classes, shaped like MOSN's v2 configuration.

Field names are MOSN's JSON keys. ``MOSN_PENDING`` on a class names the MOSN keys that are
known but not implemented yet and change neither security nor access: they load with a
warning. ``MOSN_REFUSED`` names those that would (TLS, access conditions): a configuration
error while their value turns them on (see ``config.refused``).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs
from attrs import frozen

from . import refused
from .errors import at
from .health_check import HealthCheck
from .observability import AdminConfig, MetricsConfig, TracingConfig
from .outlier import OutlierDetection
from .refused import Refusal
from .routes import RouterConfig
from .scalars import (
    Address,
    Duration,
    LogFormat,
    LogLevel,
    NonNegativeInt,
    PositiveInt,
    Weight,
)
from .subset import LbSubsetConfig
from .tls import FilterChainMatch, TlsConfig
from .xds import Node, XdsSettings, XdsShort
from .xds import resolve as resolve_xds


@frozen(kw_only=True)
class FilterConfig:
    """A network or stream filter: ``{type, config}``; ``config`` is the type's own class."""

    type: str
    config: Any = None

    KIND: ClassVar[str] = ""
    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"go_plugin_config"})


@frozen(kw_only=True)
class NetworkFilterConfig(FilterConfig):
    KIND: ClassVar[str] = "network"


@frozen(kw_only=True)
class StreamFilterConfig(FilterConfig):
    KIND: ClassVar[str] = "stream"


@frozen(kw_only=True)
class ListenerFilterConfig(FilterConfig):
    """Runs on each accepted connection before TLS and the filter chain match."""

    KIND: ClassVar[str] = "listener"
    #: MOSN's listener filters not implemented yet (they change neither security nor
    #: access): they load with a warning and do nothing.
    MOSN_PENDING_TYPES: ClassVar[frozenset[str]] = frozenset()


@frozen(kw_only=True)
class FilterChain:
    filters: tuple[NetworkFilterConfig, ...] = ()
    #: Which connections take this chain (Envoy's; ``None``: any, the listener's default).
    filter_chain_match: FilterChainMatch | None = None
    #: TLS termination (``status: true``); ``tls_context_set``: several certificates, chosen
    #: by SNI (the first is the default). One of the two at most.
    tls_context: TlsConfig | None = None
    tls_context_set: tuple[TlsConfig, ...] = ()

    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        # MOSN's ``match`` is a free string it never reads; the chain would take every
        # connection whatever it says: use filter_chain_match.
        "match": (
            refused.given,
            "MOSN's match string is not supported: the chain would accept every connection"
            " (use filter_chain_match: server_names, transport_protocol,"
            " application_protocols)",
        ),
    }

    def tls_configs(self) -> tuple[TlsConfig, ...]:
        """The TLS configurations that are on, in order (empty: a cleartext chain)."""
        configs = (self.tls_context,) if self.tls_context is not None else self.tls_context_set
        return tuple(c for c in configs if c is not None and c.status)

    def match_key(self) -> tuple | None:
        """``None`` for a chain that matches every connection."""
        m = self.filter_chain_match
        return None if m is None or m.is_empty() else m.key()


@frozen(kw_only=True)
class AccessLogConfig:
    """One access log of a listener. ``log_path``: a file, or ``stdout``/``stderr``.
    ``log_format``: MOSN-style ``%variable%`` text, or ``json`` for JSON lines; ``None``: the
    default text format."""

    log_path: str
    log_format: LogFormat | None = None


#: A listener's ``connection_idle_timeout`` when none is given (MOSN's ``DefaultIdleTimeout``).
DEFAULT_IDLE_TIMEOUT = Duration(90.0)


@frozen(kw_only=True)
class Listener:
    name: str
    address: Address
    bind_port: bool = True
    filter_chains: tuple[FilterChain, ...] = ()
    stream_filters: tuple[StreamFilterConfig, ...] = ()
    #: Close a downstream connection that sends nothing for this long (MOSN's default,
    #: 90 s: a silent client must not hold a descriptor forever); ``"0s"``: never.
    connection_idle_timeout: Duration | None = DEFAULT_IDLE_TIMEOUT
    #: Connections over this number are accepted and closed at once (Envoy's behaviour).
    max_connections: PositiveInt | None = None
    access_logs: tuple[AccessLogConfig, ...] = ()
    #: Received bytes one connection may hold buffered (RPC frames until answered, HTTP/2
    #: request bodies kept for a retry) before the proxy stops reading it (the key Envoy and
    #: MOSN use; Envoy's default). A single RPC frame (up to ``max_frame_bytes``) is always let in
    #: when the connection holds nothing else.
    per_connection_buffer_limit_bytes: PositiveInt = PositiveInt(1024 * 1024)
    #: The same bound for all connections of the listener together.
    listener_buffer_limit_bytes: PositiveInt = PositiveInt(16 * 1024 * 1024)
    #: TLS and plaintext on one port, told apart by the first byte (MOSN's key).
    inspector: bool = False
    #: A TLS handshake not done in this time is dropped.
    tls_handshake_timeout: Duration = Duration(10.0)
    #: TLS handshakes in progress at once; at the bound the oldest one is aborted.
    max_concurrent_handshakes: PositiveInt = PositiveInt(256)
    #: Run on each connection first (``proxy_protocol``: Envoy's and MOSN's key).
    listener_filters: tuple[ListenerFilterConfig, ...] = ()
    #: A connection whose listener filters are not done in this time is closed (Envoy's
    #: key and default).
    listener_filters_timeout: Duration = Duration(15.0)
    #: Read each connection's original destination (``SO_ORIGINAL_DST``, after an iptables
    #: REDIRECT) for ``ORIGINAL_DST`` clusters (MOSN's key; Envoy's ``original_dst``
    #: listener filter sets it too).
    use_original_dst: bool = False

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "type",
            "network",
            "default_read_buffer_size",
            "log_path",
            "log_level",
        }
    )


@frozen(kw_only=True)
class ServerConfig:
    listeners: tuple[Listener, ...] = ()
    routers: tuple[RouterConfig, ...] = ()
    default_log_level: LogLevel | None = None

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "default_log_path",
            "global_log_roller",
            "use_netpoll_mode",
            "graceful_timeout",
            "processor",
            "mosn_server_name",
            "optimize_local_write",
        }
    )


class ClusterType(enum.Enum):
    SIMPLE = "SIMPLE"
    STATIC = "STATIC"
    #: Every address the hosts' names resolve to is a host (MOSN's and Envoy's name).
    STRICT_DNS = "STRICT_DNS"
    #: One host, at the first address its name resolves to (Envoy's).
    LOGICAL_DNS = "LOGICAL_DNS"
    #: The host is each connection's original destination (``use_original_dst``); hosts
    #: are made on demand (``upstream/original_dst.py``), none are configured.
    ORIGINAL_DST = "ORIGINAL_DST"

    @property
    def is_dns(self) -> bool:
        return self in (ClusterType.STRICT_DNS, ClusterType.LOGICAL_DNS)


class DnsLookupFamily(enum.Enum):
    """Envoy's names: AUTO prefers IPv6 and falls back to IPv4, V4_PREFERRED the reverse."""

    AUTO = "AUTO"
    V4_ONLY = "V4_ONLY"
    V6_ONLY = "V6_ONLY"
    V4_PREFERRED = "V4_PREFERRED"


class LbType(enum.Enum):
    LB_RANDOM = "LB_RANDOM"
    LB_ROUNDROBIN = "LB_ROUNDROBIN"
    LB_WEIGHTED_ROUNDROBIN = "LB_WEIGHTED_ROUNDROBIN"
    LB_LEAST_REQUEST = "LB_LEAST_REQUEST"
    LB_LEAST_CONNECTION = "LB_LEAST_CONNECTION"
    LB_REQUEST_ROUNDROBIN = "LB_REQUEST_ROUNDROBIN"
    LB_MAGLEV = "LB_MAGLEV"
    LB_RING_HASH = "LB_RING_HASH"
    #: MOSN's name for an ORIGINAL_DST cluster's choice (Envoy's CLUSTER_PROVIDED).
    LB_ORIGINAL_DST = "LB_ORIGINAL_DST"


@frozen(kw_only=True)
class Host:
    address: Address
    hostname: str | None = None
    weight: Weight = Weight(1)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: Connect to this host in cleartext although its cluster has a ``tls_context`` (MOSN's).
    tls_disable: bool = False


@frozen(kw_only=True)
class RetryBudget:
    """Envoy's ``retry_budget``: retries outstanding are bounded by ``budget_percent`` of the
    cluster's active requests, never below ``min_retry_concurrency``; it replaces
    ``max_retries`` when given."""

    budget_percent: float = 20.0
    min_retry_concurrency: NonNegativeInt = NonNegativeInt(3)

    def check(self, path: str) -> list[str]:
        """Errors in the values, each naming its key under ``path``."""
        p = self.budget_percent
        # bool is an int, but true is no percentage; NaN fails the range too
        if isinstance(p, bool) or not 0.0 <= p <= 100.0:
            return [at(f"{path}.budget_percent", f"expected a percentage 0..100, got {p!r}")]
        return []


@frozen(kw_only=True)
class Thresholds:
    """One circuit-breaker priority's limits; ``None`` means unlimited."""

    priority: str = "DEFAULT"
    max_connections: PositiveInt | None = None
    max_pending_requests: PositiveInt | None = None
    max_requests: PositiveInt | None = None
    max_retries: int | None = None
    retry_budget: RetryBudget | None = None


@frozen(kw_only=True)
class Cluster:
    name: str
    type: ClusterType = ClusterType.SIMPLE
    lb_type: LbType = LbType.LB_ROUNDROBIN
    hosts: tuple[Host, ...] = ()
    connect_timeout: Duration = Duration(3.0)
    #: Idle upstream connections are closed after this long (pooled protocols).
    idle_timeout: Duration | None = None
    #: Requests carried by one upstream connection before it is retired; 0: no limit.
    max_request_per_conn: int = 0
    circuit_breakers: tuple[Thresholds, ...] = ()
    #: TLS to the hosts (``status: true``): ``server_name`` is the SNI and the name verified.
    tls_context: TlsConfig | None = None
    #: Active health checking of the hosts (upstream/health.py).
    health_check: HealthCheck | None = None
    #: Envoy's outlier detection (``upstream/outlier.py``); ``None``: off.
    outlier_detection: OutlierDetection | None = None
    #: STRICT_DNS / LOGICAL_DNS: how often the hosts' names are resolved (Envoy's 5 s).
    dns_refresh_rate: Duration = Duration(5.0)
    dns_lookup_family: DnsLookupFamily = DnsLookupFamily.AUTO
    #: Loaded, not enforced (a warning says so): the refresh rate is used, not the TTLs.
    respect_dns_ttl: bool = False
    #: Subset load balancing (``upstream/subset.py``): routes' ``metadata_match`` picks hosts.
    lb_subset_config: LbSubsetConfig | None = None

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "sub_type",
            "conn_buffer_limit_bytes",
            "slow_start",  # MOSN's ramp-up of a new host's weight: it gets its full share
            "spec",
            "original_dst_lb_config",
            "lbconfig",
            "dns_resolvers",
            "dns_resolver_file",
            "dns_resolver_port",
            "cluster_pool_enable",
        }
    )

    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        "cluster_manager_tls": (
            refused.given,
            "the cluster manager's shared tls_context is not supported: connections to this"
            " cluster would use cleartext instead (give the cluster its own tls_context)",
        ),
    }

    def thresholds(self, priority: str = "DEFAULT") -> Thresholds:
        for t in self.circuit_breakers:
            if t.priority.upper() == priority.upper():
                return t
        return Thresholds(priority=priority)


@frozen(kw_only=True)
class ClusterManagerConfig:
    clusters: tuple[Cluster, ...] = ()

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {"auto_discovery", "registry_use_health_check", "clusters_configs"}
    )
    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        "tls_context": (
            refused.tls_on,
            "the cluster manager's shared tls_context is not supported: upstream connections"
            " would use cleartext instead (give each cluster its own tls_context)",
        ),
    }


@frozen(kw_only=True)
class ExtendConfig:
    """One of MOSN's ``extends`` entries: ``{type, config}``; ``config`` is the type's own
    (``dubbo_registry``: ``config.registry.DubboRegistryConfig``). Unknown types warn."""

    type: str
    config: dict[str, Any] | None = None


@frozen(kw_only=True)
class MeshConfig:
    """The whole configuration of one proxy."""

    servers: tuple[ServerConfig, ...] = ()
    cluster_manager: ClusterManagerConfig = ClusterManagerConfig()
    admin: AdminConfig | None = None
    metrics: MetricsConfig | None = None
    tracing: TracingConfig | None = None
    #: The control plane (see ``config.xds``): Envoy's bootstrap keys, or the short ``xds``.
    node: Node | None = None
    dynamic_resources: dict[str, Any] | None = None
    static_resources: dict[str, Any] | None = None
    xds: XdsShort | None = None
    #: MOSN's extensions (``config.registry``: ``dubbo_registry``).
    extends: tuple[ExtendConfig, ...] = ()
    #: MOSN's hot upgrade keys (``trio_mesh.upgrade``): ``disable_upgrade``, serve no upgrade
    #: socket and take no sockets from a running process (a plain start);
    #: ``inherit_old_mosnconfig``, an upgrade runs the old process's configuration document
    #: instead of this file's.
    disable_upgrade: bool = False
    inherit_old_mosnconfig: bool = False

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "pprof",
            "pid",
            "plugin",
            "third_part_codec",
            "close_graceful",
            "wasm_global_plugins",
            "debug",
        }
    )
    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        # Envoy's runtime: flags whose values (static or from RTDS) could change what the
        # routes and filters allow; ignoring them would serve a different policy.
        "layered_runtime": (
            refused.given,
            "Envoy's runtime (layered_runtime, RTDS) is not supported: remove it to run"
            " without runtime overrides",
        ),
        # MOSN's Envoy Go extension: MOSN's filters run inside Envoy, configured here.
        "stream_filters": (
            refused.given,
            "a top-level stream_filters list is the configuration of MOSN's Envoy Go"
            " extension, which trio-mesh is not: give stream_filters on a listener",
        ),
    }

    def xds_settings(self) -> XdsSettings | None:
        """Where the control plane is, or ``None`` (load has checked it)."""
        return resolve_xds(self.xds, self.node, self.dynamic_resources, self.static_resources)[0]

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return tuple(lst for server in self.servers for lst in server.listeners)

    def cluster(self, name: str) -> Cluster | None:
        for c in self.cluster_manager.clusters:
            if c.name == name:
                return c
        return None
