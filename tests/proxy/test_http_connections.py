"""HTTP/1 connection handling through the proxy (regressions found in review): an upgraded
tunnel outlives the route timeout, the cluster-wide connection limit frees slots across hosts, a
POST is not resent after the keep-alive race, an HTTP/1.0 keep-alive client is told the
connection stays open."""

from __future__ import annotations

import trio

from tests.http_helpers import (
    Client,
    get,
    http_config,
    start_proxy,
    start_raw_server,
    start_upstream,
)


async def test_a_websocket_tunnel_outlives_the_route_timeout(nursery):
    upstream = await start_upstream(nursery)
    _, port = await start_proxy(
        nursery,
        http_config(
            [{"match": {"prefix": "/"}, "route": {"cluster_name": "up", "timeout": "300ms"}}],
            {"up": upstream.port},
        ),
    )
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(1000)
            assert head.startswith(b"HTTP/1.1 101 ")
            for i in range(4):  # 4 x 200 ms: well past the 300 ms route timeout
                await trio.sleep(0.2)
                await stream.send_all(b"ping %d" % i)
                assert await stream.receive_some(100) == b"ping %d" % i


async def test_the_cluster_connection_limit_frees_slots_across_hosts(nursery):
    a = await start_upstream(nursery)
    b = await start_upstream(nursery)
    cluster = {
        "name": "up",
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [{"address": f"127.0.0.1:{a.port}"}, {"address": f"127.0.0.1:{b.port}"}],
        "circuit_breakers": [{"max_connections": 1, "max_pending_requests": 10}],
    }
    _, port = await start_proxy(
        nursery,
        http_config([{"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}], [cluster]),
    )
    statuses = []

    async def one():
        async with await Client.connect(port) as client:
            await client.send(get("/slow/0.1"))
            statuses.append((await client.response()).status)

    with trio.fail_after(3):  # before the fix the second waited for the 15 s route timeout
        async with trio.open_nursery() as n:
            n.start_soon(one)
            n.start_soon(one)
    assert statuses == [200, 200]


async def test_a_post_is_not_resent_after_the_keep_alive_race(nursery):
    seen: list[bytes] = []

    async def answers_once_then_drops(stream: trio.SocketStream) -> None:
        # Answers the first request; reads the second, then closes without an answer.
        async with stream:
            buf = b""
            for answer in (True, False):
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                line, _, buf = buf.partition(b"\r\n\r\n")
                seen.append(line.split(b"\r\n")[0])
                if answer:
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    up = await start_raw_server(nursery, answers_once_then_drops)
    _, port = await start_proxy(
        nursery,
        http_config([{"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}], {"up": up}),
    )
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/warm"))
            assert (await client.response()).status == 200
            await client.send(b"POST /charge HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
            assert (await client.response()).status == 502
    assert seen == [b"GET /warm HTTP/1.1", b"POST /charge HTTP/1.1"]


async def test_http10_keep_alive_client_is_told_the_connection_stays_open(nursery):
    upstream = await start_upstream(nursery)
    _, port = await start_proxy(
        nursery,
        http_config(
            [{"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}], {"up": upstream.port}
        ),
    )
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for _ in range(2):
                await client.send(b"GET /bytes/5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                response = await client.response()
                assert response.status == 200
                assert response.headers.get("connection") == "keep-alive"
