"""The attacker's and the broken peer's view of the gauges: whatever a client or an upstream
does mid-request (reset, half a body, a response never read, a hang-up), every ``*_active``
gauge is back to 0 once the connections are gone."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from tests.http_helpers import get, http_config, start_proxy, start_upstream, to
from trio_mesh.server import Server

from .test_collect import by_name, value, wait_closed

GAUGES = (
    "http.ingress.downstream_rq_active",
    "cluster.up.upstream_rq_active",
    "cluster.up.upstream_rq_pending_active",
    "server.total_connections",
)


async def reset_after(port: int, data: bytes, read: int = 0) -> None:
    """Send ``data``, read ``read`` bytes of the answer, then an RST (SO_LINGER 0)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    got = 0
    while got < read:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        got += len(chunk)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def assert_gauges_zero(server: Server) -> None:
    await wait_closed(server)
    with trio.fail_after(5):  # an upstream exchange may end a moment after its client
        while any(value(by_name(server), g) for g in GAUGES):
            await trio.sleep(0.01)


@pytest.mark.parametrize(
    "data, read",
    [
        # reset while the upstream works on it (noticed only when the upstream answers)
        (get("/slow/0.5"), 0),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"a" * 10, 0),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", 0),
        (get("/bytes/20000000"), 100_000),  # reset mid-response
        (get("/hangup"), 0),
        (get("/reset-mid-body"), 0),
        (get("/echo") * 3, 0),  # pipelined, reset before the answers are read
        (get("/echo")[:-2], 0),  # half a head
    ],
    ids=["slow", "half-body", "half-chunked", "mid-response", "hangup", "up-reset", "pipe", "head"],
)
async def test_http1_resets_leave_no_active_gauge(
    nursery: trio.Nursery, data: bytes, read: int
) -> None:
    upstream = await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": upstream.port}))
    with trio.fail_after(15):
        for _ in range(3):
            await reset_after(port, data, read)
        await assert_gauges_zero(server)


async def h2_abuse(port: int, cut: str) -> None:
    """Streams in every state on one HTTP/2 connection (waiting on the upstream, half a
    body sent, a big response half read), then ``cut``: RST_STREAM each, GOAWAY, or an RST of
    the whole connection."""
    import h2.config
    import h2.connection
    import h2.events

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()

    def head(method: str, path: str) -> list[tuple[str, str]]:
        return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "x")]

    conn.send_headers(1, head("GET", "/slow/0.3"), end_stream=True)
    conn.send_headers(3, [*head("POST", "/echo"), ("content-length", "100000")])
    conn.send_data(3, b"a" * 10)
    conn.send_headers(5, head("GET", "/bytes/20000000"), end_stream=True)
    await stream.send_all(conn.data_to_send())
    got = 0
    while got < 50_000:  # part of stream 5's response (its window is 64 KiB)
        data = await stream.receive_some(65536)
        assert data
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived) and event.stream_id == 5:
                got += len(event.data)
        await stream.send_all(conn.data_to_send())
    if cut == "rst_stream":
        for sid in (1, 3, 5):
            conn.reset_stream(sid)
        await stream.send_all(conn.data_to_send())
        await stream.aclose()
    elif cut == "goaway":
        conn.close_connection()
        await stream.send_all(conn.data_to_send())
        await stream.aclose()
    else:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()


@pytest.mark.parametrize("cut", ["rst_stream", "goaway", "reset"])
async def test_http2_cuts_leave_no_active_gauge(nursery: trio.Nursery, cut: str) -> None:
    upstream = await start_upstream(nursery)
    proxy = {"downstream_protocol": "Http2", "upstream_protocol": "Http1"}
    config = http_config([to("up")], {"up": upstream.port}, proxy=proxy)
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(15):
        for _ in range(2):
            await h2_abuse(port, cut)
        await assert_gauges_zero(server)


async def test_bolt_cut_with_calls_pending_leaves_no_active_gauge(nursery: trio.Nursery) -> None:
    from tests.rpc_helpers import BoltClient, echo_upstream, request

    from .test_collect import bolt_config

    up = await echo_upstream(nursery, delay=0.3)
    server, port = await start_proxy(nursery, bolt_config(up))
    with trio.fail_after(15):
        for _ in range(2):
            client = await BoltClient.connect(port)
            for rid in range(1, 9):
                await client.send(request(rid, b"hi"))
            sock = client.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await assert_gauges_zero(server)


@pytest.mark.parametrize("path", ["/flaky/k/100", "/slow/0.3", "/hangup"])
async def test_retries_and_per_try_timeouts_leave_no_active_gauge(
    nursery: trio.Nursery, path: str
) -> None:
    upstream = await start_upstream(nursery)
    policy = {
        "retry_on": "5xx,reset,connect-failure",
        "num_retries": 3,
        "per_try_timeout": "100ms",
    }
    config = http_config([to("up", timeout="2s", retry_policy=policy)], {"up": upstream.port})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(15):
        await reset_after(port, get(path))  # the client gone mid-retry
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(get(path))
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 5")
        await stream.aclose()
        await assert_gauges_zero(server)
        assert value(by_name(server), "cluster.up.upstream_rq_retry") >= 3
