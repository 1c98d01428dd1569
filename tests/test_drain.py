"""Graceful stop (``Server.drain``, SIGTERM): requests in flight finish, idle connections
close at once, new connections are refused."""

from __future__ import annotations

import pytest
import trio

from .http_helpers import (
    Client,
    Closed,
    get,
    http_config,
    read_request,
    start_proxy,
    start_raw_server,
    to,
)


async def gated_upstream(nursery):
    """An upstream that holds ``/wait`` until ``release`` is set; ``arrived`` when it came."""
    arrived, release = trio.Event(), trio.Event()

    async def serve(stream):
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            if b" /wait " in request[0].split(b"\r\n", 1)[0] + b" ":
                arrived.set()
                await release.wait()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    port = await start_raw_server(nursery, serve)
    return port, arrived, release


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
            await idle.response()  # nothing in flight there: closed at once
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
