"""All upstream pools of a server: found by host on the request path, owned by cluster.

``Pools.run`` is the root of the upstream side of the nursery tree: one child task per
cluster (``ClusterPools.run``, pool/cluster.py), whose nursery runs that cluster's
multiplexed connections and whose loop reaps its idle ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, TypeVar

import trio

from ..config.filter_configs import XProtocolOptions
from ..network.connect import ConnectError
from ..protocols.http2 import H2Settings
from ..protocols.xprotocol import Codec
from ..upstream.cluster import ALPN_AUTO, CircuitOpenError, Cluster
from ..upstream.host import Host
from .base import ConnectionPool
from .cluster import REAP_INTERVAL, ClusterPools
from .http1 import H1Pool
from .http2 import H2Pool
from .xprotocol import XPool

__all__ = ["REAP_INTERVAL", "Pools"]

K = TypeVar("K")
P = TypeVar("P", bound=ConnectionPool[Any])


def _forget(table: dict[K, P], cluster: Cluster) -> None:
    for key in [k for k, pool in table.items() if pool.cluster is cluster]:
        del table[key]


class _Negotiation:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: Exception | None = None


class Pools:
    def __init__(self) -> None:
        # Looked up by host on every request (a host belongs to one cluster).
        self._h1: dict[Host, H1Pool] = {}
        self._h2: dict[Host, H2Pool] = {}
        self._x: dict[tuple[Host, str], XPool] = {}
        self._clusters: dict[Cluster, ClusterPools] = {}
        # Removed clusters a late request may still name: their pools are born retiring.
        self._removed: weakref.WeakSet[Cluster] = weakref.WeakSet()
        self._nursery: trio.Nursery | None = None  # Pools.run's: one task per cluster
        # Auto over TLS: the hosts whose first connection is being made (others wait on it).
        self._negotiating: dict[Host, _Negotiation] = {}

    @property
    def running(self) -> list[ClusterPools]:
        """The clusters' pools now known (a removed cluster's until its nursery ended)."""
        return list(self._clusters.values())

    def cluster_pools(self, cluster: Cluster) -> ClusterPools:
        """The pools of ``cluster`` (made, and run once the pools run, on first use)."""
        owner = self._clusters.get(cluster)
        if owner is None:
            owner = self._clusters[cluster] = ClusterPools(cluster, self._exited)
            owner.retire_hosts = self.retire
            if cluster.original_dst is not None:
                # A dropped destination's pools hold no connection: forget them.
                cluster.original_dst.on_drop = lambda host: self.retire((host,))
            if cluster in self._removed:
                owner.remove()
            if self._nursery is not None:
                owner.start_in(self._nursery)
        return owner

    def check_health(self, clusters: Iterable[Cluster]) -> None:
        """Start the health checkers of these clusters that have a ``health_check`` (after
        start-up and each configuration swap; a running checker follows its cluster's key)."""
        for cluster in clusters:
            if cluster.config.health_check is not None:
                self.cluster_pools(cluster).check_health()

    def start_resolvers(self, clusters: Iterable[Cluster]) -> None:
        """DNS clusters resolve from now on, before any request uses them (upstream/dns.py)."""
        for cluster in clusters:
            if cluster.dns is not None and cluster not in self._removed:
                self.cluster_pools(cluster).start_resolver()

    def _exited(self, owner: ClusterPools) -> None:
        """A cluster's run ended (removed and drained, failed, or shutdown): forget it and
        its pools, so that a later request starts afresh."""
        if self._clusters.get(owner.cluster) is owner:
            del self._clusters[owner.cluster]
        _forget(self._h1, owner.cluster)
        _forget(self._h2, owner.cluster)
        _forget(self._x, owner.cluster)

    def retire(self, hosts: Iterable[Host]) -> None:
        """New requests no longer reach these hosts: close their idle connections now and
        the others when their requests in flight are done."""
        for host in hosts:
            pools: list[ConnectionPool[Any]] = []
            h1 = self._h1.pop(host, None)
            if h1 is not None:
                pools.append(h1)
            h2 = self._h2.pop(host, None)
            if h2 is not None:
                pools.append(h2)
            for key in [k for k in self._x if k[0] is host]:
                pools.append(self._x.pop(key))
            for pool in pools:
                owner = self._clusters.get(pool.cluster)
                if owner is not None:
                    owner.retire(pool)
                else:
                    pool.close_all()

    def remove_clusters(self, clusters: Iterable[Cluster]) -> None:
        """These clusters are gone (nothing routes to them): their pools close their idle
        connections now and the others once their requests are done; then each cluster's
        nursery ends, and with it exactly its connections."""
        for cluster in clusters:
            self._removed.add(cluster)
            self.retire(cluster.hosts)
            owner = self._clusters.get(cluster)
            if owner is not None:
                owner.remove()

    def http1(self, cluster: Cluster, host: Host) -> H1Pool:
        pool = self._h1.get(host)
        if pool is None:
            owner = self.cluster_pools(cluster)
            pool = self._h1[host] = H1Pool(cluster, host, owner.h1_siblings, owner.h1_released)
            owner.add(pool)
        return pool

    def http2(self, cluster: Cluster, host: Host, settings: H2Settings) -> H2Pool:
        """The HTTP/2 pool of ``host`` (the first caller's settings are the pool's)."""
        pool = self._h2.get(host)
        if pool is None:
            if self._nursery is None:
                raise RuntimeError("the pools are not running")
            owner = self.cluster_pools(cluster)
            pool = self._h2[host] = H2Pool(cluster, host, settings, owner)
            owner.add(pool)
        return pool

    def xprotocol(
        self, cluster: Cluster, host: Host, codec: Codec, options: XProtocolOptions
    ) -> XPool:
        """The RPC pool of ``host`` for ``codec`` (the first caller's options are the pool's)."""
        key = (host, codec.name)
        pool = self._x.get(key)
        if pool is None:
            if self._nursery is None:
                raise RuntimeError("the pools are not running")
            owner = self.cluster_pools(cluster)
            pool = self._x[key] = XPool(cluster, host, codec, options, owner)
            owner.add(pool)
        return pool

    async def negotiate(self, cluster: Cluster, host: Host, settings: H2Settings) -> str:
        """``upstream_protocol: Auto`` to a TLS host: the protocol its ALPN answer picks,
        ``"h2"`` or ``"http/1.1"`` (no ALPN: HTTP/1), learned once per host. The first caller
        connects offering both and hands the connection to that protocol's pool; the others
        wait for it, and fail as it failed (one cancelled with its request: a waiter takes
        over). Raises ``ConnectError`` or ``CircuitOpenError``."""
        while True:
            protocol = host.protocol
            if protocol is not None:
                return protocol
            current = self._negotiating.get(host)
            if current is None:
                break
            await current.done.wait()
            if host.protocol is None and current.error is not None:
                # One error object for every waiter: its traceback reset each time, so it
                # does not grow with the number of requests that waited.
                raise current.error.with_traceback(None)
            # No error: the request that negotiated went away (cancelled): one waiter
            # negotiates in its place; another's timeout is not this request's failure.
        current = self._negotiating[host] = _Negotiation()
        try:
            stream = await cluster.connect(host, ALPN_AUTO)
            tls = getattr(stream, "info", None)  # a TlsStream's (tls_disable: cleartext)
            protocol = "h2" if tls is not None and tls.alpn == "h2" else "http/1.1"
            try:
                pool: H1Pool | H2Pool = (
                    self.http2(cluster, host, settings)
                    if protocol == "h2"
                    else self.http1(cluster, host)
                )
            except BaseException:
                stream.close()
                cluster.release_connection(host)
                raise
            if isinstance(pool, H2Pool):
                await pool.adopt(stream)  # closes it and releases its slot if it fails
            else:
                pool.adopt(stream)
            host.protocol = protocol
            return protocol
        except (ConnectError, CircuitOpenError) as exc:
            current.error = exc
            raise
        except Exception:
            current.error = ConnectError(f"{host.label}: the protocol was not negotiated")
            raise
        # Cancelled (its request timed out, its client went away): ``error`` stays None.
        finally:
            del self._negotiating[host]
            current.done.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The parent of every cluster's pools; on cancellation every connection is closed."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for owner in list(self._clusters.values()):
                    if not owner.started:  # made before the pools ran (HTTP/1 only)
                        owner.start_in(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for owner in list(self._clusters.values()):
                owner.close_all()
