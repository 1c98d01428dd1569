"""HTTP/2 upstream pool: few connections per (cluster, host), many streams on each.

A new stream goes on the newest connection that has room under the peer's
MAX_CONCURRENT_STREAMS and has not been told to go away; when none has, a new connection is
opened (within the cluster's ``max_connections``; past it, requests queue, bounded by
``max_pending_requests``). Each connection runs in its cluster's nursery (pool/cluster.py):
one reader task that
dispatches responses by stream id into per-stream channels, and one writer. A connection the
peer sends GOAWAY on drains: its streams finish, new ones go to a new connection. A broken
connection fails only its own streams.
"""

from __future__ import annotations

import logging
import time

import trio

from ..network.connect import ConnectError
from ..network.h2 import H2Endpoint, StreamChannel
from ..network.stream import Stream
from ..protocols.http2 import H2Connection, H2Settings
from ..upstream.cluster import ALPN_H2, Cluster
from ..upstream.host import Host
from .base import ConnectionPool, NurseryOwner
from .http1 import DEFAULT_IDLE_TIMEOUT, PoolOverflow

log = logging.getLogger("trio_mesh.pool")

DEFAULT_SETTINGS_WAIT = 10.0  # when the cluster has no connect timeout


class H2Pool(ConnectionPool[H2Endpoint]):
    def __init__(self, cluster: Cluster, host: Host, settings: H2Settings, owner: NurseryOwner):
        self.cluster = cluster
        self.host = host
        self.settings = settings
        self.owner = owner  # its cluster's pools: their nursery runs the connections
        self.conns: list[H2Endpoint] = []
        self.idle_timeout = cluster.config.idle_timeout or DEFAULT_IDLE_TIMEOUT
        self._changed = trio.lowlevel.ParkingLot()
        self._connecting = False

    async def open_stream(self) -> tuple[H2Endpoint, int, StreamChannel]:
        """A new stream: its connection, id and channel. Send its headers at once (stream ids
        must go out in order). Raises ``ConnectError``, ``CircuitOpenError`` or
        ``PoolOverflow``."""
        cluster = self.cluster
        pending = False
        try:
            while True:
                for ep in reversed(self.conns):
                    if ep.is_available():
                        ep.idle_since = 0.0
                        sid, channel = ep.open_stream()
                        return ep, sid, channel
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

    async def adopt(self, stream: Stream) -> None:
        """Run a connection made elsewhere (``upstream_protocol: Auto`` over TLS: the one
        whose ALPN answer was h2) as one of this pool's. Raises ``ConnectError`` (no
        SETTINGS)."""
        await self._connect(stream)

    async def _connect(self, stream: Stream | None = None) -> None:
        """A new connection (``stream``: one already made), in use once the upstream's
        SETTINGS say how many streams it takes (streams sent before that could exceed its
        limit and be refused). Other requests wait for it meanwhile."""
        self._connecting = True
        try:
            try:
                nursery = await self.owner.nursery()
            except BaseException:
                if stream is not None:
                    stream.close()
                    self.cluster.release_connection(self.host)
                raise
            if stream is None:
                stream = await self.cluster.connect(self.host, ALPN_H2)
            codec = H2Connection(client_side=True, settings=self.settings)
            codec.initiate()
            ep = H2Endpoint(
                stream, codec, on_settings=lambda: self._on_change(ep), stats=self.cluster.stats
            )
            ep.idle_timeout = self.idle_timeout
            began: list[bool] = []
            try:
                await nursery.start(self._run, ep, began)
            except BaseException:
                if not began:  # _run never began: its cleanup is ours
                    stream.close()
                    self.cluster.release_connection(self.host)
                raise
            with trio.move_on_after(self.cluster.connect_timeout or DEFAULT_SETTINGS_WAIT):
                await ep.settings_seen.wait()
            if ep.dead is not None or not ep.settings_seen.is_set():
                ep.close()
                raise ConnectError(f"{self.host.label}: no HTTP/2 SETTINGS from the upstream")
            self.conns.append(ep)
        finally:
            self._connecting = False
            self._changed.unpark_all()

    async def _run(
        self, ep: H2Endpoint, began: list[bool], *, task_status: trio.TaskStatus[None]
    ) -> None:
        began.append(True)
        try:
            await ep.run(task_status=task_status)
        except Exception:
            # One connection's failure must never reach its cluster's nursery.
            log.exception("upstream HTTP/2 connection to %s failed", self.host.label)
        finally:
            if ep in self.conns:
                self.conns.remove(ep)
            self.cluster.release_connection(self.host)
            self._changed.unpark_all()

    def _on_change(self, ep: H2Endpoint) -> None:
        """Settings, GOAWAY, a stream ended or the connection died: waiters look again."""
        if ep.active_streams == 0 and ep.dead is None:
            if ep.goaway is not None:
                ep.close()  # drained: the peer asked us to go
            elif not ep.idle_since:
                ep.idle_since = time.monotonic()
        self._changed.unpark_all()

    def connections(self) -> list[H2Endpoint]:
        return self.conns

    def has_connections(self) -> bool:
        return bool(self.conns) or bool(self._connecting)  # one connecting counts

    def discard(self, conn: H2Endpoint, idle_timeout: bool = False) -> None:
        if idle_timeout and conn.dead is None and conn.goaway is None:
            self.cluster.stats.upstream_cx_idle_timeout += 1
        conn.close()  # its task ends, and takes it out of ``conns``
