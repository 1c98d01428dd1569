"""Whole frames onto one stream from many tasks (multiplexed protocols).

A ``trio.StrictFIFOLock`` checkpoints twice per acquisition, even uncontended, and a task
switch costs more than the send it guards. ``Stream.send_all`` yields only when the kernel's
buffer is full, so most frames go out without any other task getting a turn: then a flag is
all the mutual exclusion needed. A task finding the flag set parks until the writer is done,
in arrival order, so frames never interleave.
"""

from __future__ import annotations

import trio

from .stream import Stream


class FrameWriter:
    __slots__ = ("_busy", "_waiting", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._busy = False
        self._waiting = trio.lowlevel.ParkingLot()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` whole; trio's Broken/ClosedResourceError as the stream raises them."""
        while self._busy:
            await self._waiting.park()
        self._busy = True
        try:
            await self.stream.send_all(data)
        finally:
            self._busy = False
            if self._waiting:
                self._waiting.unpark()
