"""Bound listening sockets and the accept loop that survives running out of descriptors."""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic

import trio

from ..config import Address
from ..errors import StartupError
from ..stats import ListenerStats
from .connection import Connection, IdleTimer
from .inherit import is_shared
from .original_dst import is_loop, read_original_dst
from .stream import Stream

log = logging.getLogger("trio_mesh.listener")

# Resource exhaustion is overload, not a bug: back off and keep accepting (as trio's
# serve_listeners does) instead of letting one burst kill the listener.
_OVERLOAD_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# The connection died between the handshake and accept(): nothing to do about it.
_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
ACCEPT_BACKOFF = 0.1
# Exhaustion lasts as long as the flood that causes it: one line a second says so, with the
# count of the failures in between, instead of ten lines a second filling the disk.
ACCEPT_LOG_INTERVAL = 1.0
BACKLOG = 4096

Handler = Callable[[Connection], Awaitable[None]]


class BindError(StartupError):
    pass


async def bind(name: str, address: Address, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``address`` (port 0: the kernel picks one). ``reuse_port``:
    several worker processes listen on the same port and the kernel spreads connections."""
    try:
        infos = await trio.socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
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
        sock: socket.socket,
        handler: Handler,
        *,
        idle_timeout: float | None = None,
        max_connections: int | None = None,
        stats: ListenerStats | None = None,
        original_dst: bool = False,
    ) -> None:
        self.name = name
        #: Read each connection's ``SO_ORIGINAL_DST`` at accept (``use_original_dst``).
        self.original_dst = original_dst
        self.sock = sock
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.stats = stats if stats is not None else ListenerStats()
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        self.connections: set[Connection] = set()  # for drain
        self.draining = False
        #: The accept loop's progress, for the systemd watchdog (``trio_mesh.systemd``):
        #: one more each time it goes round, and whether it waits for a connection now.
        #: Either moving or parked in the wait is an accept path that works.
        self.accept_passes = 0
        self.accept_parked = False
        #: False once it stopped accepting (a drain, a removed listener): not watched.
        self.accepting = True
        self._accept_scope = trio.CancelScope()
        self._scope = trio.CancelScope()  # close_now: every connection
        self._changed = trio.lowlevel.ParkingLot()  # a connection ended

    def drain(self, *, keep_socket: bool = False) -> None:
        """Stop accepting and ask every connection to finish: each closes once its requests
        in flight are answered (HTTP/2 sends GOAWAY first; idle ones close now).
        ``keep_socket``: see ``stop_accepting``."""
        if self.draining:
            return
        self.stop_accepting(keep_socket=keep_socket)
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def stop_accepting(self, *, keep_socket: bool = False) -> None:
        """Close the listening socket now; the connections already accepted go on.

        The socket may be shared (``--workers``: the supervisor and every worker hold it):
        it is shut down, so that the port refuses connections for every holder instead of
        queueing them for nobody; ``keep_socket`` (a hot upgrade: the new process accepts
        on it now) only closes our descriptor, and so does a socket systemd passed
        (``is_shared``: systemd keeps it for the next start, which serves what queues)."""
        self.accepting = False
        self._accept_scope.cancel()
        if self.sock.fileno() != -1:
            if not keep_socket and not is_shared(self.sock):
                try:
                    self.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            # Refuse new connections from now on (the accept loop no longer waits on it).
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def wait_closed(self) -> None:
        """Until every connection of a draining listener has ended."""
        while self.connections:
            await self._changed.park()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.sock
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    with self._accept_scope:
                        await self._accept(nursery)
                    self.accepting = False
        finally:
            self.accepting = False
            sock.close()

    def close_now(self) -> None:
        """Close every connection now (a drain that ran out of time)."""
        self.drain()
        self._scope.cancel()

    async def _accept(self, nursery: trio.Nursery) -> None:
        sock = self.sock
        stats = self.stats
        accepted = 0
        logged_at = -math.inf
        unlogged = 0
        while True:
            self.accept_passes += 1
            try:
                client, _ = sock.accept()
            except BlockingIOError:
                self.accept_parked = True
                try:
                    await trio.lowlevel.wait_readable(sock)
                finally:
                    self.accept_parked = False
                continue
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue  # that one client is gone; the listener is fine
                if exc.errno == errno.EINVAL:
                    return  # shut down by another holder of the socket (a worker's drain)
                if exc.errno not in _OVERLOAD_ERRNOS:
                    raise
                stats.downstream_accept_error += 1
                now = trio.current_time()
                if now - logged_at >= ACCEPT_LOG_INTERVAL:
                    more = f"; {unlogged} more since the last line" if unlogged else ""
                    log.warning(
                        "listener %r: accept failed (%s), backing off%s",
                        self.name,
                        exc.strerror,
                        more,
                    )
                    logged_at, unlogged = now, 0
                else:
                    unlogged += 1
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            stream = Stream(client)
            stats.downstream_cx_total += 1
            if (
                self.max_connections is not None
                and stats.downstream_cx_active >= self.max_connections
            ):
                stats.downstream_cx_overflow += 1
                stream.abort()
                continue
            # Counted here, not when its task starts: a burst accepted in one pass would
            # otherwise all see the count from before it.
            stats.downstream_cx_active += 1
            nursery.start_soon(self._run_connection, stream)
            accepted += 1
            if accepted % 16 == 0:  # a flood of connections must not starve their tasks
                await trio.lowlevel.checkpoint()

    async def _run_connection(self, stream: Stream) -> None:
        """Serve one accepted connection (``_accept`` counted it in ``downstream_cx_active``)."""
        stats = self.stats
        started = _monotonic()
        conn = None
        try:
            conn = Connection(stream, self.idle_timeout)
            if self.original_dst:
                dst = read_original_dst(stream.socket)
                # Not redirected (or redirected to ourselves): no destination, so an
                # ORIGINAL_DST cluster refuses it instead of connecting back to us.
                if dst is not None and not is_loop(dst, conn.local, self.address):
                    conn.original_dst = dst
            self.connections.add(conn)
            work = self.handler(conn)
            while True:
                with conn.idle.scope:
                    await work
                if conn.idle.expired and not conn.draining:
                    stats.downstream_cx_idle_timeout += 1
                if conn.resume is None:
                    break
                work, conn.resume = conn.resume(), None
                conn.idle = IdleTimer(conn.idle.timeout)
        except Exception:
            # One connection's failure must never take the listener down with it.
            log.exception("listener %r: connection handler failed", self.name)
        finally:
            stats.downstream_cx_active -= 1
            stats.downstream_cx_destroy += 1
            stats.downstream_cx_length_ms.record((_monotonic() - started) * 1000.0)
            # The connection's own stream: a TLS one sends close_notify, then closes the socket.
            (conn.stream if conn is not None else stream).close()
            if conn is not None:
                self.connections.discard(conn)
                conn.on_drain = None  # the filter's hook may hold the session: no cycle left
            self._changed.unpark_all()
