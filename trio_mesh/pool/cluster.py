"""The pools of one cluster, and the nursery their connections run in.

Each cluster's multiplexed upstream connections (HTTP/2, RPC) are tasks in the cluster's own
nursery, a child of ``Pools.run`` (pool/manager.py): removing the cluster (a configuration
swap, an xDS CDS removal) ends exactly its connections, and one cluster's failure never
touches another's. The run loop is also the cluster's reaper: once a second it drops expired
idle connections and closes the idle ones of pools whose host left. The cluster's health
checker (upstream/health.py) runs there too: removing the cluster ends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..network.connect import ConnectError
from ..upstream.cluster import Cluster
from ..upstream.dns import run_resolver
from ..upstream.health import HealthChecker
from ..upstream.host import Host
from ..upstream.outlier import OutlierDetector
from .base import ConnectionPool
from .http1 import H1Pool

log = logging.getLogger("trio_mesh.pool")

REAP_INTERVAL = 1.0


class ClusterPools:
    def __init__(self, cluster: Cluster, on_exit: Callable[[ClusterPools], None]) -> None:
        self.cluster = cluster
        self.pools: list[ConnectionPool[Any]] = []  # of the hosts it has now
        # Pools of hosts that left (or of the whole cluster once removed): requests in flight
        # finish on them; their connections close once idle, then they are forgotten.
        self.retiring: list[ConnectionPool[Any]] = []
        # The HTTP/1 pools of its hosts, and one wake-up for them all: the connection limit
        # is the cluster's, so a slot freed on one host serves any (pool/http1.py).
        self.h1_siblings: list[H1Pool] = []
        self.h1_released = trio.lowlevel.ParkingLot()
        self.removed = False
        self.started = False
        self.done = trio.Event()  # ``run`` is over: every connection of it is closed
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self._on_exit = on_exit
        self._wake = trio.lowlevel.ParkingLot()  # the run loop, told of a removal
        self._checking = False  # the health checker runs (or is to, once the nursery is)
        self._outlier: OutlierDetector | None = None  # the detector whose ``run`` is started
        #: What retires the pools of hosts that left (``Pools.retire``): the DNS resolver's.
        self.retire_hosts: Callable[[Iterable[Host]], None] = lambda hosts: None
        self._resolver = trio.CancelScope()

    async def nursery(self) -> trio.Nursery:
        """Where a new connection of this cluster runs (``ConnectError`` once it is over)."""
        if self._nursery is None:
            if not self.started:
                raise RuntimeError("the pools are not running")
            if not self.done.is_set():
                await self._ready.wait()
            if self._nursery is None:
                raise ConnectError(f"cluster {self.cluster.name!r}: its pools are closed")
        return self._nursery

    def add(self, pool: ConnectionPool[Any]) -> None:
        self.pools.append(pool)
        if isinstance(pool, H1Pool):
            self.h1_siblings.append(pool)
        if self.removed:
            self.retire(pool)  # a request that chose the cluster before it left
            if not isinstance(pool, H1Pool) and pool not in self.retiring:
                # It is about to connect: the run (its connections' nursery) waits for the
                # pool to be idle again, rather than closing under the connection's start.
                self.retiring.append(pool)

    def retire(self, pool: ConnectionPool[Any]) -> None:
        """New requests no longer reach this pool's host: close its idle connections now and
        the others when their requests in flight are done."""
        if pool in self.pools:
            self.pools.remove(pool)
        if isinstance(pool, H1Pool):
            if pool in self.h1_siblings:
                self.h1_siblings.remove(pool)
            pool.max_requests = 1  # a connection handed back is closed, not kept idle
            pool.close_all()
            return  # its connections in use are not tasks: nothing to wait for
        pool.close_idle()
        if pool.has_connections():
            self.retiring.append(pool)

    def remove(self) -> None:
        """The cluster is gone: every pool retires; the run ends once none has a connection."""
        self.removed = True
        self._resolver.cancel()
        for pool in list(self.pools):
            self.retire(pool)
        self._wake.unpark_all()

    def check_health(self) -> None:
        """Run the cluster's health checker if it has a ``health_check`` and none runs (the
        checker ends by itself when a reload removes the key)."""
        if self._checking or self.removed or self.cluster.config.health_check is None:
            return
        self._checking = True
        if self._nursery is not None:
            self._nursery.start_soon(self._health)

    async def _health(self) -> None:
        try:
            await HealthChecker(self.cluster).run()
        finally:
            self._checking = False

    def start_resolver(self) -> None:
        """A DNS cluster's resolver (upstream/dns.py) runs in this nursery, until the
        cluster is removed or is no DNS cluster any more."""
        state = self.cluster.dns
        if state is None or state.running or self._nursery is None or self.removed:
            return
        state.running = True  # now: a second call in this turn starts no second task
        self._resolver = trio.CancelScope()

        async def resolve() -> None:
            with self._resolver:
                await run_resolver(self.cluster, self.retire_hosts)

        self._nursery.start_soon(resolve)

    def start_in(self, nursery: trio.Nursery) -> None:
        """Run in ``nursery`` (from the next scheduler turn: ``nursery()`` waits for it)."""
        self.started = True
        nursery.start_soon(self.run)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                # Asked for before the nursery was there, or a run after a failed one (whose
                # checker ended with it): the cluster keeps being checked.
                if self._checking or (
                    not self.removed and self.cluster.config.health_check is not None
                ):
                    self._checking = True
                    nursery.start_soon(self._health)
                self.start_resolver()
                task_status.started()
                self._start_outlier()
                await self._reap()
                nursery.cancel_scope.cancel()  # removed and drained: nothing of it may stay
        except Exception:
            # A failure of this cluster's pools stays here; the next request builds new ones.
            log.exception("cluster %r: its upstream pools failed", self.cluster.name)
        finally:
            self._nursery = None
            self.close_all()
            self.done.set()
            self._ready.set()
            self._on_exit(self)

    def _start_outlier(self) -> None:
        """The cluster's outlier detector's interval task, if it has one not started yet (a
        reload may bring one: the reaper's second checks)."""
        detector = self.cluster.outlier
        if detector is not None and detector is not self._outlier and self._nursery is not None:
            self._outlier = detector
            self._nursery.start_soon(detector.run)

    async def _reap(self) -> None:
        """The reaper; returns once the cluster is removed and its connections are closed."""
        while True:
            if self.removed and not self.retiring:
                return
            with trio.move_on_after(REAP_INTERVAL):
                await self._wake.park()
            self._start_outlier()
            now = time.monotonic()  # the clock idle_since is on
            for pool in self.pools:
                pool.reap(now)
            if self.retiring:
                keep = []
                for pool in self.retiring:
                    pool.close_idle()
                    if pool.has_connections():
                        keep.append(pool)
                self.retiring = keep

    def close_all(self) -> None:
        """Every connection closes now; HTTP/1 ones still with a request, when handed back
        (no new request reaches these pools: the next one builds new pools)."""
        for pool in self.pools + self.retiring:
            if isinstance(pool, H1Pool):
                pool.max_requests = 1
            pool.close_all()
