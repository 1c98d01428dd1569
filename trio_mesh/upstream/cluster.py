"""A cluster: its hosts, its balancer, its limits, its counters, its upstream TLS."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable

import attrs

from ..config import Cluster as ClusterConfig
from ..config import ClusterType
from ..config import Host as HostConfig
from ..config.subset import FallbackPolicy, MatchKey
from ..network.connect import ConnectError, TlsConnectError, connect
from ..network.stream import Stream
from ..network.throttled_log import ThrottledLog
from ..network.tls_context import client_tls
from ..stats import ClusterStats
from . import dns
from .host import Host
from .lb import HASHING_LB_TYPES, LoadBalancer, make_balancer
from .original_dst import OriginalDstHosts
from .outlier import OutlierDetector, release_all
from .subset import SubsetTable

log = logging.getLogger("trio_mesh.upstream")
_tls_log = ThrottledLog(log)  # an upstream decides how often its handshakes fail

#: Below this share of usable hosts the balancer offers all of them (Envoy's default
#: ``healthy_panic_threshold``, 50%): too few healthy hosts would take the whole load.
PANIC_THRESHOLD = 0.5

#: What a connection offers in ALPN, by the pool that asks for it.
ALPN_NONE = ""  # RPC, tcp_proxy: no ALPN
ALPN_H1 = "http/1.1"
ALPN_H2 = "h2"
ALPN_AUTO = "auto"  # upstream_protocol Auto: both, the server's answer decides
_OFFERS: dict[str, tuple[str, ...]] = {
    ALPN_NONE: (),
    ALPN_H1: ("http/1.1",),
    ALPN_H2: ("h2",),
    ALPN_AUTO: ("h2", "http/1.1"),
}


@attrs.frozen
class ClusterTls:
    """A cluster's upstream TLS, built at configuration time: one context per ALPN offer
    (``ssl`` sets ALPN on the context, not per connection)."""

    contexts: dict[str, ssl.SSLContext]
    #: SNI and the name verified; ``None``: the host's ``hostname``, else its address.
    server_name: str | None

    def context(self, alpn: str) -> ssl.SSLContext:
        return self.contexts[alpn]


def build_tls(config: ClusterConfig, path: str) -> ClusterTls | None:
    """The cluster's TLS contexts (``path``: its ``tls_context`` key's, for errors), or
    ``None`` without TLS. Reads the certificate files: a reload calls it again (rotation).
    Raises ``TlsConfigError``."""
    first = client_tls(config.tls_context, path, alpn=())
    if first is None:
        return None
    contexts = {ALPN_NONE: first.context}
    for offer, protocols in _OFFERS.items():
        if offer != ALPN_NONE:
            built = client_tls(config.tls_context, path, alpn=protocols)
            assert built is not None
            contexts[offer] = built.context
    return ClusterTls(contexts=contexts, server_name=first.server_name)


class _PanicLB:
    """A balancer in panic: counts each choice (only while in panic: no cost otherwise)."""

    __slots__ = ("lb", "stats")

    def __init__(self, lb: LoadBalancer, stats: ClusterStats) -> None:
        self.lb = lb
        self.stats = stats

    def choose(self) -> Host | None:
        self.stats.lb_healthy_panic += 1
        return self.lb.choose()

    def choose_key(self, key: int) -> Host | None:
        """A hashing balancer keeps hashing in panic (over all hosts)."""
        self.stats.lb_healthy_panic += 1
        choose_key = getattr(self.lb, "choose_key", None)
        return choose_key(key) if choose_key is not None else self.lb.choose()


class NoHostError(Exception):
    """The cluster has no host to offer (empty, or all over their limits)."""


class CircuitOpenError(Exception):
    """A circuit breaker is open: the cluster is at its connection limit."""


class Cluster:
    def __init__(self, config: ClusterConfig, tls: ClusterTls | None = None) -> None:
        """``tls``: the contexts ``build_tls`` made for ``config`` (``None`` with TLS on:
        not built yet, and nothing is connected to until they are)."""
        self.name = config.name
        self.stats = ClusterStats()
        self.hosts: tuple[Host, ...] = ()
        #: The hosts the balancer chooses from: the usable ones, or all of them in panic.
        self.lb_hosts: tuple[Host, ...] = ()
        #: How many of ``hosts`` are usable (the metrics' ``membership_healthy``).
        self.healthy_hosts = 0
        self.panic = False
        self.lb: LoadBalancer
        #: ``lb_subset_config``'s subsets (``None``: off; routes' matches are ignored).
        self.subsets: SubsetTable | None = None
        self.tls: ClusterTls | None = None
        #: ``None``: outlier detection is off (nothing is counted per try).
        self.outlier: OutlierDetector | None = None
        #: STRICT_DNS / LOGICAL_DNS: the resolver's state; no host until it answers.
        self.dns: dns.DnsState | None = dns.DnsState() if dns.is_dns(config) else None
        #: ORIGINAL_DST: the hosts made for the connections' original destinations.
        self.original_dst: OriginalDstHosts | None = None
        self._configure(config, tls)
        self.set_hosts([] if self.dns else [Host.from_config(h) for h in config.hosts])

    def _configure(self, config: ClusterConfig, tls: ClusterTls | None) -> None:
        self.tls = tls
        # TLS asked for but its contexts not built: never cleartext instead.
        self.tls_missing = (
            tls is None and config.tls_context is not None and config.tls_context.status
        )
        self.config = config
        if config.type is not ClusterType.ORIGINAL_DST:
            self.original_dst = None
        elif self.original_dst is None:
            self.original_dst = OriginalDstHosts()
        self.connect_timeout = config.connect_timeout
        limits = config.thresholds()
        self.max_connections = limits.max_connections
        self.max_pending_requests = limits.max_pending_requests
        self.max_requests = limits.max_requests
        self.max_retries = limits.max_retries
        budget = limits.retry_budget
        #: (fraction of active requests, floor): replaces ``max_retries`` when set (Envoy's).
        self.retry_budget: tuple[float, int] | None = (
            None
            if budget is None
            else (budget.budget_percent / 100.0, budget.min_retry_concurrency)
        )
        od = config.outlier_detection
        if od is None:
            if self.outlier is not None:
                self.outlier = None
                release_all(self)
        elif self.outlier is None or self.outlier.config != od:
            # A new detector (its run task ends, the pools start the new one's); the hosts'
            # counts and ejections stay.
            self.outlier = OutlierDetector(self, od)

    def update(self, config: ClusterConfig, tls: ClusterTls | None = None) -> list[Host]:
        """Take a new configuration of this cluster in place; returns the hosts that left.

        A host whose address stays keeps its ``Host`` object (pools are keyed by it, so its
        pooled connections survive) with the new weight and metadata; the balancer is rebuilt.
        A changed ``tls_context`` makes every host new: no connection made under the old
        one is reused. ``tls``: the new contexts (rotated certificates are used by new
        connections; open ones keep theirs).
        """
        tls_changed = config.tls_context != self.config.tls_context
        old_hosts = self.hosts
        self._configure(config, tls)
        if self.dns is not None or dns.is_dns(config):
            return dns.update(self, config, tls_changed)  # hosts from names (upstream/dns.py)
        if tls_changed:
            self.set_hosts([Host.from_config(h) for h in config.hosts])
            return list(old_hosts)
        return self.replace_hosts(config.hosts)

    def replace_hosts(self, configs: Iterable[HostConfig]) -> list[Host]:
        """A new host set (a file reload or an EDS update), keeping the ``Host`` objects of
        addresses that stay; returns the hosts that left."""
        old = {h.address: h for h in self.hosts}
        hosts = []
        for cfg in configs:
            host = old.pop(cfg.address, None)
            if host is not None and not host.same_transport(cfg):
                old[cfg.address] = host  # its connections are not this host's: it leaves
                host = None
            if host is None:
                host = Host.from_config(cfg)
            else:
                host.weight = cfg.weight
                host.metadata = cfg.metadata or {}
            hosts.append(host)
        self.set_hosts(hosts)
        return list(old.values())

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the host set at once; the balancer is rebuilt for the new set."""
        self.hosts = tuple(hosts)
        self.host_health_changed()

    def host_health_changed(self) -> None:
        """Rebuild the balancer over the usable hosts, or over all of them when fewer than
        ``PANIC_THRESHOLD`` are usable (panic: each choice is counted as
        ``lb_healthy_panic``). Called when a host's ``usable`` changed and when the host set
        does: health is never checked per request."""
        hosts = self.hosts
        usable = tuple(h for h in hosts if h.usable)
        self.healthy_hosts = len(usable)
        self.panic = bool(hosts) and len(usable) < PANIC_THRESHOLD * len(hosts)
        self.lb_hosts = hosts if self.panic else usable
        lb = make_balancer(self.config.lb_type, self.lb_hosts)
        self.lb = _PanicLB(lb, self.stats) if self.panic else lb
        subset = self.config.lb_subset_config
        self.subsets = (
            None
            if subset is None
            else SubsetTable(subset, self.config.lb_type, hosts, self._panic_lb)
        )

    def _panic_lb(self, lb: LoadBalancer) -> LoadBalancer:
        return _PanicLB(lb, self.stats)

    def request_overflows(self) -> bool:
        """Whether a new request would pass ``max_requests`` (the overflow is counted);
        callers check ``max_requests is not None`` first, so the common case costs nothing."""
        if self.stats.upstream_rq_active >= self.max_requests:  # type: ignore[operator]
            self.stats.upstream_rq_pending_overflow += 1
            return True
        return False

    def retry_overflows(self) -> bool:
        """Whether one more retry would pass ``max_retries`` or the ``retry_budget`` (the
        overflow is counted). Asked only when a try failed, never on the request path."""
        budget = self.retry_budget
        if budget is None:
            limit = self.max_retries
        else:
            fraction, floor = budget
            limit = max(floor, int(fraction * self.stats.upstream_rq_active))
        if limit is not None and self.stats.upstream_rq_retry_active >= limit:
            self.stats.upstream_rq_retry_overflow += 1
            return True
        return False

    def choose_host(self) -> Host:
        host = self.lb.choose()
        if host is None:
            self.stats.upstream_cx_none_healthy += 1
            raise NoHostError(f"cluster {self.name!r} has no host")
        return host

    def choose_subset(self, match: MatchKey, key: int | None = None) -> Host:
        """The host for a route's ``metadata_match`` (``match``: its precomputed key; ``()``
        for a route without one): the matching subset's balancer; no such subset: the
        fallback policy (NO_FALLBACK: no host; ANY_ENDPOINT: the whole cluster;
        DEFAULT_SUBSET: the default subset). ``key``: the route's hash, which a hashing
        balancer keeps inside the subset. A cluster without ``lb_subset_config`` ignores the
        match, as Envoy does."""
        table = self.subsets
        if table is None or (subset := table.find(match)) is None:
            if table is None or table.policy is FallbackPolicy.ANY_ENDPOINT:
                return self.choose_host() if key is None else self.choose_host_for(key)
            host = None
        else:
            choose_key = getattr(subset.lb, "choose_key", None) if key is not None else None
            host = subset.lb.choose() if choose_key is None else choose_key(key)
        if host is None:
            self.stats.upstream_cx_none_healthy += 1
            raise NoHostError(f"cluster {self.name!r} has no host for {dict(match)}")
        return host

    def subset_lb_hosts(self, match: MatchKey) -> tuple[Host, ...]:
        """The hosts ``choose_subset(match)`` chooses from (a retry's fallback walks them)."""
        table = self.subsets
        if table is None:
            return self.lb_hosts
        subset = table.find(match)
        if subset is None:
            return self.lb_hosts if table.policy is FallbackPolicy.ANY_ENDPOINT else ()
        return subset.lb_hosts

    def choose_original_dst(self, dst: tuple[str, int] | None) -> Host:
        """An ORIGINAL_DST cluster's host for a connection's original destination;
        ``NoHostError`` when there is none (not redirected, a loop to this proxy) or the
        host cache is full of busy hosts."""
        hosts = self.original_dst
        host = hosts.host_for(dst) if hosts is not None and dst is not None else None
        if host is None:
            self.stats.upstream_cx_none_healthy += 1
            raise NoHostError(f"cluster {self.name!r}: no original destination to forward to")
        return host

    @property
    def hashing(self) -> bool:
        """Whether the balancer chooses by a request's hash key (asked only for routes
        with a ``hash_policy``)."""
        return self.config.lb_type in HASHING_LB_TYPES

    def choose_host_for(self, key: int) -> Host:
        """The host for a request's hash key (a route's ``hash_policy``): a hashing
        balancer's consistent choice; any other balancer chooses as usual."""
        choose_key = getattr(self.lb, "choose_key", None)
        if choose_key is None:
            return self.choose_host()
        host = choose_key(key)
        if host is None:
            self.stats.upstream_cx_none_healthy += 1
            raise NoHostError(f"cluster {self.name!r} has no host")
        return host

    async def connect(self, host: Host, alpn: str = ALPN_NONE) -> Stream:
        """A new connection to ``host``, within the connect timeout and the connection limit;
        TLS (the handshake within the same timeout) when the cluster has it and the host does
        not opt out. ``alpn``: what the connection offers (``ALPN_*``; ignored in cleartext).

        The caller owns the stream and must call ``release_connection`` when it closes it.
        """
        stats = self.stats
        if self.max_connections is not None and stats.upstream_cx_active >= self.max_connections:
            stats.upstream_cx_overflow += 1
            raise CircuitOpenError(
                f"cluster {self.name!r} is at max_connections {self.max_connections}"
            )
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1
        host.cx_total += 1
        host.cx_active += 1
        tls = self.tls
        try:
            if tls is None and self.tls_missing and not host.tls_disable:
                raise ConnectError(f"cluster {self.name!r}: its TLS contexts are not built")
            if tls is None or host.tls_disable:
                return await connect(host.host, host.port, self.connect_timeout)
            stream = await connect(
                host.host,
                host.port,
                self.connect_timeout,
                tls.contexts[alpn],
                tls.server_name or host.hostname or host.host,
            )
            stats.ssl_handshake += 1
            return stream
        except ConnectError as exc:
            stats.upstream_cx_active -= 1
            host.cx_active -= 1
            if exc.timeout:
                stats.upstream_cx_connect_timeout += 1
            stats.upstream_cx_connect_fail += 1
            host.cx_connect_fail += 1
            if isinstance(exc, TlsConnectError):
                stats.ssl_connection_error += 1
                if exc.kind == "verify":
                    stats.ssl_fail_verify_error += 1
                _tls_log.log(logging.WARNING, "cluster %r: %s", self.name, exc)
            raise
        except BaseException:
            stats.upstream_cx_active -= 1
            host.cx_active -= 1
            raise

    def release_connection(self, host: Host | None = None) -> None:
        """A connection ``connect`` made is closed (``host``: its host, whose open
        connections LB_LEAST_CONNECTION counts)."""
        stats = self.stats
        stats.upstream_cx_active -= 1
        if host is not None:
            host.cx_active -= 1
        stats.upstream_cx_destroy += 1
