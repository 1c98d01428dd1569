"""Issue 14 finding 4: the RPC bytes a listener buffers are bounded, per connection and in all.

Real sockets: raw bolt clients, a raw provider that reads frames and holds them (answering
only once told to). Over budget the proxy stops reading, so the client's send blocks; once the
provider answers, everything completes (backpressure, not loss). Readiness is
``wait_all_tasks_blocked``: the proxy, the clients and the provider run in this one Trio run,
so "everyone is blocked" is the state to assert on.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests import bolt_frames as frames
from tests import dubbo_frames_data as dubbo_data
from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import ANY_SERVICE, BoltClient
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.network.relay import CHUNK
from trio_mesh.protocols.xprotocol import FrameTooLarge
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.protocols.xprotocol.dubbo import DUBBO

MiB = 1024 * 1024
HEADERS = {"service": frames.SERVICE, "sofa_head_method_name": "echo"}


def bolt_config(port: int, *, proxy: dict | None = None, listener: dict | None = None):
    return http_config(
        routes=ANY_SERVICE,
        clusters={"up": port},
        proxy={"downstream_protocol": "bolt", **(proxy or {})},
        listener=listener,
    )


class HoldingProvider:
    """A bolt provider that reads every frame and answers none until ``release`` is set; then
    it answers each (held or new) with the length of its content."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.received = 0

    async def start(self, nursery: trio.Nursery) -> int:
        return await start_raw_server(nursery, self._serve)

    async def _serve(self, stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        held: list = []
        lock = trio.Lock()

        async def answer(frame) -> None:
            resp = BOLT.build_response(frame.request_id, 0, content=b"len:%d" % frame.content_len)
            async with lock:
                await stream.send_all(bytes(resp.data))

        async def on_release() -> None:
            await self.release.wait()
            while held:
                await answer(held.pop(0))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(on_release)
                while True:
                    frame = await peer.read()
                    self.received += 1
                    if self.release.is_set() and not held:
                        await answer(frame)
                    else:
                        held.append(frame)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def connect(port: int, sndbuf: int | None = 16 * 1024) -> BoltClient:
    client = await BoltClient.connect(port)
    if sndbuf is not None:
        # What the proxy does not read stays in this test, not in the kernel's buffers.
        client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return client


async def send_counting(client: BoltClient, data: bytes, progress: list[int], i: int) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        await client.stream.send_all(view[start : start + CHUNK])
        progress[i] = start + len(view[start : start + CHUNK])


def request_bytes(rid: int, content_size: int) -> bytes:
    return bytes(BOLT.build_request(rid, HEADERS, b"x" * content_size, codec=11).data)


async def test_half_sent_big_frames_stop_the_readers_within_the_listener_budget(nursery):
    provider = HoldingProvider()
    provider.release.set()  # answers at once: only the budgets hold frames back
    up = await provider.start(nursery)
    budget = {"per_connection_buffer_limit_bytes": MiB, "listener_buffer_limit_bytes": 4 * MiB}
    server, port = await start_proxy(nursery, bolt_config(up, listener=budget))
    stats = server.listeners["ingress"].stats
    n = 10
    # 1.5 MiB each: two fit the listener's 4 MiB, a third does not; each is over the
    # per-connection 1 MiB, which lets one frame in on a connection that holds nothing else.
    wires = [request_bytes(i + 1, 3 * MiB // 2) for i in range(n)]
    clients = [await connect(port) for _ in range(n)]
    sent = [0] * n
    go = trio.Event()
    answers: dict[int, bytes] = {}

    async def client(i: int) -> None:
        wire = wires[i]
        await send_counting(clients[i], wire[:-1], sent, i)  # all but the last byte
        await go.wait()
        await clients[i].stream.send_all(wire[-1:])
        resp = await clients[i].read()
        assert resp.is_response and resp.status == 0 and resp.request_id == i + 1
        answers[i] = bytes(resp.content)

    with trio.fail_after(60):
        async with trio.open_nursery() as clients_nursery:
            for i in range(n):
                clients_nursery.start_soon(client, i)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)

            # Two frames admitted and read to their last byte but one; the eight others
            # wait, unread: their clients' sends are blocked.
            whole = [i for i in range(n) if sent[i] == len(wires[i]) - 1]
            assert len(whole) == 2
            assert all(sent[i] < len(wires[i]) - 1 for i in range(n) if i not in whole)
            buffered = stats.downstream_cx_rx_bytes_buffered
            # The two admitted frames, plus at most the read that brought each other header.
            assert 2 * len(wires[0]) <= buffered <= 4 * MiB + (n - 2) * CHUNK
            assert stats.downstream_flow_control_paused_reading_total >= n - 2
            assert provider.received == 0

            go.set()  # backpressure, not loss: every frame goes through once sent whole

    assert answers == {i: b"len:%d" % (3 * MiB // 2) for i in range(n)}
    assert provider.received == n
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_rx_bytes_buffered == 0  # every byte given back


async def test_forty_connections_holding_8_mib_frames_stay_within_the_default_budget(nursery):
    # The probe, with the default budgets (16 MiB for the listener).
    provider = HoldingProvider()
    provider.release.set()
    up = await provider.start(nursery)
    server, port = await start_proxy(nursery, bolt_config(up))
    stats = server.listeners["ingress"].stats
    n = 40
    wire = request_bytes(9, 8 * MiB)  # the same frame on every connection
    clients = [await connect(port) for _ in range(n)]
    sent = [0] * n
    with trio.fail_after(60):
        async with trio.open_nursery() as senders:
            for i in range(n):
                senders.start_soon(send_counting, clients[i], wire[:-1], sent, i)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            # One frame fits 16 MiB, a second does not: the 39 other clients are blocked.
            assert sum(s == len(wire) - 1 for s in sent) == 1
            assert stats.downstream_cx_rx_bytes_buffered <= 16 * MiB + n * CHUNK
            senders.cancel_scope.cancel()


async def test_pipelined_big_frames_to_a_provider_that_never_answers_are_not_buffered(nursery):
    provider = HoldingProvider()
    up = await provider.start(nursery)
    server, port = await start_proxy(nursery, bolt_config(up))  # default budgets
    stats = server.listeners["ingress"].stats
    frames_total = 100
    wire = request_bytes(7, 4 * MiB)
    c = await connect(port, sndbuf=None)  # a small one would make 400 MiB slow to send
    sent = [0]

    async def pipeline() -> None:
        for k in range(frames_total):
            await c.stream.send_all(wire)
            sent[0] = k + 1

    answered = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as pipe:
            pipe.start_soon(pipeline)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)

            # One 4 MiB frame (over the 1 MiB per-connection budget, let in alone) is at
            # the provider; the proxy reads nothing more, so the client is blocked.
            assert provider.received == 1
            assert sent[0] < frames_total
            assert len(wire) <= stats.downstream_cx_rx_bytes_buffered <= len(wire) + CHUNK
            assert stats.downstream_flow_control_paused_reading_total >= 1

            provider.release.set()
            while answered < frames_total:
                resp = await c.read()
                assert resp.status == 0 and bytes(resp.content) == b"len:%d" % (4 * MiB)
                answered += 1
    assert provider.received == frames_total
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_rx_bytes_buffered == 0


async def test_frame_over_the_size_limit_closes_before_its_body_is_buffered(nursery):
    provider = HoldingProvider()
    up = await provider.start(nursery)
    proxy = {"xprotocol": {"max_frame_bytes": MiB}}
    server, port = await start_proxy(nursery, bolt_config(up, proxy=proxy))
    stats = server.listeners["ingress"].stats
    wire = request_bytes(3, 2 * MiB)
    c = await connect(port)
    with trio.fail_after(10):
        try:
            await c.stream.send_all(wire)
        except trio.BrokenResourceError:
            pass  # closed while we sent: the point
        assert await c.stream.receive_some(100) == b""
    assert provider.received == 0
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_rx_bytes_buffered == 0


# -- the codec side: sizes known from the header, frames taken without a copy ---------------


@pytest.mark.parametrize(
    ("codec", "wire"),
    [(BOLT, frames.CLIENT_REQUEST), (DUBBO, dubbo_data.SAY_HELLO)],
    ids=["bolt", "dubbo"],
)
def test_frame_length_from_the_header_and_take_frame_without_a_copy(codec, wire):
    assert codec.frame_length(wire[:10]) is None  # the header is not whole yet
    assert codec.frame_length(wire[:30]) == len(wire)  # known before the body is there
    with pytest.raises(FrameTooLarge):
        codec.frame_length(wire[:30], max_frame_size=len(wire) - 1)
    buf = bytearray(wire)
    frame, used = codec.take_frame(buf)
    assert used == len(wire) and frame.data is buf  # the buffer became the frame's bytes
    copied, _ = codec.decode(buf)
    assert copied.data is not buf and copied.data == buf  # decode still copies
    longer = bytearray(wire + wire[:5])
    frame, used = codec.take_frame(longer)
    assert frame.data is not longer and bytes(frame.data) == wire  # more than one frame: a copy


def test_budget_keys_must_be_positive():
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "per_connection_buffer_limit_bytes": 0,
                        "listener_buffer_limit_bytes": "lots",
                    }
                ]
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert "servers[0].listeners[0].per_connection_buffer_limit_bytes" in text
    assert "servers[0].listeners[0].listener_buffer_limit_bytes" in text


async def test_a_frame_sent_slowly_loses_its_budget_and_the_others_go_on(nursery):
    provider = HoldingProvider()
    provider.release.set()
    up = await provider.start(nursery)
    config = bolt_config(
        up,
        proxy={"request_header_timeout": "500ms"},
        listener={"listener_buffer_limit_bytes": MiB},
    )
    server, port = await start_proxy(nursery, config)
    stats = server.listeners["ingress"].stats
    wire = request_bytes(1, MiB)
    with trio.fail_after(10):
        slow = await connect(port)
        await slow.stream.send_all(wire[:4096])  # its header claims the listener's budget
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert stats.downstream_cx_rx_bytes_buffered == len(wire)
        victim = await connect(port)
        await victim.stream.send_all(request_bytes(2, 100))  # waits for room...
        # ...which comes when the slow frame's time is up: that connection is closed.
        assert await slow.stream.receive_some(100) == b""
        resp = await victim.read()
        assert resp.request_id == 2 and resp.status == 0
        assert bytes(resp.content) == b"len:100"
