"""The benchmark's floor relays (bench/floor_*.py) are correct relays, not just fast ones:
framing from their own parse, keep-alive, bodies both ways, errors answered."""

from __future__ import annotations

import functools
from unittest.mock import ANY

import trio

from bench import floor_bolt, floor_h1, floor_h2
from tests.h2_upstream import open_h2_client, start_h2_upstream
from tests.http_helpers import (
    Client,
    closed_port,
    echoed,
    get,
    read_request,
    start_raw_server,
    start_upstream,
)
from tests.upstream import pattern_bytes
from trio_mesh.protocols.xprotocol.base import FrameKind
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame


async def _floor_h1(nursery: trio.Nursery, upstream_port: int) -> int:
    run = functools.partial(floor_h1.run, 0, ("127.0.0.1", upstream_port))
    return await nursery.start(run)


async def test_h1_floor_relays_framing_both_ways(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    port = await _floor_h1(nursery, upstream.port)
    async with await Client.connect(port) as client:
        # Keep-alive: every response on one connection, one upstream connection.
        await client.send(get("/bytes/100000"))
        resp = await client.response()
        assert (resp.status, resp.body) == (200, pattern_bytes(100000))
        await client.send(get("/chunked/70000"))
        resp = await client.response()
        assert resp.headers.get("transfer-encoding") == "chunked"
        assert resp.body == pattern_bytes(70000)
        await client.send(get("/status/204"))
        assert (await client.response()).status == 204
        # A chunked request body arrives re-chunked; a Content-Length one as sent. Hop-by-hop
        # fields (and those Connection names) do not reach the upstream.
        body = b"x" * 5000
        await client.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\r\n"
            b"1388\r\n" + body + b"\r\n0\r\n\r\n"
        )
        info = echoed(await client.response())
        assert info["body_length"] == 5000
        assert info["headers"].get("transfer-encoding") == "chunked"
        assert not {"x-hop", "keep-alive", "connection"} & info["headers"].names()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        info = echoed(await client.response())
        assert (info["body_length"], info["headers"].get("content-length")) == (5, "5")
        # Pipelined requests: answered in order.
        await client.send(get("/bytes/3") + get("/bytes/4"))
        assert (await client.response()).body == pattern_bytes(3)
        assert (await client.response()).body == pattern_bytes(4)
    assert upstream.connections == 1
    # A close-delimited response is forwarded and ends the connection.
    async with await Client.connect(port) as client:
        await client.send(get("/close-delimited/3000"))
        resp = await client.response()
        assert (resp.headers.get("connection"), resp.body) == ("close", pattern_bytes(3000))


async def test_h1_floor_head_response_has_no_body(nursery: trio.Nursery) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while (request := await read_request(stream, buf)) is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
            await stream.send_all(head if request[0].startswith(b"HEAD") else head + b"0123456789")

    port = await _floor_h1(nursery, await start_raw_server(nursery, upstream))
    async with await Client.connect(port) as client:
        await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = await client.response(head=True)
        assert (resp.status, resp.headers.get("content-length")) == (200, "10")
        await client.send(get("/"))  # the same connection goes on after a bodiless response
        assert (await client.response()).body == b"0123456789"
        assert client.buf == b""


