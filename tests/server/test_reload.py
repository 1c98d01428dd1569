"""Configuration swaps on a running server (``Server.apply``, SIGHUP): routes change for the
next request of every connection, hosts that stay keep their pooled connections, requests in
flight finish, unchanged listeners keep their sockets, a swap that cannot be made changes
nothing that serves traffic."""

from __future__ import annotations

import http.client
import re
import signal
import socket

import attrs
import pytest
import trio

from tests.cli_helpers import proxy, write_config
from tests.http_helpers import (
    Client,
    gated_upstream,
    get,
    http_config,
    start_proxy,
    start_upstream,
    to,
)
from trio_mesh.errors import StartupError


def two_listeners(routes, clusters, second_port: int = 0):
    """``http_config`` plus a second listener ``second`` on the same router."""
    config = http_config(routes, clusters)

    (srv,) = config.servers
    (lst,) = srv.listeners
    second = attrs.evolve(lst, name="second", address=attrs.evolve(lst.address, port=second_port))
    return attrs.evolve(config, servers=(attrs.evolve(srv, listeners=(lst, second)),))


async def test_route_change_reaches_an_open_keepalive_connection(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    clusters = {"a": a.port, "b": b.port}
    server, port = await start_proxy(nursery, http_config([to("a")], clusters))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            await server.apply(http_config([to("b")], clusters))
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_host_that_stays_keeps_its_pooled_connection_and_a_removed_one_closes(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": a.port}))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for _ in range(2):
                await client.send(get("/echo"))
                assert (await client.response()).status == 200
            # Same host, another weight and a new route prefix: the pooled connection stays.
            weighted = {"up": {"hosts": [{"address": f"127.0.0.1:{a.port}", "weight": 7}]}}
            await server.apply(http_config([to("up", prefix="/e")], weighted))
            (host,) = server.clusters.get("up").hosts
            assert host.weight == 7
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            assert a.connections == 1 and a.closed == 0
            # The host leaves: requests go to the new one, the old idle connection closes.
            await server.apply(http_config([to("up")], {"up": b.port}))
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            while a.closed == 0:
                await a.closed_event.wait()
    assert (len(a.requests), len(b.requests)) == (3, 1)
    assert a.connections == 1


async def test_in_flight_request_finishes_when_its_listener_and_host_are_removed(nursery):
    up, arrived, release = await gated_upstream(nursery)
    other = await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    runtime = server.listeners["ingress"]
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/wait"))
            await arrived.wait()
            # The new configuration has only "second", routing to another cluster.
            new = http_config([to("other")], {"other": other.port}, listener={"name": "second"})
            await server.apply(new, drain_timeout=10)
            assert "ingress" not in server.listeners and runtime.draining
            second = server.addresses["second"][1]
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            release.set()
            response = await client.response()
            assert response.status == 200 and response.body == b"ok"
            assert await client.closed()  # drained: the old listener's connection ends
            await runtime.wait_closed()
        async with await Client.connect(second) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert len(other.requests) == 1
    assert "up" not in server.clusters


async def test_unchanged_listener_keeps_its_socket_and_connections(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": a.port}))
    runtime = server.listeners["ingress"]
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
            await server.apply(http_config([to("up")], {"up": b.port}))
            assert server.listeners["ingress"] is runtime and not runtime.draining
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_changed_listener_keeps_its_port_and_drains_old_connections(nursery):
    up = await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up.port}))
    runtime = server.listeners["ingress"]
    with trio.fail_after(10):
        async with await Client.connect(port) as old:
            await old.send(get("/echo"))
            assert (await old.response()).status == 200
            changed = http_config([to("up")], {"up": up.port}, listener={"max_connections": 50})
            await server.apply(changed)
            assert server.listeners["ingress"] is runtime
            assert server.addresses["ingress"][1] == port
            assert await old.closed()  # idle on the old chain: closed by the drain
        async with await Client.connect(port) as new:
            await new.send(get("/echo"))
            assert (await new.response()).status == 200
    assert runtime.max_connections == 50


async def test_a_swap_that_cannot_bind_changes_nothing(nursery):
    a = await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": a.port}))
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        bad = two_listeners([to("up")], {"up": a.port}, second_port=held.getsockname()[1])
        with pytest.raises(StartupError, match="second"):
            await server.apply(bad)
    finally:
        held.close()
    assert set(server.listeners) == {"ingress"}
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert len(a.requests) == 1


async def test_new_listener_starts_serving(nursery):
    up = await start_upstream(nursery)
    server, _ = await start_proxy(nursery, http_config([to("up")], {"up": up.port}))
    await server.apply(two_listeners([to("up")], {"up": up.port}))
    second = server.addresses["second"][1]
    with trio.fail_after(10):
        async with await Client.connect(second) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200


# --------------------------------------------------------------------------- SIGHUP


def direct_doc(body: str) -> dict:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}
    return {
        "servers": [
            {
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "web",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ]
    }


def fetch(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_sighup_reloads_the_file_and_a_bad_file_is_refused(tmp_path):
    path = write_config(tmp_path, direct_doc("one"))
    with proxy(path) as p:
        port = p.ready()["web"]
        assert fetch(port) == "one"
        write_config(tmp_path, direct_doc("two"))
        p.proc.send_signal(signal.SIGHUP)
        p.wait_for(re.compile("configuration reloaded"))
        assert fetch(port) == "two"  # the port 0 listener kept its port
        path.write_text("servers: [{listeners: [{name: web}]}]\n")
        p.proc.send_signal(signal.SIGHUP)
        p.wait_for(re.compile(r"reload refused, configuration kept: .*listeners\[0\]"))
        assert fetch(port) == "two"
        p.proc.send_signal(signal.SIGTERM)
        assert p.finish() == 0


async def test_a_swap_that_cannot_bind_leaves_the_clusters_as_they_were(nursery):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": a.port}))
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        # New hosts for "up" and a new cluster, with a listener that cannot bind.
        bad = two_listeners(
            [to("up")], {"up": b.port, "extra": b.port}, second_port=held.getsockname()[1]
        )
        with pytest.raises(StartupError, match="second"):
            await server.apply(bad)
    finally:
        held.close()
    assert [h.port for h in server.clusters.get("up").hosts] == [a.port]
    assert "extra" not in server.clusters
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert (len(a.requests), len(b.requests)) == (1, 0)
