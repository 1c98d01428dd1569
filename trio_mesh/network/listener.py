"""Bound listening sockets and the accept loop that survives running out of descriptors."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from ..config import Address
from ..stats import ListenerStats
from .connect import abort
from .connection import Connection

log = logging.getLogger("trio_mesh.listener")

# Resource exhaustion is overload, not a bug: back off and keep accepting (as trio's
# serve_listeners does) instead of letting one burst kill the listener.
_OVERLOAD_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1
BACKLOG = 4096

Handler = Callable[[Connection], Awaitable[None]]


class BindError(Exception):
    pass


async def bind(name: str, address: Address, *, reuse_port: bool = False) -> trio.socket.SocketType:
    """A listening socket on ``address`` (port 0: the kernel picks one). ``reuse_port``:
    several worker processes listen on the same port and the kernel spreads connections."""
    try:
        infos = await trio.socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(sockaddr)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise BindError(
            f"listener {name!r} cannot listen on {address}: {exc.strerror or exc}"
        ) from None
    return sock


class ListenerRuntime:
    """Accepts on one socket and runs ``handler`` for each connection in this listener's nursery."""

    def __init__(
        self,
        name: str,
        sock: trio.socket.SocketType,
        handler: Handler,
        *,
        idle_timeout: float | None = None,
        max_connections: int | None = None,
        stats: ListenerStats | None = None,
    ) -> None:
        self.name = name
        self.sock = sock
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.stats = stats if stats is not None else ListenerStats()
        host, port = sock.getsockname()[:2]
        self.address = (host, port)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(self.sock)
        stats = self.stats
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _OVERLOAD_ERRNOS:
                        raise
                    stats.downstream_accept_error += 1
                    log.warning(
                        "listener %r: accept failed (%s), backing off", self.name, exc.strerror
                    )
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                stats.downstream_cx_total += 1
                if (
                    self.max_connections is not None
                    and stats.downstream_cx_active >= self.max_connections
                ):
                    stats.downstream_cx_overflow += 1
                    abort(stream)
                    continue
                nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        stats = self.stats
        stats.downstream_cx_active += 1
        try:
            conn = Connection(stream, self.name, self.idle_timeout)
            with conn.idle.scope:
                await self.handler(conn)
            if conn.idle.expired:
                stats.downstream_cx_idle_timeout += 1
        except Exception:
            # One connection's failure must never take the listener down with it.
            log.exception("listener %r: connection handler failed", self.name)
        finally:
            stats.downstream_cx_active -= 1
            stream.socket.close()
