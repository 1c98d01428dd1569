"""tcp_proxy end to end: real client, real proxy, real upstreams, all on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import trio

from tests.tcp_helpers import echo_handler, start_tcp_server, tcp_proxy_config
from trio_mesh import Server


async def start_proxy(nursery: trio.Nursery, config) -> tuple[Server, int]:
    server = await nursery.start(Server(config).run)
    return server, server.addresses["ingress"][1]


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def connection_ends(stream: trio.SocketStream) -> bytes:
    """Read until the proxy ends the connection, by FIN or by RST; return what came first."""
    try:
        return await read_until_eof(stream)
    except trio.BrokenResourceError:
        return b"<reset>"


async def is_turned_away(port: int) -> bool:
    """Connect and see the proxy end the connection unserved. Its RST may even beat the
    client's own check of the handshake, so a reset connect counts too."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    async with stream:
        return await connection_ends(stream) in (b"", b"<reset>")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_ten_megabytes_each_way_byte_exact(nursery, echo_port):
    _, port = await start_proxy(nursery, tcp_proxy_config([echo_port]))
    payload = os.urandom(10 * 1024 * 1024)
    received = hashlib.sha256()
    count = 0
    with trio.fail_after(30):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client, trio.open_nursery() as n:

            async def send():
                view = memoryview(payload)
                for i in range(0, len(payload), 256 * 1024):
                    await client.send_all(view[i : i + 256 * 1024])
                await client.send_eof()

            n.start_soon(send)
            while data := await client.receive_some(65536):
                received.update(data)
                count += len(data)
    assert count == len(payload)
    assert received.digest() == hashlib.sha256(payload).digest()


async def test_downstream_half_close_keeps_the_other_direction_open(nursery):
    # The upstream sends its trailer only after it has seen our EOF through the proxy.
    up = await start_tcp_server(nursery, lambda s: echo_handler(s, trailer=b"BYE"))
    _, port = await start_proxy(nursery, tcp_proxy_config([up]))
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"hello")
            await client.send_eof()
            assert await read_until_eof(client) == b"helloBYE"


async def test_upstream_half_close_keeps_the_other_direction_open(nursery):
    got: list[bytes] = []
    done = trio.Event()

    async def greeter(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"hi")
            await stream.send_eof()
            got.append(await read_until_eof(stream))
            done.set()

    up = await start_tcp_server(nursery, greeter)
    _, port = await start_proxy(nursery, tcp_proxy_config([up]))
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            assert await read_until_eof(client) == b"hi"
            await client.send_all(b"late data")
            await client.send_eof()
            await done.wait()
    assert got == [b"late data"]


async def test_upstream_refused_closes_downstream_and_counts(nursery):
    server, port = await start_proxy(nursery, tcp_proxy_config([closed_port()]))
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            assert await connection_ends(client) == b""
    stats = server.clusters.get("up").stats
    assert stats.upstream_cx_connect_fail == 1
    assert stats.upstream_cx_connect_timeout == 0
    assert stats.upstream_cx_active == 0


async def test_connect_timeout_closes_downstream_and_counts(nursery):
    # A listener with backlog 0 holding one unaccepted connection drops further SYNs, so a
    # connect to it hangs: a real connect timeout without leaving loopback.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    filler = socket.create_connection(blackhole.getsockname())
    try:
        config = tcp_proxy_config(
            [blackhole.getsockname()[1]], cluster={"connect_timeout": "200ms"}
        )
        server, port = await start_proxy(nursery, config)
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                assert await connection_ends(client) == b""
        stats = server.clusters.get("up").stats
        assert stats.upstream_cx_connect_timeout == 1
        assert stats.upstream_cx_active == 0
    finally:
        filler.close()
        blackhole.close()


@pytest.mark.parametrize(
    "where",
    [{"tcp": {"idle_timeout": "200ms"}}, {"listener": {"connection_idle_timeout": "200ms"}}],
    ids=["tcp_proxy.idle_timeout", "listener.connection_idle_timeout"],
)
async def test_idle_timeout_closes_both_sides(nursery, where):
    upstream_closed = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        await echo_handler(stream)
        upstream_closed.set()

    up = await start_tcp_server(nursery, upstream)
    server, port = await start_proxy(nursery, tcp_proxy_config([up], **where))
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"ping")
            assert await client.receive_some(10) == b"ping"
            # Nothing more is sent: the proxy must end the connection on its own.
            assert await connection_ends(client) == b""
            await upstream_closed.wait()
    assert server.listeners["ingress"].stats.downstream_cx_idle_timeout == 1


