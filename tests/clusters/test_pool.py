"""The HTTP/1 upstream pool, end to end: reuse order, limits, retirement, idle reaping."""

from __future__ import annotations

import trio
import trio.testing

from tests.upstream import Upstream
from trio_mesh import Server
from trio_mesh.config import parse_config


def config(port: int, cluster: dict | None = None):
    return parse_config(
        {
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "ingress",
                            "address": "127.0.0.1:0",
                            "filter_chains": [
                                {
                                    "filters": [
                                        {"type": "proxy", "config": {"router_config_name": "r"}}
                                    ]
                                }
                            ],
                        }
                    ],
                    "routers": [
                        {
                            "router_config_name": "r",
                            "virtual_hosts": [
                                {
                                    "name": "v",
                                    "domains": ["*"],
                                    "routers": [
                                        {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
            "cluster_manager": {
                "clusters": [
                    {"name": "up", "hosts": [{"address": f"127.0.0.1:{port}"}], **(cluster or {})}
                ]
            },
        }
    ).config


async def get(port: int, path: str) -> bytes:
    """One request on a new client connection; the status line."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET %s HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n" % path.encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


async def start(nursery, cluster=None) -> tuple[Upstream, Server, int]:
    upstream = Upstream()
    up_port = await upstream.start(nursery)
    server = await nursery.start(Server(config(up_port, cluster)).run)
    return upstream, server, server.addresses["ingress"][1]


async def test_idle_connections_are_reused_last_in_first_out(nursery):
    upstream, _, port = await start(nursery)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(get, port, "/slow/0.3")  # released last: on top of the idle stack
            n.start_soon(get, port, "/slow/0.05")
        assert upstream.connections == 2
        targets = [r["target"] for r in upstream.requests]
        slow_peer = upstream.request_peers[targets.index("/slow/0.3")]  # released second
        assert await get(port, "/echo") == b"HTTP/1.1 200 "
    assert upstream.connections == 2
    assert upstream.request_peers[2] == slow_peer


async def test_max_request_per_conn_retires_connections(nursery):
    upstream, server, port = await start(nursery, {"max_request_per_conn": 2})
    with trio.fail_after(10):
        for _ in range(5):
            assert await get(port, "/echo") == b"HTTP/1.1 200 "
    assert upstream.connections == 3
    assert server.clusters.get("up").stats.upstream_cx_total == 3


async def test_idle_connections_are_reaped(nursery):
    upstream, server, port = await start(nursery, {"idle_timeout": "500ms"})
    with trio.fail_after(10):
        assert await get(port, "/echo") == b"HTTP/1.1 200 "
        while upstream.closed == 0:
            await upstream.closed_event.wait()  # the reaper closes it: no sleep, an event
    stats = server.clusters.get("up").stats
    assert stats.upstream_cx_idle_timeout == 1
    assert stats.upstream_cx_active == 0


async def test_requests_wait_for_a_connection_at_max_connections(nursery):
    upstream, _, port = await start(
        nursery, {"circuit_breakers": [{"max_connections": 1, "max_pending_requests": 10}]}
    )
    with trio.fail_after(10):
        results = []

        async def one():
            results.append(await get(port, "/slow/0.05"))

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(one)
    assert results == [b"HTTP/1.1 200 "] * 4
    assert upstream.connections == 1


async def test_pending_overflow_gets_503(nursery):
    _, server, port = await start(
        nursery, {"circuit_breakers": [{"max_connections": 1, "max_pending_requests": 1}]}
    )
    with trio.fail_after(10):
        results = []

        async def one(path):
            results.append(await get(port, path))

        async with trio.open_nursery() as n:
            n.start_soon(one, "/slow/0.5")
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(one, "/slow/0.01")  # waits for the one connection
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(one, "/slow/0.01")  # one waiter too many
    assert sorted(results) == [
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 503 Service Unavailable",
    ]
    assert server.clusters.get("up").stats.upstream_rq_pending_overflow == 1
