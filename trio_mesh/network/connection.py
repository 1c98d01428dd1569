"""A downstream connection as network filters see it."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from .stream import Stream

if TYPE_CHECKING:
    from .tls import TlsInfo

# Moving a cancel scope's deadline costs more than the read it follows; so a touch moves it
# only once less than the timeout remains, to timeout x SLACK: the timeout then fires between
# 1x and 1.125x its value after the last activity.
SLACK = 1.125
#: On drain, how long an idle HTTP/1 connection stays open for a request already on its way.
#: Closing it at once races the client's next request: written before our FIN arrives, it
#: is then lost (a reset, no response). Its client sends within microseconds when busy.
DRAIN_IDLE_GRACE = 1.0


class IdleTimer:
    """A cancel scope whose deadline moves forward on every ``touch``; ``None``: no timeout.

    While a request waits on its upstream, the connection is not idle: the HTTP session
    lends the same scope its route deadline (``arm_route``) instead of entering a cancel
    scope of its own per request, which costs more than the rest of the request's
    bookkeeping together. ``route_expired`` tells that expiry apart from an idle one.
    """

    __slots__ = ("deadline", "route_deadline", "scope", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.scope = trio.CancelScope()
        self.timeout = timeout
        self.deadline = math.inf
        self.route_deadline = math.inf
        self.touch()

    def touch(self) -> None:
        timeout = self.timeout
        if timeout is not None and self.route_deadline == math.inf:
            now = trio.current_time()
            remaining = self.deadline - now
            if remaining < timeout or remaining == math.inf:  # near its end, or paused
                self.deadline = self.scope.deadline = now + timeout * SLACK

    def pause(self) -> None:
        """No deadline until the next ``touch`` (something else bounds the wait)."""
        if self.deadline != math.inf and self.route_deadline == math.inf:
            self.deadline = self.scope.deadline = math.inf

    def arm_route(self, deadline: float) -> None:
        """Until ``end_route``, expire at ``deadline`` instead of when idle."""
        self.route_deadline = self.deadline = self.scope.deadline = deadline

    def end_route(self) -> None:
        """Back to the idle clock, counted from now."""
        # Once fired, the route deadline stays, for ``route_expired`` to tell.
        if self.route_deadline != math.inf and not self.scope.cancel_called:
            self.route_deadline = self.deadline = math.inf
            if self.timeout is None:
                self.scope.deadline = math.inf
            else:
                self.touch()

    def shorten(self, timeout: float | None) -> None:
        """Use ``timeout`` if it is shorter than the current one (listener vs filter limits)."""
        if timeout is not None and (self.timeout is None or timeout < self.timeout):
            self.timeout = timeout
            self.deadline = math.inf  # force the move: the new timeout is shorter
            self.touch()

    @property
    def route_expired(self) -> bool:
        """The scope fired on a route deadline (the request's timeout, not idleness)."""
        return self.scope.cancel_called and self.route_deadline != math.inf

    @property
    def expired(self) -> bool:
        return self.scope.cancelled_caught and self.route_deadline == math.inf


class Connection:
    """The accepted stream, its addresses, and its idle timer (the listener applies it).

    ``resume``: set by a filter whose connection outlived its timer's expiry (an HTTP
    session that answered a route timeout with a 504 and keeps the connection): the
    listener runs it next under a fresh timer.
    """

    __slots__ = (
        "stream",
        "remote",
        "local",
        "idle",
        "resume",
        "on_drain",
        "busy",
        "draining",
        "drain_grace",
        "tls",
        "original_dst",
    )

    def __init__(self, stream: Stream, idle_timeout: float | None):
        self.stream = stream
        try:
            self.remote = stream.socket.getpeername()
            self.local = stream.socket.getsockname()
        except OSError:  # the peer may already be gone: keep going, the first read will say so
            self.remote = self.local = None
        self.idle = IdleTimer(idle_timeout)
        self.resume: Callable[[], Awaitable[None]] | None = None
        #: Set by a filter that finishes gracefully on drain (HTTP/2: GOAWAY, then close
        #: once its streams are done); without one, draining is the default below.
        self.on_drain: Callable[[Connection], None] | None = None
        #: A request is in flight (HTTP/1): draining lets it finish, then closes.
        self.busy = False
        self.draining = False
        #: Set by a filter whose connection, idle on drain, may still get a request (an
        #: HTTP/1 keep-alive connection): it closes once idle this long, not at once.
        self.drain_grace: float | None = None
        #: The handshake's outcome on a TLS connection (``stream`` is then a TlsStream).
        self.tls: TlsInfo | None = None
        #: ``use_original_dst``: where the client meant to connect before an iptables
        #: REDIRECT (``network/original_dst.py``), read once at accept; ``None``: not
        #: asked, not redirected, or a loop back to this listener.
        self.original_dst: tuple[str, int] | None = None

    def drain(self) -> None:
        """The server is stopping: finish what is in flight, take nothing new."""
        self.draining = True
        if self.on_drain is not None:
            self.on_drain(self)
        elif self.busy:
            pass  # the request in flight finishes; the filter closes after it
        elif self.drain_grace is not None:
            self.idle.shorten(self.drain_grace)
        else:
            self.idle.scope.cancel()  # between requests: nothing to finish

    def input_waiting(self) -> bool:
        """Bytes not read yet wait on the stream: the client has begun a request."""
        return self.stream.readable_now()
