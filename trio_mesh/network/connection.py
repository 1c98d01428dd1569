"""A downstream connection as network filters see it."""

from __future__ import annotations

import math

import trio

from .stream import Stream

# Moving a cancel scope's deadline costs more than the read it follows; so a touch moves it
# only once less than the timeout remains, to timeout x SLACK: the timeout then fires between
# 1x and 1.125x its value after the last activity.
SLACK = 1.125


class IdleTimer:
    """A cancel scope whose deadline moves forward on every ``touch``; ``None``: no timeout."""

    __slots__ = ("deadline", "scope", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.scope = trio.CancelScope()
        self.timeout = timeout
        self.deadline = math.inf
        self.touch()

    def touch(self) -> None:
        timeout = self.timeout
        if timeout is not None:
            now = trio.current_time()
            remaining = self.deadline - now
            if remaining < timeout or remaining == math.inf:  # near its end, or paused
                self.deadline = self.scope.deadline = now + timeout * SLACK

    def pause(self) -> None:
        """No deadline until the next ``touch`` (something else bounds the wait)."""
        if self.deadline != math.inf:
            self.deadline = self.scope.deadline = math.inf

    def shorten(self, timeout: float | None) -> None:
        """Use ``timeout`` if it is shorter than the current one (listener vs filter limits)."""
        if timeout is not None and (self.timeout is None or timeout < self.timeout):
            self.timeout = timeout
            self.deadline = math.inf  # force the move: the new timeout is shorter
            self.touch()

    @property
    def expired(self) -> bool:
        return self.scope.cancelled_caught


class Connection:
    """The accepted stream, its addresses, and its idle timer (the listener applies it)."""

    __slots__ = ("stream", "remote", "local", "listener_name", "idle")

    def __init__(self, stream: Stream, listener_name: str, idle_timeout: float | None):
        self.stream = stream
        self.listener_name = listener_name
        try:
            self.remote = stream.socket.getpeername()
            self.local = stream.socket.getsockname()
        except OSError:  # the peer may already be gone: keep going, the first read will say so
            self.remote = self.local = None
        self.idle = IdleTimer(idle_timeout)
