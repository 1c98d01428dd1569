"""Whole frames onto one stream from many tasks (multiplexed protocols).

A ``trio.StrictFIFOLock`` checkpoints twice per acquisition, even uncontended, and a task
switch costs more than the send it guards. Sends are tried first and wait only when the
kernel's buffer is full, so most frames go out without any other task getting a turn: then a
flag is all the mutual exclusion needed. A task finding the flag set parks until the writer
is done.

A frame goes out whole or the stream is reset: a send cancelled part-way (a request's timeout,
say) would leave half a frame that every later frame follows, so then the stream is aborted
and every later send fails; the peer sees a reset, not garbage.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .stream import Stream, _mapped

_wait_writable = trio.lowlevel.wait_writable


class FrameWriter:
    __slots__ = ("_busy", "_waiting", "broken", "on_block", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.broken = False
        #: Called when a send must wait for the peer to read (the slow path only).
        self.on_block: Callable[[], None] | None = None
        self._busy = False
        self._waiting = trio.lowlevel.ParkingLot()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` whole; trio's Broken/ClosedResourceError when the stream cannot take
        it (or was reset because an earlier frame was cut short)."""
        while self._busy:
            await self._waiting.park()
        if self.broken:
            raise trio.BrokenResourceError("an earlier frame was cut short: the stream is reset")
        self._busy = True
        sock = self.stream.socket
        view = memoryview(data)
        total = len(view)
        sent = 0
        try:
            while sent < total:
                try:
                    sent += sock.send(view[sent:] if sent else view)
                except BlockingIOError:
                    if self.on_block is not None:
                        self.on_block()
                    await _wait_writable(sock)
                except OSError as exc:
                    raise _mapped(exc) from exc
        except BaseException:
            self.broken = True
            if 0 < sent < total:
                self.stream.abort()
            raise
        finally:
            view.release()
            self._busy = False
            if self._waiting:
                self._waiting.unpark()
