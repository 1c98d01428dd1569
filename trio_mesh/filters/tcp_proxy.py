"""``tcp_proxy``: an L4 relay between the downstream connection and one upstream host."""

from __future__ import annotations

import logging

import trio

from ..config import TcpProxyConfig
from ..network.connect import ConnectError
from ..network.connection import Connection
from ..network.relay import relay
from ..network.stream import Stream
from ..upstream import CircuitOpenError, Host, NoHostError
from .registry import BuildContext, register_network_filter

log = logging.getLogger("trio_mesh.tcp_proxy")


class TcpProxy:
    def __init__(self, config: TcpProxyConfig, ctx: BuildContext) -> None:
        self.cluster = ctx.clusters.get(config.cluster)
        self.idle_timeout = config.idle_timeout
        self.attempts = config.max_connect_attempts

    async def on_connection(self, conn: Connection) -> None:
        connected = await self._connect(conn)
        if connected is None:
            return
        host, upstream = connected
        conn.idle.shorten(self.idle_timeout)
        host.active_requests += 1  # a connection is tcp_proxy's request: least-request counts it
        try:
            await relay(conn.stream, upstream, conn.idle)
        finally:
            host.active_requests -= 1
            upstream.close()
            self.cluster.release_connection(host)
            # The listener's scope has not exited yet, so ask whether its deadline passed.
            if conn.idle.scope.cancel_called and trio.current_time() >= conn.idle.deadline:
                self.cluster.stats.upstream_cx_idle_timeout += 1

    async def _connect(self, conn: Connection) -> tuple[Host, Stream] | None:
        cluster = self.cluster
        for attempt in range(1, self.attempts + 1):
            try:
                if cluster.original_dst is None:
                    host = cluster.choose_host()
                else:
                    host = cluster.choose_original_dst(conn.original_dst)
                return host, await cluster.connect(host)
            except (NoHostError, CircuitOpenError) as exc:
                log.warning("tcp_proxy %s: %s", conn.remote, exc)
                return None
            except ConnectError as exc:
                log.warning(
                    "tcp_proxy %s: attempt %d/%d: %s", conn.remote, attempt, self.attempts, exc
                )
        return None


register_network_filter("tcp_proxy", TcpProxy, TcpProxyConfig, terminal=True)