async def test_h1_floor_answers_bad_input(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    port = await _floor_h1(nursery, upstream.port)
    async with await Client.connect(port) as client:
        await client.send(
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        assert (await client.response()).status == 400
        assert await client.closed()
    async with await Client.connect(port) as client:
        await client.send(get("/hangup"))
        assert (await client.response()).status == 502
    down = await _floor_h1(nursery, closed_port())
    async with await Client.connect(down) as client:
        await client.send(get("/"))
        assert await client.closed()


async def test_h2_floor_relays_streams_with_flow_control_and_trailers(
    nursery: trio.Nursery,
) -> None:
    upstream = await start_h2_upstream(nursery)
    run = functools.partial(floor_h2.run, 0, ("127.0.0.1", upstream.port))
    port = await nursery.start(run)
    async with open_h2_client(port) as client:
        # Bodies over the 64 KiB default windows both ways, concurrent streams, trailers.
        results: dict[str, object] = {}

        async def one(name: str, *args: object, **kwargs: object) -> None:
            results[name] = await client.request(*args, **kwargs)  # type: ignore[arg-type]

        upload = bytes(range(256)) * 1000
        async with trio.open_nursery() as streams:
            streams.start_soon(one, "bytes", "GET", "/bytes/300000")
            streams.start_soon(one, "upload", "POST", "/upload", (), upload)
            streams.start_soon(one, "trailers", "GET", "/trailers")
            streams.start_soon(
                functools.partial(
                    one, "echo", "POST", "/echo", [("x-a", "1")], b"hi", [("x-t", "2")]
                )
            )
        assert results["bytes"].body == pattern_bytes(300000)  # type: ignore[attr-defined]
        assert results["upload"].json()["len"] == len(upload)  # type: ignore[attr-defined]
        trailers = results["trailers"].trailers  # type: ignore[attr-defined]
        assert trailers.get("grpc-status") == "0"
        echo = results["echo"].json()  # type: ignore[attr-defined]
        assert ["x-a", "1"] in echo["headers"] and echo["trailers"] == [["x-t", "2"]]
        assert (await client.request("GET", "/status/404")).status == 404
        # A second client shares the upstream connection; a client that goes away with a
        # stream in flight has it reset upstream, and the others carry on.
        async with open_h2_client(port) as other:
            assert (await other.request("GET", "/bytes/10")).body == pattern_bytes(10)
            await other.send_headers("GET", "/slow/30", end_stream=True)
            await upstream.wait_until(lambda: ("/slow/30", ANY) in upstream.requests)
        await upstream.wait_until(lambda: upstream.resets)
        assert upstream.resets[0][3] == "/slow/30"
        assert (await client.request("GET", "/bytes/10")).body == pattern_bytes(10)
    assert upstream.connections == 1


async def test_bolt_floor_multiplexes_with_ids_rewritten(nursery: trio.Nursery) -> None:
    upstream_ids: list[int] = []

    async def echo(stream: trio.SocketStream) -> None:  # one connection: the shared one
        buf = bytearray()
        while data := await stream.receive_some(65536):
            buf += data
            while (decoded := BOLT.decode(buf)) is not None:
                frame, n = decoded
                del buf[:n]
                upstream_ids.append(frame.request_id)
                if frame.heartbeat:
                    reply = BOLT.heartbeat_reply(frame)
                elif frame.is_request and frame.kind is not FrameKind.ONEWAY:
                    reply = BOLT.build_response(frame.request_id, content=bytes(frame.content))
                else:
                    continue
                await stream.send_all(bytes(reply.data))

    upstream_port = await start_raw_server(nursery, echo)
    port = await nursery.start(functools.partial(floor_bolt.run, 0, ("127.0.0.1", upstream_port)))

    async def call(stream: trio.SocketStream, frames: bytes, replies: int) -> list[BoltFrame]:
        await stream.send_all(frames)
        buf, out = bytearray(), []
        while len(out) < replies:
            buf += await stream.receive_some(65536)
            while (decoded := BOLT.decode(buf)) is not None:
                out.append(decoded[0])
                del buf[: decoded[1]]
        return out

    a = await trio.open_tcp_stream("127.0.0.1", port)
    b = await trio.open_tcp_stream("127.0.0.1", port)
    async with a, b:
        # Both clients use id 7: upstream they must differ, and each gets its own answer.
        one = b"".join(bytes(BOLT.build_request(7, content=c).data) for c in (b"a1", b"a2"))
        oneway = bytes(BOLT.build_request(8, content=b"ow", oneway=True).data)
        replies = await call(a, one + oneway + bytes(BOLT.heartbeat_request(9).data), 3)
        assert [(f.request_id, bytes(f.content)) for f in replies[:2]] == [(7, b"a1"), (7, b"a2")]
        assert replies[2].request_id == 9 and replies[2].heartbeat
        (reply,) = await call(b, bytes(BOLT.build_request(7, content=b"b1").data), 1)
        assert (reply.request_id, bytes(reply.content)) == (7, b"b1")
    assert len(set(upstream_ids)) == len(upstream_ids) == 5
