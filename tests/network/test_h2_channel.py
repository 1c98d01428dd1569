"""The per-stream channel of an HTTP/2 connection is bounded (issue 15, design: stream ids map
to bounded channels).

A peer that sends one-byte DATA frames to a stream whose task is not taking them (it waits on
the other side of the proxy) stays inside the window, yet without a bound every frame would
queue an event. The connection's reader must stop reading instead, and go on, losing nothing,
once the stream's task takes the events.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import trio
import trio.testing

from trio_mesh.network.h2 import CHANNEL_EVENTS, H2Endpoint, StreamChannel
from trio_mesh.network.stream import Stream
from trio_mesh.protocols.http2 import Data, H2Connection, RequestHeaders

# One byte each: inside the default 64 KiB window, and more than one read (64 KiB of wire,
# 10 bytes a frame) carries past the bound.
FRAMES = 20_000


def _client_bytes() -> bytes:
    """A client's whole conversation: preface, one request, FRAMES one-byte DATA frames."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "a")],
    )
    for i in range(FRAMES):
        conn.send_data(1, b"x", end_stream=i == FRAMES - 1)
    return conn.data_to_send()


async def test_a_stream_channel_stops_the_reader_at_its_bound_and_loses_nothing() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    server.setblocking(False)
    codec = H2Connection(client_side=False)
    codec.initiate()
    started = trio.Event()
    channels: list[StreamChannel] = []

    def on_request(sid: int, event: RequestHeaders) -> None:
        channels.append(ep.channels[sid])
        started.set()

    ep = H2Endpoint(Stream(server), codec, on_request=on_request)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ep.run)
        wire = _client_bytes()
        client_stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
        nursery.start_soon(client_stream.send_all, wire)
        await started.wait()
        # Everything the client sent is in the kernel's buffers or read: wait until the
        # reader can do no more (it is parked on the full channel, not on the socket).
        await trio.testing.wait_all_tasks_blocked()
        channel = channels[0]
        queued = len(channel.events)
        # Bounded: the limit plus what the one read that crossed it carried (a read is at most
        # 64 KiB, a one-byte DATA frame is 10 bytes on the wire).
        assert CHANNEL_EVENTS <= queued <= CHANNEL_EVENTS + 65536 // 10
        assert queued < FRAMES  # without the bound, every frame would be queued here
        assert channel.reader is not None  # the reader waits for this channel
        # The stream's task takes the events: the reader goes on and nothing is lost.
        got = 0
        while True:
            event = await channel.get()
            assert type(event) is Data
            got += len(event.data)
            ep.consumed(1, event.flow_length)
            if event.end_stream:
                break
        assert got == FRAMES
        ep.close()
        nursery.cancel_scope.cancel()
    client.close()
