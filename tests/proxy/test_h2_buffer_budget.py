"""Issue 14 finding 4, HTTP/2: request bodies waiting on a slow upstream are bounded by the
connection's flow-control window and its buffer budget, and the bytes kept for a retry (whose
credit already went back to the client) only within the budgets."""

from __future__ import annotations

import hashlib
import os

import trio
import trio.testing

from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import http_config, start_proxy, to

MiB = 1024 * 1024


def h2_config(up_port: int, **proxy):
    return http_config(
        [to("up")],
        {"up": up_port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2", **proxy},
    )


async def test_h2_uploads_to_a_slow_upstream_stay_within_the_budget(nursery):
    # The upstream takes 64 KiB per stream, then reads nothing until its gate opens.
    up = await start_h2_upstream(nursery, connection_window=1 << 24)
    server, port = await start_proxy(nursery, h2_config(up.port))
    stats = server.listeners["ingress"].stats
    n, size = 30, 600_000  # more than a stream window (256 KiB) plus the upstream's 64 KiB
    bodies = [os.urandom(size) for _ in range(n)]
    with trio.fail_after(30):
        async with open_h2_client(port, connection_window=1 << 24) as client:
            sids = [await client.send_headers("POST", "/slow-read") for _ in range(n)]
            done = [False] * n

            async def upload(i: int) -> None:
                await client.send_data(sids[i], bodies[i], end_stream=True)
                done[i] = True

            async with trio.open_nursery() as uploads:
                for i in range(n):
                    uploads.start_soon(upload, i)
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                buffered = stats.downstream_cx_rx_bytes_buffered
                # What waits in the proxy: at most the connection's window (1 MiB) of
                # unforwarded DATA plus retry copies within its 1 MiB budget. Without the
                # budget the copies alone were 30 x 64 KiB.
                assert 0 < buffered <= 2 * MiB
                assert not any(done)  # flow control holds the client back
                up.read_gate.set()
            for i, sid in enumerate(sids):
                r = await client.response(sid)
                assert r.status == 200
                assert r.json() == {"len": size, "sha256": hashlib.sha256(bodies[i]).hexdigest()}
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_rx_bytes_buffered == 0  # every byte given back


async def test_many_h2_connections_uploading_to_a_stalled_upstream_stay_within_the_listener_budget(
    nursery,
):
    # Issue 14 follow-up, finding 2: each connection's window bounds that connection only;
    # the listener's budget bounds them all: a reader holding DATA stops reading while the
    # budget is spent, and reads on once the upstream takes what it holds.
    up = await start_h2_upstream(nursery, connection_window=1 << 24)
    limit = MiB
    config = http_config(
        [to("up")],
        {"up": up.port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
        listener={"listener_buffer_limit_bytes": limit},
    )
    server, port = await start_proxy(nursery, config)
    stats = server.listeners["ingress"].stats
    conns, streams, size = 12, 2, 600_000
    bodies = [[os.urandom(size) for _ in range(streams)] for _ in range(conns)]
    results: dict[tuple[int, int], dict] = {}
    all_sending = trio.Event()
    started = 0

    async def client(i: int) -> None:
        nonlocal started
        async with open_h2_client(port, connection_window=1 << 24) as c:
            sids = [await c.send_headers("POST", "/slow-read") for _ in range(streams)]
            async with trio.open_nursery() as uploads:
                for j in range(streams):
                    uploads.start_soon(c.send_data, sids[j], bodies[i][j], True)
                started += 1
                if started == conns:
                    all_sending.set()
            for j, sid in enumerate(sids):
                r = await c.response(sid)
                assert r.status == 200
                results[i, j] = r.json()

    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for i in range(conns):
                clients.start_soon(client, i)
            await all_sending.wait()
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            # At most the budget, plus the one read (64 KiB) a connection holding nothing may
            # make. Without the wait, each connection held what its windows let in (~5 MiB).
            assert stats.downstream_cx_rx_bytes_buffered <= limit + conns * 65536
            assert stats.downstream_flow_control_paused_reading_total >= 1
            up.read_gate.set()  # everything completes once the upstream reads
    assert results == {
        (i, j): {"len": size, "sha256": hashlib.sha256(bodies[i][j]).hexdigest()}
        for i in range(conns)
        for j in range(streams)
    }
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    assert stats.downstream_cx_rx_bytes_buffered == 0
