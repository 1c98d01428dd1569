"""What every pool asks of its connections, and the reaping the pools share.

A pool chooses and drops connections by asking them (httpcore's interface), never by reading
their codecs: ``is_available()`` (can take one more request now), ``has_expired(now)``
(closed, failed, told to go away, or idle past its timeout: to be dropped) and ``is_idle()``
(no request in flight). ``now`` is ``time.monotonic()``, read once per reaping pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import trio

from ..upstream.cluster import Cluster


class PooledConnection(Protocol):
    def is_available(self) -> bool: ...
    def has_expired(self, now: float) -> bool: ...
    def is_idle(self) -> bool: ...


C = TypeVar("C", bound=PooledConnection)


class NurseryOwner(Protocol):
    """Where a pool's connection tasks run (its cluster's nursery, pool/cluster.py)."""

    async def nursery(self) -> trio.Nursery: ...


class ConnectionPool(Generic[C]):
    """The part of a pool that is the same for every connection kind: dropping what expired,
    and closing the idle connections of a pool whose host or cluster left."""

    cluster: Cluster

    def connections(self) -> Sequence[C]:
        """The connections the pool holds (for HTTP/1: the idle ones; the others are with
        their requests)."""
        raise NotImplementedError

    def discard(self, conn: C, idle_timeout: bool = False) -> None:
        """Close ``conn`` now and forget it (``idle_timeout``: counted as one)."""
        raise NotImplementedError

    def reap(self, now: float) -> None:
        """Drop the idle connections that expired."""
        for conn in list(self.connections()):
            if conn.is_idle() and conn.has_expired(now):
                self.discard(conn, idle_timeout=True)

    def close_idle(self) -> None:
        """Close every connection with no request in flight (the pool is retiring)."""
        for conn in list(self.connections()):
            if conn.is_idle():
                self.discard(conn)

    def close_all(self) -> None:
        for conn in list(self.connections()):
            self.discard(conn)

    def has_connections(self) -> bool:
        return bool(self.connections())
