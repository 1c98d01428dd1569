"""The request lifecycle as a broken peer sees it (issue 15 review): what a failed or timed-out
try leaves behind on a connection that goes on."""

from __future__ import annotations

import contextlib
import os

import h2.config
import h2.connection
import h2.events
import trio
import trio.testing
from h2.settings import SettingCodes

from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import (
    get,
    http_config,
    request,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
)


async def test_a_route_timeout_mid_upload_gives_back_the_chunk_in_flight(nursery):
    # The upstream takes one window of the body, then reads nothing: the proxy's try waits in
    # send_data with a chunk read from the client. The route timeout ends the request (504);
    # that chunk's bytes must leave the listener's budget (and its credit go back) while the
    # client's connection stays open, not only when it closes.
    up = await start_h2_upstream(nursery)
    config = http_config(
        [to("up", timeout="0.3s")],
        {"up": up.port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
    )
    server, port = await start_proxy(nursery, config)
    stats = server.listeners["ingress"].stats
    body = os.urandom(300_000)
    with trio.fail_after(10):
        async with open_h2_client(port, connection_window=1 << 24) as client:
            sid = await client.send_headers("POST", "/slow-read")

            async def upload() -> None:
                with contextlib.suppress(Exception):  # the proxy ends the stream first
                    await client.send_data(sid, body, end_stream=True)

            async with trio.open_nursery() as uploads:
                uploads.start_soon(upload)
                r = await client.response(sid)
                assert r.status == 504
                uploads.cancel_scope.cancel()
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert stats.downstream_cx_rx_bytes_buffered == 0
            # and the connection goes on: the next upload goes through
            up.read_gate.set()
            sid = await client.send_headers("POST", "/upload")
            await client.send_data(sid, body, end_stream=True)
            r = await client.response(sid)
            assert r.status == 200
            assert r.json()["len"] == len(body)


async def test_clients_resetting_mid_response_leave_the_upstream_connection_window_whole(nursery):
    # Each client stream takes 1,000 bytes of a large response (its window), then reads
    # nothing: the proxy's stream waits to send the rest of an upstream DATA frame down. The
    # client resets it. That frame's credit must still go back to the upstream connection,
    # which every client shares: a few such resets must not leave it unable to carry a
    # response.
    up = await start_h2_upstream(nursery)
    small = {"initial_connection_window_size": 65535, "initial_stream_window_size": 65535}
    config = http_config(
        [to("up")],
        {"up": up.port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2", "http2": small},
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with open_h2_client(
            port, connection_window=1 << 24, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000}
        ) as client:
            for _ in range(6):
                sid = await client.send_headers("GET", "/bytes/400000", end_stream=True)
                status, _ = await client.read_head(sid)
                assert status == 200
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                await client.reset(sid)
            r = await client.request("GET", "/bytes/200000")
            assert r.status == 200
            assert len(r.body) == 200_000


async def test_a_retriable_status_the_breaker_will_not_retry_goes_down_as_the_upstream_said(
    nursery,
):
    # The route would retry a 503, but the cluster's circuit breaker allows no retry: the
    # upstream's own response is the answer (its body), not an empty one made up in its
    # place, and the refused retry is counted once.
    upstream = await start_upstream(nursery)
    breaker = {"circuit_breakers": [{"max_retries": 0}]}
    config = http_config(
        [to("up", retry_policy={"retry_on": "5xx", "num_retries": 1})],
        {"up": {"hosts": [{"address": f"127.0.0.1:{upstream.port}"}], **breaker}},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        r = await request(port, get("/flaky/b/1"))
    assert (r.status, r.body) == (503, b"try 1\n")
    stats = server.clusters.get("up").stats
    assert (stats.upstream_rq_retry, stats.upstream_rq_retry_overflow) == (0, 1)


async def _continue_then_503_then_200(stream: trio.SocketStream) -> None:
    """A raw h2 upstream: every request gets "100 Continue" at once, then the first one a
    503 and the others a 200 (once its body is in)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    answered = 0
    while data := await stream.receive_some(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                conn.send_headers(event.stream_id, [(":status", "100")])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, h2.events.StreamEnded):
                answered += 1
                status = "503" if answered == 1 else "200"
                conn.send_headers(event.stream_id, [(":status", status)], end_stream=True)
        await stream.send_all(conn.data_to_send())


async def test_a_retried_request_gets_one_100_continue(nursery):
    # Each try's upstream answers "Expect: 100-continue"; the client asked once, and is told
    # to go on once, whatever the number of tries.
    up_port = await start_raw_server(nursery, _continue_then_503_then_200)
    config = http_config(
        [to("up", retry_policy={"retry_on": "5xx", "num_retries": 1})],
        {"up": up_port},
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
    )
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        async with open_h2_client(port) as client:
            r = await client.request(
                "POST", "/", headers=[("expect", "100-continue")], body=b"x" * 100
            )
    assert r.status == 200
    assert [status for status, _ in r.informational] == [100]
