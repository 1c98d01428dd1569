"""HTTP/1.1 proxy: the upstream's response head goes out as received when nothing changes it,
and is rebuilt from our own parse whenever something must (hop-by-hop fields, a route's
response headers, a closing or HTTP/1.0 client)."""

from __future__ import annotations

import pytest
import trio

from tests.http_helpers import (
    Client,
    get,
    http_config,
    raw_exchange,
    read_request,
    start_proxy,
    start_raw_server,
    to,
)

PLAIN = b"HTTP/1.1 200 OK\r\nX-Mixed-Case: v\r\nContent-Length: 2\r\n\r\n"


async def scripted(nursery: trio.Nursery, head: bytes, body: bytes) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            await stream.send_all(head + body)

    return await start_raw_server(nursery, handler)


async def test_plain_head_is_forwarded_byte_for_byte(nursery: trio.Nursery) -> None:
    up = await scripted(nursery, PLAIN, b"ok")
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            for _ in range(2):  # kept alive both ways
                await client.send(get("/"))
                raw = await client._until(b"ok")
                assert raw == PLAIN + b"ok"


async def test_connection_keep_alive_line_is_cut_from_the_forwarded_head(
    nursery: trio.Nursery,
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"
    )
    up = await scripted(nursery, head, b"ok")
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            raw = await client._until(b"ok")
    assert raw == b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nok"


async def test_chunked_plain_head_is_forwarded_with_our_chunks(nursery: trio.Nursery) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mixed-Case: v\r\n\r\n"
    up = await scripted(nursery, head, b"2;ext=1\r\nok\r\n0\r\n\r\n")
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            raw = await client._until(b"0\r\n\r\n")
    # the head as sent, the body re-chunked from our parse (the extension is gone)
    assert raw == head + b"2\r\nok\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "field",
    [b"Keep-Alive: timeout=5", b"Proxy-Authenticate: Basic", b"Connection: x-hop\r\nX-Hop: 1"],
    ids=["keep-alive", "proxy-field", "connection-named"],
)
async def test_head_with_hop_by_hop_fields_is_rebuilt(nursery: trio.Nursery, field: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + field + b"\r\nX-Mixed-Case: v\r\nContent-Length: 2\r\n\r\n"
    up = await scripted(nursery, head, b"ok")
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            raw = await client._until(b"ok")
    assert raw == b"HTTP/1.1 200 OK\r\nx-mixed-case: v\r\ncontent-length: 2\r\n\r\nok"


async def test_route_response_headers_rebuild_the_head(nursery: trio.Nursery) -> None:
    up = await scripted(nursery, PLAIN, b"ok")
    add = {"header": {"key": "x-route", "value": "r"}, "append": True}
    config = http_config([to("up", response_headers_to_add=[add])], {"up": up})
    _, port = await start_proxy(nursery, config)
    with trio.fail_after(5):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            raw = await client._until(b"ok")
    assert raw == (
        b"HTTP/1.1 200 OK\r\nx-mixed-case: v\r\nx-route: r\r\ncontent-length: 2\r\n\r\nok"
    )


@pytest.mark.parametrize(
    ("request_line", "connection"),
    [(b"HTTP/1.1\r\nConnection: close", b"close"), (b"HTTP/1.0\r\nConnection: keep-alive", b"")],
    ids=["client-closes", "http-1.0-client"],
)
async def test_head_for_a_closing_or_old_client_is_rebuilt(
    nursery: trio.Nursery, request_line: bytes, connection: bytes
) -> None:
    up = await scripted(nursery, PLAIN, b"ok")
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    req = b"GET / " + request_line + b"\r\nHost: x\r\n\r\n"
    if connection:
        got = await raw_exchange(port, req)
        want = b"connection: close"
    else:
        with trio.fail_after(5):
            async with await Client.connect(port) as client:
                await client.send(req)
                got = await client._until(b"ok")
        want = b"connection: keep-alive"
    assert got == b"HTTP/1.1 200 OK\r\nx-mixed-case: v\r\n" + want + (
        b"\r\ncontent-length: 2\r\n\r\nok"
    )
