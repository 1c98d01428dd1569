"""Budgets of received bytes the proxy holds: per connection and per listener.

A reader takes from its connection's budget before it buffers (an RPC frame reserves its whole
declared size once its header is read, so an admitted frame can always be read to its end and
no two half-read frames wait on each other) and gives back once the bytes are gone (the frame's
response written). While a budget is spent the reader does not read: the peer's sends block in
TCP (or, on HTTP/2, its flow-control window stays closed). One frame is always let in when the
connection, or the listener, holds nothing, so a frame up to the protocol's size limit passes
even where it exceeds a budget.
"""

from __future__ import annotations

import trio

from ..stats import ListenerStats


class ListenerBudget:
    """The buffered bytes of all connections of one listener; `connection` makes each one's."""

    __slots__ = ("_lot", "limit", "per_connection", "stats", "used")

    def __init__(self, limit: int, per_connection: int, stats: ListenerStats | None = None) -> None:
        self.limit = limit
        self.per_connection = per_connection
        self.stats = stats if stats is not None else ListenerStats()
        self.used = 0
        self._lot = trio.lowlevel.ParkingLot()  # readers waiting for room

    def connection(self) -> ConnectionBudget:
        return ConnectionBudget(self)


class ConnectionBudget:
    """One connection's share; every byte taken counts against the listener's too."""

    __slots__ = ("limit", "listener", "used")

    def __init__(self, listener: ListenerBudget) -> None:
        self.listener = listener
        self.limit = listener.per_connection
        self.used = 0

    def fits(self, n: int) -> bool:
        """``n`` more bytes stay within both budgets (or the one holding nothing)."""
        lst = self.listener
        used = self.used
        return (not used or used + n <= self.limit) and (not lst.used or lst.used + n <= lst.limit)

    @property
    def over(self) -> bool:
        """A budget is spent: the reader waits before it reads more."""
        lst = self.listener
        return self.used > self.limit or lst.used > lst.limit

    def take(self, n: int) -> None:
        """Count ``n`` bytes (already buffered, or reserved after `fits`)."""
        self.used += n
        lst = self.listener
        lst.used += n
        lst.stats.downstream_cx_rx_bytes_buffered = lst.used

    def give(self, n: int) -> None:
        """``n`` bytes are gone: wake the readers waiting for room."""
        if n:
            self.used -= n
            lst = self.listener
            lst.used -= n
            lst.stats.downstream_cx_rx_bytes_buffered = lst.used
            if lst._lot:
                lst._lot.unpark_all()

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` bytes fit, then take them."""
        if not self.fits(n):
            self.listener.stats.downstream_flow_control_paused_reading_total += 1
            while not self.fits(n):
                await self.listener._lot.park()
        self.take(n)

    async def wait_room(self) -> None:
        """Wait while a budget is spent."""
        if self.over:
            self.listener.stats.downstream_flow_control_paused_reading_total += 1
            while self.over:
                await self.listener._lot.park()
