"""The ``mirror`` stream filter end to end: real proxy, a real main upstream and real shadow
upstreams (h11, and raw h2 for shadows sent over HTTP/2). What the shadow receives is compared
with what the client sent; a stuck, slow, absent or overloaded shadow must leave the main
requests alone. Every wait is on state (events, ``wait_until``) under a deadline."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.h2_upstream import h2_request, open_h2_client, start_h2_upstream
from tests.http_helpers import (
    Client,
    closed_port,
    echoed,
    get,
    http_config,
    request,
    running_proxy,
    to,
    upstream_headers,
)
from tests.upstream import Upstream, pattern_bytes
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.stream_filters.mirror import MirrorConfig
from trio_mesh.filters import BuildContext
from trio_mesh.filters import mirror as mirror_module
from trio_mesh.filters.mirror import MirrorFilter, MirrorStats, mirror_stats, shadow_authority
from trio_mesh.filters.stream import RequestContext
from trio_mesh.upstream import ClusterManager


class Watched(Upstream):
    """An h11 upstream whose state changes can be waited on; ``stuck``: it takes each
    request and never answers (it waits for the proxy to give up on the connection)."""

    def __init__(self, stuck: bool = False) -> None:
        super().__init__()
        self.stuck = stuck
        self.holding = 0  # requests taken and not answered
        self.abandoned = 0  # of those, the proxy closed the connection
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def _respond(self, conn, stream, request, info) -> bool:
        if not self.stuck:
            keep = await super()._respond(conn, stream, request, info)
            self.notify()
            return keep
        self.holding += 1
        self.notify()
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        self.abandoned += 1
        self.notify()
        return False


async def watched(nursery: trio.Nursery, stuck: bool = False) -> Watched:
    up = Watched(stuck)
    await up.start(nursery)
    return up


class Runs:
    """Each finished shadow request (``_Factory._run``) wakes ``wait_until``."""

    def __init__(self) -> None:
        self.finished = 0
        self._changed = trio.Event()

    def notify(self) -> None:
        self.finished += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], object], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Runs:
    watcher = Runs()
    original = mirror_module._Factory._run

    async def run(self, *args: Any) -> None:
        try:
            await original(self, *args)
        finally:
            watcher.notify()

    monkeypatch.setattr(mirror_module._Factory, "_run", run)
    return watcher


def mirror_config(
    main: int,
    shadow: int | list[int] | dict[str, Any],
    config: dict[str, Any] | None = None,
    routes: list | None = None,
):
    listener = {
        "stream_filters": [{"type": "mirror", "config": {"cluster": "shadow", **(config or {})}}]
    }
    return http_config(routes or [to()], {"up": main, "shadow": shadow}, listener=listener)


def stats_of(server) -> MirrorStats:
    return mirror_stats(server.clusters)[("ingress", "shadow")]


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def chunked_post(path: str, pieces: list[bytes]) -> bytes:
    out = f"POST {path} HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = out.encode()
    for piece in pieces:
        wire += b"%x\r\n%b\r\n" % (len(piece), piece)
    return wire + b"0\r\n\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- what is copied


def test_shadow_authority() -> None:
    assert shadow_authority("example.com") == "example.com-shadow"
    assert shadow_authority("example.com:8080") == "example.com-shadow:8080"
    assert shadow_authority("[::1]:80") == "[::1]-shadow:80"
    assert shadow_authority("[::1]") == "[::1]-shadow"
    assert shadow_authority("10.0.0.1") == "10.0.0.1-shadow"


async def test_every_request_is_copied_to_the_shadow(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    body = pattern_bytes(20000)
    async with running_proxy(mirror_config(main.port, shadow.port)) as (server, port):
        got = await request(port, get("/echo?a=1", headers="X-Custom: yes\r\n"))
        posted = await request(port, post("/echo/post", body))
        chunked = await request(port, chunked_post("/echo/chunked", [b"abc", b"defgh" * 100]))
        await runs.wait_until(lambda: runs.finished == 3)
        stats = stats_of(server)
    assert [r.status for r in (got, posted, chunked)] == [200, 200, 200]
    assert echoed(got)["headers"].get("host") == "example.com"  # the main request: unchanged
    by_target = {r["target"]: r for r in shadow.requests}
    first = by_target["/echo?a=1"]
    assert first["method"] == "GET" and first["body_length"] == 0
    headers = upstream_headers(first)
    assert headers.get("host") == "example.com-shadow"
    assert headers.get("x-custom") == "yes"
    second = by_target["/echo/post"]
    assert second["method"] == "POST"
    assert (second["body_length"], second["body_sha256"]) == (20000, sha(body))
    third = by_target["/echo/chunked"]
    assert (third["body_length"], third["body_sha256"]) == (503, sha(b"abc" + b"defgh" * 100))
    # the shadow gets a whole body, so it is sent with its length
    assert upstream_headers(third).get("content-length") == "503"
    assert "transfer-encoding" not in upstream_headers(third)
    assert [r["target"] for r in main.requests] == ["/echo?a=1", "/echo/post", "/echo/chunked"]
    assert (stats.mirrored, stats.completed, stats.failed, stats.dropped) == (3, 3, 0, 0)
    # the shadow cluster's own counters count its requests (as Envoy's do)
    assert server.clusters.clusters["shadow"].stats.upstream_rq_total == 3


async def test_shadow_connections_are_pooled(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    async with running_proxy(mirror_config(main.port, shadow.port)) as (server, port):
        async with await Client.connect(port) as client:
            for i in range(5):
                await client.send(get(f"/echo/{i}"))
                assert (await client.response()).status == 200
                await runs.wait_until(lambda i=i: runs.finished == i + 1)
    assert stats_of(server).completed == 5
    assert len(shadow.requests) == 5
    assert shadow.connections == 1  # one after the other: the idle connection is reused


async def test_route_rewrites_apply_to_the_copy(nursery):
    main, shadow = await watched(nursery), await watched(nursery)
    routes = [
        to(
            prefix="/api/",
            prefix_rewrite="/v2/",
            host_rewrite="backend.internal",
            request_headers_to_add=[{"header": {"key": "x-route", "value": "api"}}],
        )
    ]
    async with running_proxy(mirror_config(main.port, shadow.port, routes=routes)) as (_, port):
        assert (await request(port, get("/api/echo"))).status == 200
        await shadow.wait_until(lambda: len(shadow.requests) == 1)
    (copy,) = shadow.requests
    assert copy["target"] == main.requests[0]["target"] == "/v2/echo"
    assert upstream_headers(copy).get("host") == "backend.internal-shadow"
    assert upstream_headers(copy).get("x-route") == "api"


async def test_percent_draw(nursery, monkeypatch):
    main, shadow = await watched(nursery), await watched(nursery)
    draws = iter([0.10, 0.30, 0.2499, 0.25])  # percent 25: below 0.25 mirrors
    monkeypatch.setattr(mirror_module, "random", lambda: next(draws))
    config = mirror_config(main.port, shadow.port, {"percent": 25})
    async with running_proxy(config) as (server, port):
        for i in range(4):
            assert (await request(port, get(f"/echo/{i}"))).status == 200
        await shadow.wait_until(lambda: len(shadow.requests) == 2)
        assert stats_of(server).mirrored == 2
    assert sorted(r["target"] for r in shadow.requests) == ["/echo/0", "/echo/2"]


async def test_zero_percent_never_and_per_route_policy(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    routes = [
        {**to(prefix="/m/"), "per_filter_config": {"mirror": {"cluster": "shadow"}}},
        {**to(prefix="/off/"), "per_filter_config": {"mirror": {"disabled": True}}},
        to(),
    ]
    config = mirror_config(main.port, shadow.port, {"percent": 0}, routes=routes)
    async with running_proxy(config) as (server, port):
        for _ in range(20):
            assert (await request(port, get("/echo"))).status == 200
            assert (await request(port, get("/off/echo"))).status == 200
        assert (await request(port, get("/m/echo"))).status == 200
        await runs.wait_until(lambda: runs.finished == 1)
        stats = stats_of(server)  # the route's config shares the listener's counters
    assert len(main.requests) == 41
    assert [r["target"] for r in shadow.requests] == ["/m/echo"]
    assert stats.mirrored == 1 and shadow.connections == 1


async def test_amplification_and_broadcast(nursery, runs):
    main = await watched(nursery)
    shadows = [await watched(nursery) for _ in range(3)]
    ports = [s.port for s in shadows]
    config = mirror_config(main.port, ports, {"amplification": 4})
    async with running_proxy(config) as (server, port):
        assert (await request(port, get("/echo/amp"))).status == 200
        await runs.wait_until(lambda: runs.finished == 4)
        assert stats_of(server).completed == 4
    assert sum(len(s.requests) for s in shadows) == 4  # round robin picks each copy's host
    for s in shadows:
        s.requests.clear()
    config = mirror_config(main.port, ports, {"broadcast": True, "amplification": 5})
    async with running_proxy(config) as (server, port):
        assert (await request(port, get("/echo/all"))).status == 200
        await runs.wait_until(lambda: runs.finished == 7)
        assert stats_of(server).completed == 3
    assert [[r["target"] for r in s.requests] for s in shadows] == [["/echo/all"]] * 3


async def test_body_over_the_limit_is_not_mirrored(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    config = mirror_config(main.port, shadow.port, {"max_body_bytes": 1000})
    async with running_proxy(config) as (server, port):
        declared = await request(port, post("/echo/declared", b"x" * 1001))
        streamed = await request(port, chunked_post("/echo/streamed", [b"y" * 600, b"z" * 600]))
        fits = await request(port, post("/echo/fits", b"w" * 1000))
        await runs.wait_until(lambda: runs.finished == 1)
        stats = stats_of(server)
    # the main requests went whole
    assert [echoed(r)["body_length"] for r in (declared, streamed, fits)] == [1001, 1200, 1000]
    assert [r["target"] for r in shadow.requests] == ["/echo/fits"]
    assert (stats.too_large, stats.mirrored) == (2, 1)


async def test_upgrade_requests_are_not_mirrored(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    async with running_proxy(mirror_config(main.port, shadow.port)) as (server, port):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            switched = await client.response(interim=True)
            assert switched.status == 101
            await client.send(b"ping")
            assert await client._exactly(4) == b"ping"
        assert (await request(port, get("/echo"))).status == 200
        await runs.wait_until(lambda: runs.finished == 1)
        stats = stats_of(server)
    assert [r["target"] for r in shadow.requests] == ["/echo"]
    assert stats.unsupported == 1


# --------------------------------------------------------------------------- never in the way


async def test_a_stuck_shadow_does_not_slow_the_main_path(nursery):
    """The shadow takes each copy and never answers: every main response arrives while the
    shadow is still holding the copies, on one connection and on several."""
    main, shadow = await watched(nursery), await watched(nursery, stuck=True)
    config = mirror_config(main.port, shadow.port, {"timeout": "60s"})
    async with running_proxy(config) as (server, port):
        with trio.fail_after(10):
            async with await Client.connect(port) as client:
                for i in range(10):
                    await client.send(post(f"/echo/{i}", b"body %d" % i))
                    response = await client.response()
                    assert echoed(response)["target"] == f"/echo/{i}"
            async with trio.open_nursery() as clients:
                for i in range(10, 20):
                    clients.start_soon(request, port, get(f"/echo/{i}"))
        assert len(main.requests) == 20
        # every copy reached the shadow, which has answered none of them
        await shadow.wait_until(lambda: shadow.holding == 20)
        assert shadow.abandoned == 0
        stats = stats_of(server)
        assert (stats.mirrored, stats.completed, stats.failed, stats.timeout) == (20, 0, 0, 0)


async def test_a_slow_shadow_times_out_and_its_connection_closes(nursery):
    main, shadow = await watched(nursery), await watched(nursery, stuck=True)
    config = mirror_config(main.port, shadow.port, {"timeout": "200ms"})
    async with running_proxy(config) as (server, port):
        response = await request(port, get("/echo"))
        assert response.status == 200
        await shadow.wait_until(lambda: shadow.abandoned == 1)  # the proxy gave up on it
        stats = stats_of(server)
        assert (stats.timeout, stats.completed, stats.failed) == (1, 0, 0)
        assert server.clusters.clusters["shadow"].stats.upstream_rq_timeout == 1
        # and the next copy goes on a new connection
        assert (await request(port, get("/echo"))).status == 200
        await shadow.wait_until(lambda: shadow.holding == 2)
    assert shadow.connections == 2


async def test_shadow_down_leaves_the_main_request_alone(nursery, runs):
    main = await watched(nursery)
    config = mirror_config(main.port, closed_port())
    async with running_proxy(config) as (server, port):
        with trio.fail_after(5):
            for i in range(3):
                response = await request(port, post(f"/echo/{i}", b"data"))
                assert echoed(response)["body_length"] == 4
        await runs.wait_until(lambda: runs.finished == 3)
        stats = stats_of(server)
    assert (stats.mirrored, stats.failed, stats.completed) == (3, 3, 0)
    assert len(main.requests) == 3


async def test_background_limit_drops_copies_not_requests(nursery):
    main, shadow = await watched(nursery), await watched(nursery, stuck=True)
    config = mirror_config(main.port, shadow.port, {"timeout": "60s"})
    async with running_proxy(config) as (server, port):
        server.background.limit = 2
        for i in range(6):
            response = await request(port, get(f"/echo/{i}"))
            assert response.status == 200
        await shadow.wait_until(lambda: shadow.holding == 2)
        stats = stats_of(server)
        assert (stats.mirrored, stats.dropped) == (2, 4)
        assert server.background.dropped == 4
    assert len(main.requests) == 6
    assert sorted(r["target"] for r in shadow.requests) == ["/echo/0", "/echo/1"]


async def test_main_upstream_down_still_mirrors_bodyless_requests(nursery, runs):
    """The copy goes as the request passes the filter: the main upstream's failure is the
    main request's (503), the shadow still gets its copy."""
    shadow = await watched(nursery)
    async with running_proxy(mirror_config(closed_port(), shadow.port)) as (server, port):
        response = await request(port, get("/echo"))
        await runs.wait_until(lambda: runs.finished == 1)
    assert response.status == 503
    assert [r["target"] for r in shadow.requests] == ["/echo"]
    assert stats_of(server).completed == 1


