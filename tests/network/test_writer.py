"""FrameWriter: frames from many tasks go out whole, never interleaved."""

from __future__ import annotations

import socket

import trio

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
