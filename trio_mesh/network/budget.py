"""Budgets of received bytes the proxy holds: per connection and per listener.

Two counts per budget. ``used`` is every received byte buffered (the gauge). ``admitted`` is
what readers reserved for whole frames: an RPC frame reserves its declared size once its
header is read, before its body is, and keeps it until its answer is written. A reader waits
(does not read) while a frame does not fit, or, between frames, while a budget is spent: the
peer's sends then block in TCP. An admitted frame never waits again, so admitted frames always
complete and no two half-read frames wait on each other. One frame is let in when the
connection (or the listener) has nothing admitted, so a frame up to the protocol's size limit
passes even where it exceeds a budget. Beyond the budget, ``used`` can only hold the bytes of
one read per waiting connection (the read that brought a frame's header).

Responses waiting to be written to a client count too (``queued``, gauge
``downstream_cx_tx_bytes_buffered``, and in ``admitted``: the connection's reader then stops
taking requests, as Envoy stops reading a source over a write buffer's high watermark). They
were read off a shared upstream connection, which must keep being read for everyone else, so a
response cannot be made to wait. ``owe`` takes one when nothing else waits for that client
and the listener has room (or holds no response). One that would take a budget past its limit
while an earlier one still waits for the client (who is not reading) is ``BEHIND``: the caller
closes the connection. One that finds the listener's budget spent by other clients' responses
is ``SPENT``: the caller answers that request with an overflow error instead.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..stats import ListenerStats

# What ``ConnectionBudget.owe`` says of a response.
OWED = 0  # counted: write it, then ``paid``
BEHIND = 1  # the client has not taken the earlier ones: close its connection
SPENT = 2  # other clients' responses fill the listener's budget: refuse this one


class ListenerBudget:
    """The buffered bytes of all connections of one listener; `connection` makes each one's."""

    __slots__ = ("_lot", "admitted", "limit", "per_connection", "queued", "stats", "used")

    def __init__(self, limit: int, per_connection: int, stats: ListenerStats | None = None) -> None:
        self.limit = limit
        self.per_connection = per_connection
        self.stats = stats if stats is not None else ListenerStats()
        self.used = 0
        self.admitted = 0
        self.queued = 0  # response bytes waiting for their clients
        self._lot = trio.lowlevel.ParkingLot()  # readers waiting for room

    def connection(self) -> ConnectionBudget:
        return ConnectionBudget(self)


class ConnectionBudget:
    """One connection's share; every byte counts against the listener's too."""

    __slots__ = ("admitted", "limit", "listener", "queued", "used")

    def __init__(self, listener: ListenerBudget) -> None:
        self.listener = listener
        self.limit = listener.per_connection
        self.used = 0
        self.admitted = 0
        self.queued = 0

    def take(self, n: int) -> None:
        """Count ``n`` received bytes now buffered."""
        self.used += n
        lst = self.listener
        lst.used += n
        lst.stats.downstream_cx_rx_bytes_buffered = lst.used

    def give(self, n: int) -> None:
        """``n`` counted bytes are gone."""
        self.used -= n
        lst = self.listener
        lst.used -= n
        lst.stats.downstream_cx_rx_bytes_buffered = lst.used

    def fits(self, n: int) -> bool:
        """A frame of ``n`` bytes may be admitted now."""
        lst = self.listener
        admitted = self.admitted
        return (not admitted or admitted + n <= self.limit) and (
            not lst.admitted or lst.admitted + n <= lst.limit
        )

    @property
    def full(self) -> bool:
        """A budget is spent: read no new frame."""
        lst = self.listener
        return self.admitted >= self.limit or lst.admitted >= lst.limit

    async def reserve(self, n: int) -> None:
        """Wait until a frame of ``n`` bytes fits, then admit it."""
        if not self.fits(n):
            lst = self.listener
            lst.stats.downstream_flow_control_paused_reading_total += 1
            while not self.fits(n):
                await lst._lot.park()
        self.admit(n)

    def admit(self, n: int) -> None:
        """Admit ``n`` bytes without waiting (a frame already read whole)."""
        self.admitted += n
        self.listener.admitted += n

    def unreserve(self, n: int) -> None:
        """An admitted frame's ``n`` bytes are gone: wake the readers waiting for room."""
        if n:
            self.admitted -= n
            lst = self.listener
            lst.admitted -= n
            if lst._lot:
                lst._lot.unpark_all()

    def owe(self, n: int) -> int:
        """Count a response of ``n`` bytes to be written to this connection, until ``paid``
        (``OWED``), or say why not (``BEHIND``, ``SPENT``; nothing counted)."""
        lst = self.listener
        listener_over = lst.queued and lst.queued + n > lst.limit
        if self.queued and (listener_over or self.queued + n > self.limit):
            return BEHIND
        if listener_over:
            return SPENT
        self.queued += n
        lst.queued += n
        lst.stats.downstream_cx_tx_bytes_buffered = lst.queued
        self.admit(n)
        return OWED

    def paid(self, n: int) -> None:
        """An owed response's ``n`` bytes are written (or dropped)."""
        self.queued -= n
        lst = self.listener
        lst.queued -= n
        lst.stats.downstream_cx_tx_bytes_buffered = lst.queued
        self.unreserve(n)

    async def wait_room_holding(self, holding: Callable[[], int]) -> None:
        """Wait while a budget is spent and this connection still holds something
        (``holding()``): one that holds nothing may always read, so no connection ever waits
        on itself, and what it holds leaves as it is passed on."""
        if self.full and holding():
            lst = self.listener
            lst.stats.downstream_flow_control_paused_reading_total += 1
            while self.full and holding():
                await lst._lot.park()

    async def wait_room(self) -> None:
        """Wait while a budget is spent."""
        if self.full:
            lst = self.listener
            lst.stats.downstream_flow_control_paused_reading_total += 1
            while self.full:
                await lst._lot.park()