# --------------------------------------------------------------------------- HTTP/2 shadow


async def test_shadow_over_http2(nursery):
    """``upstream_protocol: Http2``: the copy goes as an HTTP/2 stream (how gRPC requests go
    with Auto), authority suffixed, body in DATA frames."""
    main = await watched(nursery)
    shadow = await start_h2_upstream(nursery)
    body = pattern_bytes(30000)
    config = mirror_config(main.port, shadow.port, {"upstream_protocol": "Http2"})
    async with running_proxy(config) as (server, port):
        assert (await request(port, post("/upload", body, "X-Custom: h2\r\n"))).status == 200
        assert (await request(port, get("/echo"))).status == 200
        await shadow.wait_until(lambda: len(shadow.requests) == 2)
        stats = stats_of(server)
        await shadow.wait_until(lambda: shadow.bytes_consumed == 30000)
    (upload_path, upload), (echo_path, echo) = shadow.requests
    assert (upload_path, echo_path) == ("/upload", "/echo")
    assert upload.get(":method") == "POST"
    assert upload.get(":authority") == "example.com-shadow"
    assert upload.get("x-custom") == "h2"
    assert "host" not in upload
    assert echo.get(":method") == "GET"
    assert shadow.bytes_received == 30000
    assert shadow.connections == 1
    assert stats.failed == 0


