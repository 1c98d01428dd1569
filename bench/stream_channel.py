"""Micro-benchmark: the per-stream channel of an HTTP/2 connection, hand-written or Trio's.

One reader task hands each stream's events to the stream's own task (the design's "stream
ids map to channels"). trio-mesh uses `network/h2.py` `StreamChannel` (a deque and a parked
task); this measures it against `trio.open_memory_channel` for the same pattern: a reader
puts a response's events (headers, data, end) for many streams, one consumer task per
stream takes them. Runs in a few seconds:

    python -m bench.stream_channel
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from trio_mesh.network.h2 import StreamChannel

STREAMS = 200
EVENTS = 3  # a small response: headers, data, end
ROUNDS = 30


async def with_stream_channel(spent: list[float]) -> None:
    channels = [StreamChannel() for _ in range(STREAMS)]

    async def consume(channel: StreamChannel) -> None:
        for _ in range(EVENTS):
            await channel.get()

    async with trio.open_nursery() as nursery:
        for channel in channels:
            nursery.start_soon(consume, channel)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(EVENTS):
            for channel in channels:
                channel.put(i)  # type: ignore[arg-type]
            await trio.lowlevel.checkpoint()
    spent.append(time.perf_counter() - start)


async def with_memory_channel(spent: list[float]) -> None:
    pairs = [trio.open_memory_channel[int](EVENTS) for _ in range(STREAMS)]

    async def consume(receive: trio.MemoryReceiveChannel[int]) -> None:
        for _ in range(EVENTS):
            await receive.receive()

    async with trio.open_nursery() as nursery:
        for _, receive in pairs:
            nursery.start_soon(consume, receive)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(EVENTS):
            for send, _ in pairs:
                send.send_nowait(i)
            await trio.lowlevel.checkpoint()
    spent.append(time.perf_counter() - start)


def measure(fn: Callable[[list[float]], Awaitable[None]]) -> float:
    """Best-of-rounds microseconds per event, from the first put to the last consumer's
    exit (the consumers' tasks are spawned and parked before the clock starts)."""
    spent: list[float] = []
    for _ in range(ROUNDS):
        trio.run(fn, spent)
    return min(spent) / (STREAMS * EVENTS) * 1e6


def main() -> None:
    for name, fn in (
        ("StreamChannel (network/h2.py)", with_stream_channel),
        ("trio.open_memory_channel", with_memory_channel),
    ):
        print(f"{name:32} {measure(fn):6.2f} us per event (best of {ROUNDS})")


if __name__ == "__main__":
    main()
