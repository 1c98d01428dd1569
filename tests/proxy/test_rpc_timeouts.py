"""RPC call timeouts: one timer per upstream connection (no cancel scope per call) still ends
every call at its own deadline, drops late answers, and leaves the connection usable."""

from __future__ import annotations

import random

import trio

from tests.http_helpers import http_config, start_proxy, start_raw_server
from tests.rpc_helpers import ANY_SERVICE, BoltClient, request
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame, ResponseStatus


async def test_concurrent_calls_time_out_each_at_its_own_deadline(nursery):
    held: list[BoltFrame] = []
    connections = 0
    release = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        peer = BoltClient(stream)

        async def answer_late() -> None:
            await release.wait()  # every held call timed out: these answers come too late
            await stream.send_all(
                b"".join(
                    bytes(BOLT.build_response(f.request_id, 0, content=b"late").data) for f in held
                )
            )

        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(answer_late)
                while True:
                    frame = await peer.read()
                    if frame.is_heartbeat:
                        await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    elif bytes(frame.content).startswith(b"slow"):
                        held.append(frame)  # never answered in time
                    else:
                        content = b"echo:" + bytes(frame.content)
                        resp = BOLT.build_response(frame.request_id, 0, content=content)
                        await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass

    up = await start_raw_server(nursery, upstream)
    config = http_config(
        routes=ANY_SERVICE, clusters={"up": up}, proxy={"downstream_protocol": "bolt"}
    )
    _, port = await start_proxy(nursery, config)
    client = await BoltClient.connect(port)
    # Warm the upstream connection, so every timed call below shares it.
    await client.send(request(1, b"warm"))
    assert bytes((await client.read()).content) == b"echo:warm"

    timeouts_ms = [150, 300, 450, 600]
    calls = [(100 + i, timeouts_ms[i % 4]) for i in range(40)]
    random.Random(15).shuffle(calls)  # deadlines of several lengths, interleaved
    timeout_of = dict(calls)
    sent_at: dict[int, float] = {}
    for rid, ms in calls:
        sent_at[rid] = trio.current_time()
        await client.send(request(rid, b"slow%d" % rid, timeout_ms=ms))

    got: list[tuple[int, int, float]] = []  # (request id, status, seconds after sending)
    with trio.fail_after(10):
        for _ in calls:
            resp = await client.read()
            got.append(
                (resp.request_id, resp.status, trio.current_time() - sent_at[resp.request_id])
            )
    assert sorted(rid for rid, _, _ in got) == sorted(timeout_of)
    assert all(status == ResponseStatus.TIMEOUT for _, status, _ in got), got
    # Each at its own deadline: never before it, and the shorter timeouts answered first.
    assert all(elapsed >= timeout_of[rid] / 1000 for rid, _, elapsed in got), got
    order = [timeout_of[rid] for rid, _, _ in got]
    assert order == sorted(order), order

    # The late answers are dropped, and the same upstream connection serves on.
    release.set()
    await client.send(request(2, b"after"))
    with trio.fail_after(5):
        resp = await client.read()
    assert resp.request_id == 2 and bytes(resp.content) == b"echo:after"
    assert connections == 1
