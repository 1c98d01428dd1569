"""All upstream pools of a server, and the reaper that closes idle connections."""

from __future__ import annotations

import time
from collections.abc import Iterable

import trio

from ..config.filter_configs import XProtocolOptions
from ..protocols.http2 import H2Settings
from ..protocols.xprotocol import Codec
from ..upstream.cluster import Cluster
from ..upstream.host import Host
from .http1 import H1Pool
from .http2 import H2Pool
from .xprotocol import XPool

REAP_INTERVAL = 1.0


class Pools:
    def __init__(self) -> None:
        self._h1: dict[Host, H1Pool] = {}
        self._clusters: dict[str, tuple[list[H1Pool], trio.lowlevel.ParkingLot]] = {}
        self._h2: dict[Host, H2Pool] = {}
        self._x: dict[tuple[Host, str], XPool] = {}
        self._nursery: trio.Nursery | None = None  # where upstream HTTP/2 connections run
        # Pools of hosts that left their cluster (a reload, EDS): requests in flight finish on
        # them; the reaper closes each connection once it is idle, then forgets the pool.
        # (HTTP/1 pools need no reaper: retire() closes their connections as they come back.)
        self._retiring: list[H2Pool | XPool] = []

    def retire(self, hosts: Iterable[Host]) -> None:
        """New requests no longer reach these hosts: close their idle connections now and
        the others when their requests in flight are done."""
        for host in hosts:
            h1 = self._h1.pop(host, None)
            if h1 is not None:
                siblings, _ = self._clusters.get(h1.cluster.name, ([], None))
                if h1 in siblings:
                    siblings.remove(h1)
                h1.max_requests = 1  # a connection handed back is closed, not kept idle
                h1.close_all()
            h2 = self._h2.pop(host, None)
            if h2 is not None:
                h2.reap(float("inf"))
                self._retiring.append(h2)
            for key in [k for k in self._x if k[0] is host]:
                xpool = self._x.pop(key)
                xpool.close_idle()
                self._retiring.append(xpool)

    def _reap_retiring(self) -> None:
        keep: list[H2Pool | XPool] = []
        for pool in self._retiring:
            if isinstance(pool, H2Pool):
                pool.reap(float("inf"))
            else:
                pool.close_idle()
            if pool.conns:
                keep.append(pool)
        self._retiring = keep

    def http1(self, cluster: Cluster, host: Host) -> H1Pool:
        pool = self._h1.get(host)
        if pool is None:
            siblings, released = self._clusters.setdefault(
                cluster.name, ([], trio.lowlevel.ParkingLot())
            )
            pool = self._h1[host] = H1Pool(cluster, host, siblings, released)
            siblings.append(pool)
        return pool

    def http2(self, cluster: Cluster, host: Host, settings: H2Settings) -> H2Pool:
        """The HTTP/2 pool of ``host`` (the first caller's settings are the pool's)."""
        pool = self._h2.get(host)
        if pool is None:
            if self._nursery is None:
                raise RuntimeError("the pools are not running")
            pool = self._h2[host] = H2Pool(cluster, host, settings, self._nursery)
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
            pool = self._x[key] = XPool(cluster, host, codec, options, self._nursery)
        return pool

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The idle reaper, and the owner of upstream HTTP/2 connections; on cancellation
        every idle connection is closed."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(REAP_INTERVAL)
                    now = time.monotonic()  # the clock idle_since is on
                    for pool in self._h1.values():
                        pool.reap(now)
                    for h2pool in self._h2.values():
                        h2pool.reap(now)
                    if self._retiring:
                        self._reap_retiring()
        finally:
            self._nursery = None
            for pool in self._h1.values():
                pool.close_all()
            for xpool in self._x.values():
                xpool.close_all()
            for retired in self._retiring:
                retired.close_all()
            self._retiring.clear()
