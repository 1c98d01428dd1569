"""HTTP/1 upstream connection pool: one request per connection at a time.

One pool per (cluster, host). Idle connections are reused last-in first-out (the warmest
socket, and the others age out), never after an error or an incomplete exchange, and are
closed by their cluster's reaper (pool/cluster.py) once idle longer than the cluster's idle
timeout.
"""

from __future__ import annotations

import enum
from time import monotonic as _monotonic

import trio

from ..network.stream import Stream
from ..protocols.http1 import ResponseParser
from ..upstream.cluster import ALPN_H1, Cluster
from ..upstream.host import Host
from .base import ConnectionPool

DEFAULT_IDLE_TIMEOUT = 60.0
PEEK_AFTER = 1.0


class PoolOverflow(Exception):
    """Too many requests already wait for a connection (``max_pending_requests``)."""


class State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class H1Connection:
    __slots__ = ("host", "idle_since", "idle_timeout", "parser", "requests", "state", "stream")

    def __init__(
        self, stream: Stream, host: Host, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        self.stream = stream
        self.host = host
        self.idle_timeout = idle_timeout
        # The connection's response parser, reset per exchange (made by its first one)
        self.parser: ResponseParser | None = None
        self.state = State.NEW
        self.requests = 0
        self.idle_since = 0.0

    # -- the pool's view (pool/base.py PooledConnection)

    def is_available(self) -> bool:
        return self.state is State.IDLE

    def has_expired(self, now: float) -> bool:
        state = self.state
        return state is State.CLOSED or (
            state is State.IDLE and now - self.idle_since >= self.idle_timeout
        )

    def is_idle(self) -> bool:
        return self.state is not State.ACTIVE

    def peer_closed_while_idle(self) -> bool:
        """An idle HTTP/1 connection has nothing to read: readable means the upstream closed
        it (or broke the protocol)."""
        return self.stream.readable_now()


class H1Pool(ConnectionPool[H1Connection]):
    def __init__(
        self,
        cluster: Cluster,
        host: Host,
        siblings: list[H1Pool] | None = None,
        released: trio.lowlevel.ParkingLot | None = None,
    ) -> None:
        self.cluster = cluster
        self.host = host
        self.idle: list[H1Connection] = []
        self.idle_timeout = cluster.config.idle_timeout or DEFAULT_IDLE_TIMEOUT
        self.max_requests = cluster.config.max_request_per_conn
        # The pools of the cluster's other hosts, and one wake-up for them all: the
        # connection limit is the cluster's, so a slot freed on one host serves any.
        self.siblings = siblings if siblings is not None else [self]
        self._released = released if released is not None else trio.lowlevel.ParkingLot()

    async def acquire(self, *, fresh: bool = False) -> tuple[H1Connection, bool]:
        """A connection for one request, and whether it was reused from the idle stack;
        ``fresh``: a new connection even if idle ones wait.

        Raises ``ConnectError``, ``CircuitOpenError`` or ``PoolOverflow``.
        """
        conn = None if fresh else self._pop_idle()
        if conn is not None:
            return conn, True  # no checkpoint: the session yields when it must wait anyway
        cluster = self.cluster
        limit = cluster.max_connections
        if limit is not None and cluster.stats.upstream_cx_active >= limit:
            if not self._close_a_sibling_idle():
                conn = await self._wait_for_idle()
                if conn is not None:
                    return conn, True
        stream = await cluster.connect(self.host, ALPN_H1)
        conn = H1Connection(stream, self.host, self.idle_timeout)
        conn.state = State.ACTIVE
        return conn, False

    def adopt(self, stream: Stream) -> None:
        """Keep a connection made elsewhere (``upstream_protocol: Auto`` over TLS: the one
        whose ALPN answer chose HTTP/1) as idle, for the next request."""
        conn = H1Connection(stream, self.host, self.idle_timeout)
        conn.state = State.IDLE
        conn.idle_since = _monotonic()
        self.idle.append(conn)
        self._released.unpark()

    def take_idle(self) -> H1Connection | None:
        """An idle connection for one request, or ``None`` (then ``acquire``)."""
        return self._pop_idle() if self.idle else None

    def release(self, conn: H1Connection, reusable: bool) -> None:
        """Hand back after a request; ``reusable`` only if the exchange completed cleanly."""
        conn.requests += 1
        if (
            reusable
            and conn.state is State.ACTIVE
            and (not self.max_requests or conn.requests < self.max_requests)
        ):
            conn.state = State.IDLE
            conn.idle_since = _monotonic()
            self.idle.append(conn)
            self._released.unpark()
        else:
            self.close(conn)

    def close(self, conn: H1Connection) -> None:
        if conn.state is not State.CLOSED:
            conn.state = State.CLOSED
            conn.stream.close()  # TLS: close_notify first, if the socket takes it now
            self.cluster.release_connection(self.host)
            self._released.unpark()  # a slot under max_connections opened

    def connections(self) -> list[H1Connection]:
        return self.idle  # the others are with their requests

    def discard(self, conn: H1Connection, idle_timeout: bool = False) -> None:
        if conn.state is State.IDLE:
            self.idle.remove(conn)
        if idle_timeout:
            self.cluster.stats.upstream_cx_idle_timeout += 1
        self.close(conn)

    def _close_a_sibling_idle(self) -> bool:
        """At the limit, an idle connection to another host is a slot this host can use."""
        for pool in self.siblings:
            if pool is not self and pool.idle:
                pool.close(pool.idle.pop(0))  # the oldest
                return True
        return False

    def _pop_idle(self) -> H1Connection | None:
        idle = self.idle
        now = _monotonic()
        while idle:
            conn = idle.pop()
            # Upstreams close idle connections after seconds, not milliseconds: a connection
            # back from its last request a moment ago is not polled (and should its upstream
            # have closed it anyway, the keep-alive race retry covers it).
            if now - conn.idle_since > PEEK_AFTER and conn.peer_closed_while_idle():
                self.close(conn)
                continue
            conn.state = State.ACTIVE
            return conn
        return None

    async def _wait_for_idle(self) -> H1Connection | None:
        """At ``max_connections``: queue (bounded by ``max_pending_requests``) until a
        connection comes back idle or one closes; ``None`` means a new one may be opened."""
        cluster = self.cluster
        max_pending = cluster.max_pending_requests
        if max_pending is not None and cluster.stats.upstream_rq_pending_active >= max_pending:
            cluster.stats.upstream_rq_pending_overflow += 1
            raise PoolOverflow(f"cluster {cluster.name!r}: too many requests pending")
        cluster.stats.upstream_rq_pending_active += 1
        try:
            while True:
                await self._released.park()
                conn = self._pop_idle()
                if conn is not None:
                    return conn
                if cluster.stats.upstream_cx_active < (cluster.max_connections or 0):
                    return None
                if self._close_a_sibling_idle():
                    return None
        finally:
            cluster.stats.upstream_rq_pending_active -= 1
