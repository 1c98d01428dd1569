"""Issue 14 follow-up, finding 1: RPC responses waiting for a client count against its budgets.

A client that sends tiny requests and never reads must not make the proxy hold every big
response the provider sends back: over budget its connection stops being read, and a response
that would take it past the budget while an earlier one still waits for the client closes the
connection (counted). The shared upstream connection keeps being read: a client beside it on
the same pooled connection is served all along. Real sockets, everything in one Trio run, so
``wait_all_tasks_blocked`` is the "nothing more happens" state asserted on.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests import dubbo_frames_data as dubbo_data
from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import ANY_SERVICE, BoltClient, request
from trio_mesh.protocols.xprotocol import Codec
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus
from trio_mesh.protocols.xprotocol.dubbo import DUBBO

MiB = 1024 * 1024
SIZE = 4 * MiB  # each response: four times the default per-connection budget (1 MiB)


class BigAnswers:
    """A provider answering every request at once with a ``size`` response; counts its
    connections (the proxy's pooled ones) and the requests it got."""

    def __init__(self, codec: Codec, size: int) -> None:
        self.codec = codec
        self.size = size
        self.connections = 0
        self.received = 0

    def answer(self, rid: int) -> bytes:
        if self.codec is BOLT:
            return bytes(BOLT.build_response(rid, 0, content=b"y" * self.size).data)
        return df.value_response(rid, b"y" * self.size)

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        peer = BoltClient(stream)
        peer.codec = self.codec
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    continue
                self.received += 1
                await stream.send_all(self.answer(frame.request_id))
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def request_bytes(codec: Codec, rid: int) -> bytes:
    if codec is BOLT:
        return bytes(request(rid, b"x", timeout_ms=60_000).data)
    wire = bytearray(dubbo_data.SAY_HELLO)
    df.set_request_id(wire, rid)
    return bytes(wire)


async def setup(nursery: trio.Nursery, codec: Codec, size: int = SIZE, listener=None):
    provider = BigAnswers(codec, size)
    up = await start_raw_server(nursery, provider.serve)
    config = http_config(
        ANY_SERVICE, {"up": up}, proxy={"downstream_protocol": codec.name}, listener=listener
    )  # default budgets: 1 MiB per connection, 16 MiB per listener
    server, port = await start_proxy(nursery, config)
    return provider, server.listeners["ingress"].stats, port


async def client(port: int, codec: Codec, rcvbuf: int | None = None) -> BoltClient:
    c = await BoltClient.connect(port)
    c.codec = codec
    if rcvbuf is not None:
        # What the proxy sends it stays in the proxy, not in this test's kernel buffers.
        c.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return c


async def ask(c: BoltClient, rid: int, size: int = SIZE) -> None:
    await c.stream.send_all(request_bytes(c.codec, rid))
    frame = await c.read()
    assert frame.request_id == rid and len(frame.data) >= size


@pytest.mark.parametrize("codec", [BOLT, DUBBO], ids=["bolt", "dubbo"])
async def test_a_client_that_never_reads_its_big_responses_is_closed_not_buffered(nursery, codec):
    # The attacker's probe: 40 tiny requests, 4 MiB answers, the client never reads.
    provider, stats, port = await setup(nursery, codec)
    with trio.fail_after(60):
        bystander = await client(port, codec)
        await ask(bystander, 1)  # the pooled upstream connection is open, shared by both
        attacker = await client(port, codec, rcvbuf=4096)
        await attacker.stream.send_all(b"".join(request_bytes(codec, i + 1) for i in range(40)))
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)

        # One response was taken (nothing else waited for that client); the next would have
        # taken the connection past its budget while the first still waited: closed, counted.
        assert stats.downstream_cx_tx_buffer_overflow == 1
        assert stats.downstream_cx_tx_bytes_buffered == 0
        assert stats.downstream_cx_rx_bytes_buffered == 0
        assert provider.received >= 3  # the upstream was read on: its answers came in
        with pytest.raises(trio.BrokenResourceError):  # reset: the proxy holds nothing more
            while await attacker.stream.receive_some(MiB):
                pass

        # The client beside it, on the same upstream connection, is served as before.
        for rid in range(2, 6):
            await ask(bystander, rid)
    assert provider.connections == 1
    assert stats.downstream_cx_tx_buffer_overflow == 1


