"""A byte relay between two streams: TCP proxying, and HTTP upgrades after a 101."""

from __future__ import annotations

import trio

from .connection import IdleTimer
from .stream import Stream

# One read in flight per direction: the buffer bound, and the backpressure (a slow reader
# stops our reads from the fast writer, so the kernel's windows push back).
CHUNK = 64 * 1024


async def relay(a: Stream, b: Stream, idle: IdleTimer) -> None:
    """Copy both ways until both directions reached EOF, or either side was reset."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pipe, a, b, idle, nursery.cancel_scope)
        nursery.start_soon(_pipe, b, a, idle, nursery.cancel_scope)


async def _pipe(src: Stream, dst: Stream, idle: IdleTimer, scope: trio.CancelScope) -> None:
    """Copy ``src`` to ``dst``; EOF half-closes ``dst``; a reset resets both and stops all."""
    chunks = 0
    try:
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                break
            idle.touch()
            await dst.send_all(data)
            chunks += 1
            if chunks % 16 == 0:  # the stream only yields when it must wait: share the loop
                await trio.lowlevel.checkpoint()
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # A reset on either side ends the whole relay, and the other side learns by an RST.
        dst.abort()
        src.abort()
        scope.cancel()