# --------------------------------------------------------------------------- config


def test_unknown_shadow_cluster_is_a_load_error():
    with pytest.raises(ConfigError) as info:
        http_config(
            [to()],
            {"up": 1},
            listener={"stream_filters": [{"type": "mirror", "config": {"cluster": "nope"}}]},
        )
    assert "stream_filters[0].config.cluster: unknown cluster 'nope' (defined: up)" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"cluster": "up", "percent": 101}, "config.percent: expected 0 to 100, got 101"),
        ({"cluster": "up", "percent": -1}, "config.percent: expected 0 to 100, got -1"),
        ({"cluster": "up", "timeout": "0s"}, "config.timeout: a shadow request needs a timeout"),
        ({"cluster": "up", "amplification": 0}, "config.amplification: expected an integer"),
        ({"cluster": "up", "max_body_bytes": -5}, "config.max_body_bytes: expected 0 or more"),
        ({"cluster": "up", "upstream_protocol": "Http3"}, "config.upstream_protocol"),
        ({}, "config.cluster: required field missing"),
    ],
)
def test_config_errors(config, error):
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "stream_filters": [{"type": "mirror", "config": config}],
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [{"router_config_name": "r"}],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert f"servers[0].listeners[0].stream_filters[0].{error}" in str(info.value)