async def test_a_response_waiting_for_the_client_pauses_reading_until_it_is_taken(nursery):
    # 8 MiB: more than the kernel's buffers on both sides take, so the proxy holds some.
    size = 8 * MiB
    # Room in the listener's budget for the other client's answer too.
    provider, stats, port = await setup(
        nursery, BOLT, size, {"listener_buffer_limit_bytes": 32 * MiB}
    )
    with trio.fail_after(60):
        slow = await client(port, BOLT, rcvbuf=256 * 1024)
        await slow.stream.send_all(request_bytes(BOLT, 1))
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        # Its answer waits for the client: counted, and over the 1 MiB budget...
        owed = stats.downstream_cx_tx_bytes_buffered
        assert size < owed < size + 100
        paused = stats.downstream_flow_control_paused_reading_total

        # ...so what it sends next is not read: no more responses come to be owed.
        await slow.stream.send_all(request_bytes(BOLT, 2))
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        assert provider.received == 1
        assert stats.downstream_flow_control_paused_reading_total == paused + 1
        assert stats.downstream_cx_tx_bytes_buffered == owed

        # Another client is served meanwhile, on the same upstream connection.
        other = await client(port, BOLT)
        await ask(other, 7, size)

        # The slow client reads at last: the rest is read and answered, nothing is lost.
        got = []
        for _ in range(2):
            frame = await slow.read()
            assert len(frame.data) >= size
            got.append(frame.request_id)
    assert got == [1, 2]
    assert provider.received == 3 and provider.connections == 1
    assert stats.downstream_cx_tx_buffer_overflow == 0
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_tx_bytes_buffered == 0


async def test_clients_that_never_read_cannot_hold_more_than_the_listener_budget(nursery):
    # One response each is all a client holding nothing may make the proxy keep; past the
    # listener's budget, a response is refused (the codec's overflow error) instead of held.
    size = 8 * MiB
    listener = {"listener_buffer_limit_bytes": 20 * MiB}
    provider, stats, port = await setup(nursery, BOLT, size, listener)
    with trio.fail_after(60):
        stalled = []
        for rid in (1, 2):  # 8 + 8 MiB owed: within 20 MiB
            c = await client(port, BOLT, rcvbuf=256 * 1024)
            await c.stream.send_all(request_bytes(BOLT, rid))
            stalled.append(c)
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        owed = stats.downstream_cx_tx_bytes_buffered
        assert 2 * size < owed < 2 * size + 200

        # A third 8 MiB would take the listener past 20 MiB: this client gets an error, is
        # not closed, and nothing more is held.
        third = await client(port, BOLT)
        await third.stream.send_all(request_bytes(BOLT, 3))
        refused = await third.read()
        assert refused.request_id == 3
        assert refused.status == ResponseStatus.SERVER_THREADPOOL_BUSY
        assert stats.downstream_rq_tx_buffer_overflow == 1
        assert stats.downstream_cx_tx_bytes_buffered == owed

        # Once a stalled client takes its response, there is room again.
        frame = await stalled[0].read()
        assert frame.request_id == 1 and len(frame.data) >= size
        await ask(third, 4, size)
    assert stats.downstream_cx_tx_buffer_overflow == 0
    assert provider.connections == 1


async def test_a_client_that_takes_nothing_of_its_response_is_closed_when_idle(nursery):
    # The one response a client may hold does not stay forever: waiting on the client, its
    # connection is idle, and the idle timeout (90 s by default, 1 s here) closes it.
    size = 8 * MiB
    listener = {"connection_idle_timeout": "1s"}
    provider, stats, port = await setup(nursery, BOLT, size, listener)
    with trio.fail_after(20):
        c = await client(port, BOLT, rcvbuf=256 * 1024)
        await c.stream.send_all(request_bytes(BOLT, 1))
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        assert stats.downstream_cx_tx_bytes_buffered > size
        # Nothing to wait on but the proxy's own timer: look every 50 ms.
        while stats.downstream_cx_tx_bytes_buffered:
            await trio.sleep(0.05)
        assert stats.downstream_cx_idle_timeout == 1
        got = 0
        with pytest.raises(trio.BrokenResourceError):  # reset, short of the whole response
            while data := await c.stream.receive_some(MiB):
                got += len(data)
        assert got < size
    assert provider.received == 1
