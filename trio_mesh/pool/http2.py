"""HTTP/2 upstream pool: few connections per (cluster, host), many streams on each.

A new stream goes on the newest connection that has room under the peer's
MAX_CONCURRENT_STREAMS and has not been told to go away; when none has, a new connection is
opened (within the cluster's ``max_connections``; past it, requests queue, bounded by
``max_pending_requests``). Each connection runs in the pools' nursery: one reader task that
dispatches responses by stream id into per-stream inboxes, and one writer. A connection the
peer sends GOAWAY on drains: its streams finish, new ones go to a new connection. A broken
connection fails only its own streams.
"""

from __future__ import annotations

import time

import trio

from ..network.connect import ConnectError
from ..network.h2 import H2Endpoint, Inbox
from ..protocols.http2 import H2Connection, H2Settings
from ..upstream.cluster import Cluster
from ..upstream.host import Host
from .http1 import DEFAULT_IDLE_TIMEOUT, PoolOverflow

DEFAULT_SETTINGS_WAIT = 10.0  # when the cluster has no connect timeout


class H2Pool:
    def __init__(self, cluster: Cluster, host: Host, settings: H2Settings, nursery: trio.Nursery):
        self.cluster = cluster
        self.host = host
        self.settings = settings
        self.nursery = nursery
        self.conns: list[H2Endpoint] = []
        self.idle_since: dict[H2Endpoint, float] = {}
        self.idle_timeout = cluster.config.idle_timeout or DEFAULT_IDLE_TIMEOUT
        self._changed = trio.lowlevel.ParkingLot()
        self._connecting = False

    def _usable(self, ep: H2Endpoint) -> bool:
        return (
            ep.dead is None
            and ep.goaway is None
            and not ep.draining
            and ep.codec.open_outbound_streams < ep.codec.remote_max_concurrent_streams
        )

    async def open_stream(self) -> tuple[H2Endpoint, int, Inbox]:
        """A new stream: its connection, id and inbox. Send its headers at once (stream ids
        must go out in order). Raises ``ConnectError``, ``CircuitOpenError`` or
        ``PoolOverflow``."""
        cluster = self.cluster
        pending = False
        try:
            while True:
                for ep in reversed(self.conns):
                    if self._usable(ep):
                        self.idle_since.pop(ep, None)
                        sid, inbox = ep.open_stream()
                        return ep, sid, inbox
                limit = cluster.max_connections
                at_limit = limit is not None and cluster.stats.upstream_cx_active >= limit
                if self._connecting or at_limit:
                    if not pending:
                        max_pending = cluster.max_pending_requests
                        active = cluster.stats.upstream_rq_pending_active
                        if max_pending is not None and active >= max_pending:
                            cluster.stats.upstream_rq_pending_overflow += 1
                            raise PoolOverflow(
                                f"cluster {cluster.name!r}: too many requests pending"
                            )
                        pending = True
                        cluster.stats.upstream_rq_pending_active += 1
                    await self._changed.park()
                    continue
                await self._connect()
        finally:
            if pending:
                cluster.stats.upstream_rq_pending_active -= 1

    async def _connect(self) -> None:
        """A new connection, in use once the upstream's SETTINGS say how many streams it
        takes (streams sent before that could exceed its limit and be refused). Other
        requests wait for it meanwhile."""
        self._connecting = True
        try:
            stream = await self.cluster.connect(self.host)
            codec = H2Connection(client_side=True, settings=self.settings)
            codec.initiate()
            ep = H2Endpoint(
                stream, codec, on_settings=lambda: self._on_change(ep), stats=self.cluster.stats
            )
            await self.nursery.start(self._run, ep)
            with trio.move_on_after(self.cluster.connect_timeout or DEFAULT_SETTINGS_WAIT):
                await ep.settings_seen.wait()
            if ep.dead is not None or not ep.settings_seen.is_set():
                ep.close()
                raise ConnectError(f"{self.host.label}: no HTTP/2 SETTINGS from the upstream")
            self.conns.append(ep)
        finally:
            self._connecting = False
            self._changed.unpark_all()

    async def _run(self, ep: H2Endpoint, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await ep.run(task_status=task_status)
        finally:
            if ep in self.conns:
                self.conns.remove(ep)
            self.idle_since.pop(ep, None)
            self.cluster.release_connection()
            self._changed.unpark_all()

    def _on_change(self, ep: H2Endpoint) -> None:
        """Settings, GOAWAY, a stream ended or the connection died: waiters look again."""
        if ep.active_streams == 0 and ep.dead is None:
            if ep.goaway is not None:
                ep.close()  # drained: the peer asked us to go
            else:
                self.idle_since.setdefault(ep, time.monotonic())
        self._changed.unpark_all()

    def reap(self, now: float) -> None:
        """Close connections without streams for longer than the idle timeout."""
        deadline = now - self.idle_timeout
        for ep, since in list(self.idle_since.items()):
            if since <= deadline and ep.active_streams == 0:
                self.cluster.stats.upstream_cx_idle_timeout += 1
                del self.idle_since[ep]
                ep.close()

    def close_all(self) -> None:
        for ep in list(self.conns):
            ep.close()
