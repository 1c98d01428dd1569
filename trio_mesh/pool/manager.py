"""All upstream pools of a server, and the reaper that closes idle connections."""

from __future__ import annotations

import time

import trio

from ..config.filters import XProtocolOptions
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
        finally:
            self._nursery = None
            for pool in self._h1.values():
                pool.close_all()
            for xpool in self._x.values():
                xpool.close_all()
