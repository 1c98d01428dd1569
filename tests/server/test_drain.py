"""Graceful stop (``Server.drain``, SIGTERM): requests in flight finish, a request whose
first byte came is answered with ``Connection: close``, idle HTTP/1 connections close once
idle for ``DRAIN_IDLE_GRACE``, new connections are refused. The load test is in
test_drain_load.py."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests.http_helpers import (
    Client,
    Closed,
    gated_upstream,
    get,
    http_config,
    start_proxy,
    to,
)


async def test_drain_finishes_in_flight_http1_and_closes_idle(nursery):
    up, arrived, release = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        idle = await Client.connect(port)
        await idle.send(get("/first"))
        assert (await idle.response()).status == 200
        busy = await Client.connect(port)
        await busy.send(get("/wait"))
        await arrived.wait()

        outcome = {}
        drained = trio.Event()

        async def drain():
            outcome["finished"] = await server.drain(5)
            drained.set()

        nursery.start_soon(drain)
        with pytest.raises(Closed):
            await idle.response()  # nothing in flight there: closed after the grace
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)  # no longer accepting
        assert not drained.is_set()  # /wait is still in flight
        release.set()
        r = await busy.response()
        assert (r.status, r.body, r.headers.get("connection")) == (200, b"ok", "close")
        await drained.wait()
    assert outcome["finished"] is True
    assert server.listeners["ingress"].stats.downstream_cx_idle_timeout == 0


async def test_drain_timeout_reports_what_did_not_finish(nursery):
    up, arrived, _ = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        busy = await Client.connect(port)
        await busy.send(get("/wait"))
        await arrived.wait()
        assert await server.drain(0.2) is False


async def test_drain_answers_a_request_whose_first_bytes_came(nursery):
    up, _, _ = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        client = await Client.connect(port)
        await client.send(get("/first"))
        assert (await client.response()).status == 200
        request = get("/second")
        await client.send(request[:7])  # the head has begun, no more
        await trio.testing.wait_all_tasks_blocked()
        drained = trio.Event()

        async def drain() -> None:
            assert await server.drain(5) is True
            drained.set()

        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        await client.send(request[7:])
        r = await client.response()
        assert (r.status, r.body, r.headers.get("connection")) == (200, b"ok", "close")
        await drained.wait()  # and nothing was left open


async def test_drain_answers_a_request_sent_as_it_began(nursery):
    """The request is on the socket, not read yet, when the drain starts (in the same
    scheduler pass as the proxy would see it): it is answered, never cut or taken for a
    route timeout (504 UT)."""
    up, _, _ = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up", timeout="5s")], {"up": up}))
    with trio.fail_after(10):
        sock = socket.create_connection(("127.0.0.1", port))
        client = Client(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        await client.send(get("/first"))
        assert (await client.response()).status == 200
        await trio.testing.wait_all_tasks_blocked()  # the session waits for a request
        request = get("/second")
        assert sock.send(request) == len(request)  # no checkpoint from here to the drain
        server.listeners["ingress"].drain()
        r = await client.response()
        assert (r.status, r.body, r.headers.get("connection")) == (200, b"ok", "close")
        assert await server.drain(5) is True
        assert await client.closed()


async def test_drain_closes_an_idle_connection_and_counts_no_timeout(nursery):
    up, _, _ = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        client = await Client.connect(port)
        await client.send(get("/first"))
        assert (await client.response()).status == 200
        assert await server.drain(5) is True
        assert await client.closed()
    stats = server.listeners["ingress"].stats
    assert (stats.downstream_cx_idle_timeout, stats.downstream_rq_5xx) == (0, 0)


async def test_idle_expiry_as_a_request_arrives_serves_it(nursery):
    """The connection's scope fires (its idle timer's expiry, stood in for by a cancel)
    while a request waits unread on the socket: the request is served under a fresh
    scope, not dropped with the connection."""
    up, _, _ = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        sock = socket.create_connection(("127.0.0.1", port))
        client = Client(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        await client.send(get("/first"))
        assert (await client.response()).status == 200
        await trio.testing.wait_all_tasks_blocked()
        request = get("/second")
        assert sock.send(request) == len(request)
        (conn,) = server.listeners["ingress"].connections
        conn.idle.scope.cancel()
        r = await client.response()
        assert (r.status, r.body) == (200, b"ok")


async def test_drain_serves_pipelined_requests_that_had_arrived(nursery):
    """Requests pipelined in one write, a drain while the first is in flight: every one is
    answered in order, ``Connection: close`` only on the last (the one after which nothing
    more had come). On 0828f59 only the first was answered, then EOF."""
    up, arrived, release = await gated_upstream(nursery)
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        client = await Client.connect(port)
        await client.send(get("/wait") + get("/2") + get("/3"))
        await arrived.wait()
        server.listeners["ingress"].drain()
        release.set()
        got = [await client.response() for _ in range(3)]
        assert [(r.status, r.body) for r in got] == [(200, b"ok")] * 3
        assert [r.headers.get("connection") for r in got] == [None, None, "close"]
        assert await client.closed()
        assert await server.drain(5) is True
