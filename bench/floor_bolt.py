"""trio-floor-bolt: the least a correct multiplexed SOFA bolt v1 relay does, on trio-mesh's
runtime.

Every downstream connection's requests share one upstream connection: each request gets a
fresh id upstream (rewritten in place), and the upstream reader writes each response to the
connection it belongs to, with the request's own id back (what one read brought for a client,
in one write). Frames are cut by their header's
lengths; nothing else is decoded (no routing). Heartbeats are requests like any other; oneway
requests get no id of their own. Bounded: at most ``MAX_PENDING`` calls in flight per
connection and ``WRITE_BUDGET`` bytes queued per socket. The upstream closing ends the relay.
``python -m bench.floor_bolt --port P --upstream HOST:PORT``.
"""

from __future__ import annotations

import functools
import itertools
import struct

import trio

from trio_mesh.network.stream import Stream

from .floor_net import Address, connect, main, serve

REQUEST_HEAD, RESPONSE_HEAD = 22, 20  # bolt v1 header sizes
TYPE_REQUEST = 1  # 0 response, 1 request, 2 oneway
MAX_FRAME = 16 << 20
MAX_PENDING = 1024
WRITE_BUDGET = 256 << 10
_YIELD_EVERY = 16  # reads of data always ready between checkpoints: others must get a turn
_lengths = struct.Struct(">HHI").unpack_from  # class, header and content lengths
_id = struct.Struct(">I")


class _Writer:
    """One socket's writes, in order, from any task; a writer over budget waits."""

    def __init__(self, stream: Stream) -> None:
        self.stream, self.queued, self.flushing = stream, bytearray(), False
        self.drained = trio.Event()

    async def write(self, data: bytes | bytearray) -> None:
        self.queued += data
        if self.flushing:  # the task sending now sends this too
            while len(self.queued) > WRITE_BUDGET:
                await self.drained.wait()
            return
        self.flushing = True
        try:
            while self.queued:
                data, self.queued = self.queued, bytearray()
                await self.stream.send_all(data)
                self.drained.set()
                self.drained = trio.Event()
        finally:
            self.flushing = False


class _Down:
    def __init__(self, stream: Stream) -> None:
        self.writer, self.pending, self.room = _Writer(stream), 0, trio.Event()
        self.closed = False


def _frames(buf: bytearray, head: int, offset: int) -> list[bytearray]:
    """The whole frames at the start of ``buf`` (removed from it); ``offset``: where the
    three lengths sit in the header."""
    frames, start = [], 0
    while len(buf) - start >= head:
        if buf[start] != 1:
            raise ValueError("not bolt v1")
        n = head + sum(_lengths(buf, start + offset))
        if n > MAX_FRAME:
            raise ValueError("frame too large")
        if len(buf) - start < n:
            break
        frames.append(buf[start : start + n])
        start += n
    del buf[:start]
    return frames


class Relay:
    def __init__(self, up: Stream) -> None:
        self.up, self.upstream = up, _Writer(up)
        self.calls: dict[int, tuple[_Down, bytes]] = {}  # upstream id -> connection, its id
        self.ids = itertools.count(1)

    async def downstream(self, stream: Stream) -> None:
        down, buf, reads = _Down(stream), bytearray(), 0
        try:
            while data := await stream.receive_some():
                buf += data
                frames = _frames(buf, REQUEST_HEAD, 14)
                for frame in frames:
                    if frame[1] == TYPE_REQUEST:
                        uid = next(self.ids) & 0xFFFFFFFF
                        self.calls[uid] = (down, bytes(frame[5:9]))
                        frame[5:9] = _id.pack(uid)
                        down.pending += 1
                if frames:
                    await self.upstream.write(b"".join(frames))
                while down.pending >= MAX_PENDING:
                    await down.room.wait()
                reads += 1
                if reads % _YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
        except ValueError:
            pass  # not bolt v1, or too large: close
        finally:
            down.closed = True  # responses still to come for it are dropped

    async def upstream_reader(self) -> None:
        buf, reads = bytearray(), 0
        while data := await self.up.receive_some():
            buf += data
            out: dict[_Down, bytearray] = {}  # one write per client per read
            for frame in _frames(buf, RESPONSE_HEAD, 12):
                call = self.calls.pop(_id.unpack_from(frame, 5)[0], None)
                if call is None:
                    continue
                down, frame[5:9] = call[0], call[1]
                down.pending -= 1
                if down.pending == MAX_PENDING - 1:
                    down.room.set()
                    down.room = trio.Event()
                if not down.closed:
                    out.setdefault(down, bytearray()).extend(frame)
            for down, frames in out.items():
                try:
                    await down.writer.write(frames)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # that client is gone; the others are not
            reads += 1
            if reads % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()


async def run(
    port: int, upstream: Address, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    up = await connect(upstream)
    relay = Relay(up)
    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(functools.partial(serve, port, relay.downstream))
            task_status.started(bound)
            await relay.upstream_reader()
            nursery.cancel_scope.cancel()  # the upstream is gone: so is the relay
    finally:
        up.close()


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
