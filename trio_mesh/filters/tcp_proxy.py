"""``tcp_proxy``: an L4 relay between the downstream connection and one upstream host."""

from __future__ import annotations

import logging

import trio

from ..config import TcpProxyConfig
from ..network.connect import ConnectError, abort
from ..network.connection import Connection, IdleTimer
from ..upstream import CircuitOpenError, NoHostError
from .registry import BuildContext, register_network_filter

log = logging.getLogger("trio_mesh.tcp_proxy")

# One read in flight per direction: the buffer bound, and the backpressure (a slow reader
# stops our reads from the fast writer, so the kernel's windows push back).
CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, config: TcpProxyConfig, ctx: BuildContext) -> None:
        self.cluster = ctx.clusters.get(config.cluster)
        self.idle_timeout = config.idle_timeout
        self.attempts = config.max_connect_attempts

    async def on_connection(self, conn: Connection) -> None:
        upstream = await self._connect(conn)
        if upstream is None:
            return
        conn.idle.shorten(self.idle_timeout)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pipe, conn.stream, upstream, conn.idle, nursery.cancel_scope)
                nursery.start_soon(_pipe, upstream, conn.stream, conn.idle, nursery.cancel_scope)
        finally:
            upstream.socket.close()
            self.cluster.release_connection()
            if conn.idle.scope.cancel_called and conn.idle.expired:
                self.cluster.stats.upstream_cx_idle_timeout += 1

    async def _connect(self, conn: Connection) -> trio.SocketStream | None:
        cluster = self.cluster
        for attempt in range(1, self.attempts + 1):
            try:
                host = cluster.choose_host()
                return await cluster.connect(host)
            except (NoHostError, CircuitOpenError) as exc:
                log.warning("tcp_proxy %s: %s", conn.remote, exc)
                return None
            except ConnectError as exc:
                log.warning(
                    "tcp_proxy %s: attempt %d/%d: %s", conn.remote, attempt, self.attempts, exc
                )
        return None


async def _pipe(
    src: trio.SocketStream, dst: trio.SocketStream, idle: IdleTimer, scope: trio.CancelScope
) -> None:
    """Copy ``src`` to ``dst``; EOF half-closes ``dst``; a reset resets both and stops all."""
    try:
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                break
            idle.touch()
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # A reset on either side ends the whole relay, and the other side learns by an RST.
        abort(dst)
        abort(src)
        scope.cancel()


register_network_filter("tcp_proxy", TcpProxy, TcpProxyConfig, terminal=True)
