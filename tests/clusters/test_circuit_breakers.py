"""Cluster circuit breakers (issue 14, finding 6): ``max_requests`` bounds the requests
outstanding to a cluster over every protocol (HTTP/1, HTTP/2 streams, gRPC, bolt), its
overflow answered 503 / UNAVAILABLE / the RPC overflow reply, counted and flagged ``UO``;
``max_retries`` bounds outstanding retries (0: none, whatever the route asks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.h2_upstream import open_h2_client
from tests.http_helpers import (
    Client,
    access_log,
    get,
    http_config,
    read_access_log,
    read_request,
    running_proxy,
    start_raw_server,
    to,
)
from tests.rpc_helpers import ANY_SERVICE, BoltClient, request
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol.bolt import BOLT

TIMEOUT = 10  # only reached when something is broken


def breakers(port: int, **limits: int) -> dict[str, Any]:
    return {"up": {"hosts": [{"address": f"127.0.0.1:{port}"}], "circuit_breakers": [limits]}}


class Held:
    """Upstream requests held until ``release``; ``arrived(n)`` waits until n came."""

    def __init__(self) -> None:
        self.count = 0
        self.release = trio.Event()
        self._changed = trio.lowlevel.ParkingLot()

    def came(self) -> None:
        self.count += 1
        self._changed.unpark_all()

    async def arrived(self, n: int) -> None:
        while self.count < n:
            await self._changed.park()


async def held_http_upstream(nursery: trio.Nursery) -> tuple[int, Held]:
    held = Held()

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            held.came()
            await held.release.wait()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    return await start_raw_server(nursery, serve), held


async def held_bolt_upstream(nursery: trio.Nursery) -> tuple[int, Held]:
    """Reads every request at once; answers them all on ``release``."""
    held = Held()

    async def serve(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        ids: list[int] = []

        async def answer() -> None:  # one sender: a stream takes one send_all at a time
            await held.release.wait()
            data = b"".join(bytes(BOLT.build_response(i, 0, content=b"ok").data) for i in ids)
            await stream.send_all(data)

        async with trio.open_nursery() as inner:
            inner.start_soon(answer)
            while True:
                try:
                    frame = await peer.read()
                except (EOFError, trio.BrokenResourceError):
                    return
                ids.append(frame.request_id)
                held.came()

    return await start_raw_server(nursery, serve), held


def overflow_count(server: Any) -> int:
    return server.clusters.get("up").stats.upstream_rq_pending_overflow


async def test_http1_third_concurrent_request_overflows_with_uo(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up, held = await held_http_upstream(nursery)
    keys, log_path = access_log(tmp_path)
    config = http_config([to()], breakers(up, max_requests=2), listener=keys)
    statuses: list[int] = []
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as clients:
                for _ in range(2):

                    async def held_request() -> None:
                        async with await Client.connect(port) as c:
                            await c.send(get("/held"))
                            statuses.append((await c.response()).status)

                    clients.start_soon(held_request)
                await held.arrived(2)
                async with await Client.connect(port) as c:
                    await c.send(get("/third"))
                    third = await c.response()
                assert (third.status, third.body) == (503, b"upstream connection overflow\n")
                assert overflow_count(server) == 1
                held.release.set()
            assert statuses == [200, 200]
            # the slots came back: the next request is served
            async with await Client.connect(port) as c:
                await c.send(get("/after"))
                assert (await c.response()).status == 200
    flags = {e["path"]: (e["response_code"], e["response_flag"]) for e in read_access_log(log_path)}
    assert flags["/third"] == (503, "UO")
    assert flags["/held"][0] == 200
    assert held.count == 3  # the overflowed one never reached the upstream


async def test_http2_streams_and_grpc_overflow_with_uo(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    up, held = await held_http_upstream(nursery)
    keys, log_path = access_log(tmp_path)
    config = http_config(
        [to()],
        breakers(up, max_requests=2),
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http1"},
        listener=keys,
    )
    statuses: list[int] = []
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            async with open_h2_client(port) as client, trio.open_nursery() as streams:
                for _ in range(2):

                    async def held_stream() -> None:
                        statuses.append((await client.request("GET", "/held")).status)

                    streams.start_soon(held_stream)
                await held.arrived(2)
                third = await client.request("GET", "/third")
                assert third.status == 503
                grpc = await client.request(
                    "POST",
                    "/pkg.Svc/Call",
                    [("content-type", "application/grpc"), ("te", "trailers")],
                    b"\x00\x00\x00\x00\x00",
                )
                # gRPC reads its status from grpc-status: 14 is UNAVAILABLE
                assert (grpc.status, grpc.headers.get("grpc-status")) == (200, "14")
                assert overflow_count(server) == 2
                held.release.set()
            assert statuses == [200, 200]
    flags = {e["path"]: e["response_flag"] for e in read_access_log(log_path)}
    assert flags["/third"] == "UO" and flags["/pkg.Svc/Call"] == "UO"
    assert held.count == 2


async def test_bolt_third_concurrent_request_gets_the_overflow_reply(nursery: trio.Nursery) -> None:
    up, held = await held_bolt_upstream(nursery)
    config = http_config(
        ANY_SERVICE, breakers(up, max_requests=2), proxy={"downstream_protocol": "bolt"}
    )
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            c = await BoltClient.connect(port)
            await c.send(request(1, b"a"))
            await c.send(request(2, b"b"))
            await held.arrived(2)
            await c.send(request(3, b"c"))
            third = await c.read()
            assert (third.request_id, third.status) == (3, BOLT.status_for(ErrorKind.OVERFLOW))
            assert overflow_count(server) == 1
            held.release.set()
            answered = {(await c.read()).request_id for _ in range(2)}
            assert answered == {1, 2}
            await c.stream.aclose()
    assert held.count == 2


async def counting_503_upstream(nursery: trio.Nursery) -> tuple[int, list[bytes]]:
    seen: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            seen.append(req[0].split(b"\r\n", 1)[0])
            await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")

    return await start_raw_server(nursery, serve), seen


RETRY_TWICE = {"retry_policy": {"retry_on": "5xx", "num_retries": 2}}


async def test_cluster_max_retries_zero_means_no_retry_even_if_the_route_asks(
    nursery: trio.Nursery,
) -> None:
    up, seen = await counting_503_upstream(nursery)
    config = http_config([to(**RETRY_TWICE)], breakers(up, max_retries=0))
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port) as c:
                await c.send(get("/x"))
                assert (await c.response()).status == 503
        stats = server.clusters.get("up").stats
        assert (stats.upstream_rq_retry, stats.upstream_rq_retry_overflow) == (0, 1)
        assert stats.upstream_rq_retry_active == 0
    assert len(seen) == 1


async def test_route_retries_run_within_the_cluster_limit(nursery: trio.Nursery) -> None:
    up, seen = await counting_503_upstream(nursery)
    config = http_config([to(**RETRY_TWICE)], breakers(up, max_retries=3))
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port) as c:
                await c.send(get("/x"))
                assert (await c.response()).status == 503
        stats = server.clusters.get("up").stats
        assert (stats.upstream_rq_retry, stats.upstream_rq_retry_active) == (2, 0)
    assert len(seen) == 3


async def test_route_num_retries_zero_makes_exactly_one_upstream_attempt(
    nursery: trio.Nursery,
) -> None:
    up, seen = await counting_503_upstream(nursery)
    no_retry = {"retry_policy": {"retry_on": True, "num_retries": 0}}
    async with running_proxy(http_config([to(**no_retry)], {"up": up})) as (_, port):
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port) as c:
                await c.send(get("/x"))
                assert (await c.response()).status == 503
    assert len(seen) == 1