async def test_activity_postpones_the_idle_timeout(nursery, echo_port, autojump_clock):
    # Virtual time: 20 exchanges 100 ms apart span 2 s against a 300 ms idle timeout.
    server, port = await start_proxy(
        nursery, tcp_proxy_config([echo_port], tcp={"idle_timeout": "300ms"})
    )
    client = await trio.open_tcp_stream("127.0.0.1", port)
    async with client:
        for i in range(20):
            await client.send_all(b"%d" % i)
            assert await client.receive_some(10) == b"%d" % i
            await trio.sleep(0.1)
        assert await connection_ends(client) == b""
    assert server.listeners["ingress"].stats.downstream_cx_idle_timeout == 1


async def test_many_concurrent_connections(nursery, echo_port):
    server, port = await start_proxy(nursery, tcp_proxy_config([echo_port]))
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            msg = b"client-%d:" % i + os.urandom(1000)
            await client.send_all(msg)
            await client.send_eof()
            results[i] = (await read_until_eof(client)) == msg

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(300):
                n.start_soon(one, i)
    assert results == {i: True for i in range(300)}
    assert server.listeners["ingress"].stats.downstream_cx_total == 300
    assert server.clusters.get("up").stats.upstream_cx_total == 300


async def test_upstream_reset_ends_the_downstream_connection(nursery):
    async def resetter(stream: trio.SocketStream) -> None:
        await stream.receive_some(10)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        stream.socket.close()

    up = await start_tcp_server(nursery, resetter)
    server, port = await start_proxy(nursery, tcp_proxy_config([up]))
    with trio.fail_after(10):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"x")
            assert await connection_ends(client) == b"<reset>"
    with trio.fail_after(5):
        while server.clusters.get("up").stats.upstream_cx_active:
            await trio.sleep(0)  # the relay's cleanup runs after the downstream RST is sent
    assert server.listeners["ingress"].stats.downstream_cx_active == 0


async def test_listener_connection_limit(nursery, echo_port):
    server, port = await start_proxy(
        nursery, tcp_proxy_config([echo_port], listener={"max_connections": 1})
    )
    with trio.fail_after(10):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        async with first:
            await first.send_all(b"a")
            assert await first.receive_some(10) == b"a"
            assert await is_turned_away(port)
            await first.send_all(b"b")
            assert await first.receive_some(10) == b"b"
    assert server.listeners["ingress"].stats.downstream_cx_overflow == 1


async def test_cluster_circuit_breaker_max_connections(nursery, echo_port):
    config = tcp_proxy_config([echo_port], cluster={"circuit_breakers": [{"max_connections": 1}]})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        async with first:
            await first.send_all(b"a")
            assert await first.receive_some(10) == b"a"
            second = await trio.open_tcp_stream("127.0.0.1", port)
            async with second:
                assert await connection_ends(second) == b""
    assert server.clusters.get("up").stats.upstream_cx_overflow == 1


async def test_connect_attempts_move_on_to_the_next_host(nursery, echo_port):
    config = tcp_proxy_config(
        [closed_port(), echo_port],
        tcp={"max_connect_attempts": 2},
        cluster={"lb_type": "LB_ROUNDROBIN"},
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        for i in range(4):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                await client.send_all(b"%d" % i)
                await client.send_eof()
                assert await read_until_eof(client) == b"%d" % i
    # Round robin offers the refused host first to every other attempt; each of those moves on.
    # (The balancer's random start decides whether the first connection meets it too.)
    assert server.clusters.get("up").stats.upstream_cx_connect_fail in (3, 4)
    assert (
        server.clusters.get("up").stats.upstream_cx_total
        == 4 + server.clusters.get("up").stats.upstream_cx_connect_fail
    )


async def test_tcp_proxy_counts_its_idle_timeouts_on_the_cluster(nursery):
    up = await start_tcp_server(nursery, echo_handler)
    server = await nursery.start(Server(tcp_proxy_config([up], tcp={"idle_timeout": "200ms"})).run)
    port = server.addresses["ingress"][1]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await stream.receive_some(10) == b""
    assert server.clusters.get("up").stats.upstream_cx_idle_timeout == 1
