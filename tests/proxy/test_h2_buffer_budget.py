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