# --------------------------------------------------------------------------- HTTP/2 downstream


def h2_mirror_config(main: int, shadow: int, upstream: str, config: dict | None = None):
    listener = {
        "stream_filters": [{"type": "mirror", "config": {"cluster": "shadow", **(config or {})}}]
    }
    proxy = {"downstream_protocol": "Http2", "upstream_protocol": upstream}
    return http_config([to()], {"up": main, "shadow": shadow}, proxy=proxy, listener=listener)


async def test_h2_request_is_mirrored_as_http1(nursery, runs):
    main, shadow = await watched(nursery), await watched(nursery)
    body = pattern_bytes(40000)
    headers = [("x-custom", "h2"), ("cookie", "a=1"), ("cookie", "b=2")]
    config = h2_mirror_config(main.port, shadow.port, "Http1")
    async with running_proxy(config) as (server, port):
        async with open_h2_client(port, authority="api.example:8443") as client:
            posted = await client.request("POST", "/echo/h2?q=1", headers, body)
            got = await client.request("GET", "/echo/get")
        await runs.wait_until(lambda: runs.finished == 2)
        stats = stats_of(server)
    assert (posted.status, got.status) == (200, 200)
    by_target = {r["target"]: r for r in shadow.requests}
    copy = by_target["/echo/h2?q=1"]
    assert copy["method"] == "POST"
    assert (copy["body_length"], copy["body_sha256"]) == (40000, sha(body))
    copied = upstream_headers(copy)
    assert copied.get("host") == "api.example-shadow:8443"
    assert copied.get("x-custom") == "h2"
    assert copied.getall("cookie") == ["a=1; b=2"]  # one field again for HTTP/1
    assert upstream_headers(by_target["/echo/get"]).get("content-length") is None
    assert (stats.mirrored, stats.completed) == (2, 2)


