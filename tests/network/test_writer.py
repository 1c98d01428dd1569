"""FrameWriter: frames from many tasks go out whole, never interleaved."""

from __future__ import annotations

import socket

import trio
import trio.testing

from trio_mesh.network.stream import Stream
from trio_mesh.network.writer import FrameWriter


async def test_large_frames_from_many_tasks_never_interleave():
    a, b = socket.socketpair()
    writer = FrameWriter(Stream(a))
    reader = Stream(b)
    size, tasks = 300_000, 6  # each frame overflows the socket buffer: every send must wait
    got = bytearray()

    async def read_all() -> None:
        while len(got) < size * tasks:
            got.extend(await reader.receive_some(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        for k in range(tasks):
            nursery.start_soon(writer.send, bytes([65 + k]) * size)
    blocks = [bytes(got[i : i + size]) for i in range(0, len(got), size)]
    assert sorted(block[:1] for block in blocks) == [bytes([65 + k]) for k in range(tasks)]
    assert all(block == block[:1] * size for block in blocks)  # each frame whole
    a.close()
    b.close()


class _CountingSocket:
    """A socket whose sends are counted (what reaches the kernel, one entry per call)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: list[int] = []

    def send(self, data: memoryview) -> int:
        n = self.sock.send(data)
        self.sends.append(n)
        return n

    def fileno(self) -> int:
        return self.sock.fileno()


async def test_frames_written_in_one_turn_go_out_in_one_send():
    a, b = socket.socketpair()
    stream = Stream(a)
    counting = _CountingSocket(a)
    stream.socket = counting  # type: ignore[assignment]
    writer = FrameWriter(stream)
    frames = [bytes([65 + k]) * 10 for k in range(10)]
    async with trio.open_nursery() as nursery:
        for frame in frames:
            nursery.start_soon(writer.send, frame)
    assert counting.sends == [100]  # one syscall for the ten
    got = Stream(b)
    data = await got.receive_some(65536)
    blocks = [data[i : i + 10] for i in range(0, len(data), 10)]
    assert sorted(blocks) == frames  # each whole (trio runs a turn's tasks in any order)
    a.close()
    b.close()


async def test_owed_bytes_paid_once_written_or_dropped():
    a, b = socket.socketpair()
    writer = FrameWriter(Stream(a))
    paid: list[int] = []
    writer.on_paid = paid.append
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(writer.send, b"x" * 7, 7)
    assert sum(paid) == 35  # written
    b.close()  # the peer is gone: what follows is dropped, and still paid, once each
    failures = 0
    for _ in range(3):
        try:
            await writer.send(b"y" * 3, 3)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            failures += 1
    assert failures == 3
    assert writer.broken
    assert sum(paid) == 35 + 9
    a.close()


async def test_queue_over_its_cap_makes_writers_wait():
    a, b = socket.socketpair()
    writer = FrameWriter(Stream(a), limit=1000)
    reader = Stream(b)
    big = b"B" * 4_000_000  # more than the socket buffers: the flush waits for the reader
    done: list[int] = []

    async def write(k: int) -> None:
        await writer.send(bytes([97 + k]) * 600)
        done.append(k)

    received = bytearray()
    total = len(big) + 5 * 600
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.send, big)
        await trio.testing.wait_all_tasks_blocked()
        for k in range(5):
            nursery.start_soon(write, k)
        await trio.testing.wait_all_tasks_blocked()
        assert len(done) == 1  # queued behind the flush; the next would pass the cap: waits
        while len(received) < total:
            received += await reader.receive_some(65536)
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert received[: len(big)] == big
    tail = bytes(received[len(big) :])
    blocks = [tail[i : i + 600] for i in range(0, len(tail), 600)]
    assert all(block == block[:1] * 600 for block in blocks)  # each frame whole
    assert sorted(blocks) == [bytes([97 + k]) * 600 for k in range(5)]
    a.close()
    b.close()
