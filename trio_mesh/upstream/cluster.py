"""A cluster: its hosts, its balancer, its limits, its counters."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Cluster as ClusterConfig
from ..config import Host as HostConfig
from ..network.connect import ConnectError, connect_tcp
from ..network.stream import Stream
from ..stats import ClusterStats
from .host import Host
from .lb import LoadBalancer, make_balancer


class NoHostError(Exception):
    """The cluster has no host to offer (empty, or all over their limits)."""


class CircuitOpenError(Exception):
    """A circuit breaker is open: the cluster is at its connection limit."""


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.name = config.name
        self.stats = ClusterStats()
        self.hosts: tuple[Host, ...] = ()
        self.lb: LoadBalancer
        self._configure(config)
        self.set_hosts([Host.from_config(h) for h in config.hosts])

    def _configure(self, config: ClusterConfig) -> None:
        self.config = config
        self.connect_timeout = config.connect_timeout
        limits = config.thresholds()
        self.max_connections = limits.max_connections
        self.max_pending_requests = limits.max_pending_requests
        self.max_requests = limits.max_requests
        self.max_retries = limits.max_retries

    def update(self, config: ClusterConfig) -> list[Host]:
        """Take a new configuration of this cluster in place; returns the hosts that left.

        A host whose address stays keeps its ``Host`` object (pools are keyed by it, so its
        pooled connections survive) with the new weight and metadata; the balancer is rebuilt.
        """
        self._configure(config)
        return self.replace_hosts(config.hosts)

    def replace_hosts(self, configs: Iterable[HostConfig]) -> list[Host]:
        """A new host set (a file reload or an EDS update), keeping the ``Host`` objects of
        addresses that stay; returns the hosts that left."""
        old = {h.address: h for h in self.hosts}
        hosts = []
        for cfg in configs:
            host = old.pop(cfg.address, None)
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
        self.lb = make_balancer(self.config.lb_type, self.hosts)

    def request_overflows(self) -> bool:
        """Whether a new request would pass ``max_requests`` (the overflow is counted);
        callers check ``max_requests is not None`` first, so the common case costs nothing."""
        if self.stats.upstream_rq_active >= self.max_requests:  # type: ignore[operator]
            self.stats.upstream_rq_pending_overflow += 1
            return True
        return False

    def retry_overflows(self) -> bool:
        """Whether one more retry would pass ``max_retries`` (the overflow is counted)."""
        limit = self.max_retries
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

    async def connect(self, host: Host) -> Stream:
        """A new connection to ``host``, within the connect timeout and the connection limit.

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
        try:
            return await connect_tcp(host.host, host.port, self.connect_timeout)
        except ConnectError as exc:
            stats.upstream_cx_active -= 1
            if exc.timeout:
                stats.upstream_cx_connect_timeout += 1
            stats.upstream_cx_connect_fail += 1
            raise
        except BaseException:
            stats.upstream_cx_active -= 1
            raise

    def release_connection(self) -> None:
        self.stats.upstream_cx_active -= 1
