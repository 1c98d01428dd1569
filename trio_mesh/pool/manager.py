"""All upstream pools of a server, and the reaper that closes idle connections."""

from __future__ import annotations

import time

import trio

from ..upstream.cluster import Cluster
from ..upstream.host import Host
from .http1 import H1Pool

REAP_INTERVAL = 1.0


class Pools:
    def __init__(self) -> None:
        self._h1: dict[Host, H1Pool] = {}
        self._clusters: dict[str, tuple[list[H1Pool], trio.lowlevel.ParkingLot]] = {}

    def http1(self, cluster: Cluster, host: Host) -> H1Pool:
        pool = self._h1.get(host)
        if pool is None:
            siblings, released = self._clusters.setdefault(
                cluster.name, ([], trio.lowlevel.ParkingLot())
            )
            pool = self._h1[host] = H1Pool(cluster, host, siblings, released)
            siblings.append(pool)
        return pool

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The idle reaper; on cancellation every idle connection is closed."""
        task_status.started()
        try:
            while True:
                await trio.sleep(REAP_INTERVAL)
                now = time.monotonic()  # the clock idle_since is on
                for pool in self._h1.values():
                    pool.reap(now)
        finally:
            for pool in self._h1.values():
                pool.close_all()