async def test_grpc_is_mirrored_over_http2(nursery, runs):
    main, shadow = await start_h2_upstream(nursery), await start_h2_upstream(nursery)
    message = b"\x00\x00\x00\x00\x05hello"
    grpc = [("content-type", "application/grpc"), ("te", "trailers"), ("x-custom", "g")]
    config = h2_mirror_config(main.port, shadow.port, "Auto")
    async with running_proxy(config) as (server, port):
        response = await h2_request(
            port, "POST", "/echo", grpc, body=message, authority="svc.local"
        )
        await runs.wait_until(lambda: runs.finished == 1)
        stats = stats_of(server)
    assert response.status == 200
    ((path, headers),) = shadow.requests
    assert path == "/echo"
    assert headers.get(":authority") == "svc.local-shadow"
    assert headers.get(":method") == "POST"
    assert headers.get("content-type") == "application/grpc"
    assert headers.get("te") == "trailers"
    assert headers.get("x-custom") == "g"
    assert shadow.bytes_received == len(message)
    assert stats.completed == 1


async def test_h2_stuck_shadow_does_not_slow_concurrent_streams(nursery):
    main, shadow = await watched(nursery), await watched(nursery, stuck=True)
    config = h2_mirror_config(main.port, shadow.port, "Http1", {"timeout": "60s"})
    async with running_proxy(config) as (server, port):
        with trio.fail_after(10):
            async with open_h2_client(port) as client:
                responses: list = []

                async def one(i: int) -> None:
                    responses.append(await client.request("POST", f"/echo/{i}", body=b"%d" % i))

                async with trio.open_nursery() as streams:
                    for i in range(10):
                        streams.start_soon(one, i)
        assert sorted(r.json()["target"] for r in responses) == sorted(
            f"/echo/{i}" for i in range(10)
        )
        await shadow.wait_until(lambda: shadow.holding == 10)
        assert shadow.abandoned == 0
        assert stats_of(server).completed == 0


# --------------------------------------------------------------------------- what gets a filter


def test_rpc_and_unrouted_requests_get_no_mirror() -> None:
    config = http_config([to()], {"up": 1})
    build = BuildContext(clusters=ClusterManager(config.cluster_manager.clusters), listener="l")
    make = MirrorFilter.factory(MirrorConfig(cluster="up"), build)
    assert make(RequestContext("bolt", cluster="up")) is None  # RPC: not mirrored (docs)
    assert make(RequestContext("dubbo", cluster="up")) is None
    assert make(RequestContext("HTTP/1.1", cluster=None)) is None  # no route, or the router's
    assert isinstance(make(RequestContext("HTTP/2", cluster="up", grpc=True)), MirrorFilter)
    assert isinstance(make(RequestContext("HTTP/1.1", cluster="up")), MirrorFilter)
    assert mirror_stats(build.clusters)[("l", "up")].mirrored == 0
