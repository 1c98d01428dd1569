"""``collect(server)``: real traffic through a real proxy, then the stats it reports, by
Envoy's names and tags (docs/metrics.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests import bolt_frames as frames
from tests import dubbo_frames_data as captured
from tests.h2_upstream import h2_request
from tests.http_helpers import (
    Client,
    closed_port,
    gated_upstream,
    get,
    http_config,
    read_request,
    start_proxy,
    start_raw_server,
    start_upstream,
    to,
)
from tests.rpc_helpers import (
    ANY_SERVICE,
    BoltClient,
    DubboPeer,
    echo_upstream,
    provider,
    request,
)
from trio_mesh.admin.target import LocalTarget
from trio_mesh.metrics.collect import collect, envoy_address, version_number
from trio_mesh.metrics.model import ENVOY_BUCKETS_MS, HistogramValue, Metric
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.proxy import xprotocol as xprotocol_proxy
from trio_mesh.server import Server
from trio_mesh.stats import RpcStats


def by_name(server: Server) -> dict[str, Metric]:
    metrics = collect(server)
    names = [m.name for m in metrics]
    assert len(names) == len(set(names)), "a stat reported twice"
    return {m.name: m for m in metrics}


def value(metrics: dict[str, Metric], name: str) -> int | float:
    v = metrics[name].value
    assert not isinstance(v, HistogramValue)
    return v


def histogram(metrics: dict[str, Metric], name: str) -> HistogramValue:
    m = metrics[name]
    assert m.kind == "histogram" and isinstance(m.value, HistogramValue)
    assert len(m.value.counts) == len(ENVOY_BUCKETS_MS) + 1
    return m.value


DOC = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()


def assert_documented(metrics: dict[str, Metric]) -> None:
    """docs/metrics.md names every stat reported (by its stat or its Prometheus family)."""
    for m in metrics.values():
        stat = m.tag_name.split(".", 1)[1]
        assert f"`{stat}`" in DOC or m.prometheus_name() in DOC, m.name


async def wait_closed(server: Server, name: str = "ingress") -> None:
    """Until every downstream connection of the listener has ended (its stats counted)."""
    with trio.fail_after(5):
        await server.listeners[name].wait_closed()


@pytest.fixture
async def upstream(nursery):
    return await start_upstream(nursery)


def test_envoy_address_forms():
    assert envoy_address("127.0.0.1", 8080) == "127.0.0.1_8080"
    assert envoy_address("::1", 8080) == "[__1]_8080"
    assert version_number("1.2.3") == 1_002_003
    assert version_number("0.1.0") == 1000


async def test_http_requests_counted_by_class_with_times_and_connections(nursery, upstream):
    config = http_config([to("up")], {"up": upstream.port})
    server, port = await start_proxy(nursery, config)
    paths = ["/echo"] * 5 + ["/status/503"] * 2 + ["/status/404"]
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for path in paths:
                await client.send(get(path))
                await client.response()
        await wait_closed(server)
    m = by_name(server)
    http = "http.ingress."
    total = m[http + "downstream_rq_total"]
    assert (total.tag_name, total.tags, total.kind) == (
        "http.downstream_rq_total",
        (("envoy_http_conn_manager_prefix", "ingress"),),
        "counter",
    )
    assert total.value == len(paths)
    assert total.prometheus_name() == "envoy_http_downstream_rq_total"
    five = m[http + "downstream_rq_5xx"]
    assert five.tag_name == "http.downstream_rq_xx"
    assert ("envoy_response_code_class", "5") in five.tags
    assert five.prometheus_name() == "envoy_http_downstream_rq_xx"
    counts = [value(m, f"{http}downstream_rq_{k}xx") for k in range(1, 6)]
    assert counts == [0, 5, 0, 1, 2]
    assert (m[http + "downstream_rq_active"].kind, value(m, http + "downstream_rq_active")) == (
        "gauge",
        0,
    )
    rq_time = histogram(m, http + "downstream_rq_time")
    assert rq_time.count == len(paths) and sum(rq_time.counts) == len(paths)
    assert 0 < rq_time.sum < 10_000

    lst = f"listener.127.0.0.1_{port}."
    assert m[lst + "downstream_cx_total"].tags == (("envoy_listener_address", f"127.0.0.1_{port}"),)
    assert m[lst + "downstream_cx_total"].tag_name == "listener.downstream_cx_total"
    assert value(m, lst + "downstream_cx_total") == 1
    assert value(m, lst + "downstream_cx_destroy") == 1
    assert value(m, lst + "downstream_cx_active") == 0
    assert m[lst + "downstream_cx_active"].kind == "gauge"
    assert histogram(m, lst + "downstream_cx_length_ms").count == 1
    assert m[lst + "ssl.handshake"].tag_name == "listener.ssl.handshake"

    up = "cluster.up."
    assert m[up + "upstream_rq_total"].tags == (("envoy_cluster_name", "up"),)
    assert value(m, up + "upstream_rq_total") == len(paths)
    assert [value(m, f"{up}upstream_rq_{k}xx") for k in range(1, 6)] == [0, 5, 0, 1, 2]
    assert m[up + "upstream_rq_2xx"].prometheus_name() == "envoy_cluster_upstream_rq_xx"
    assert histogram(m, up + "upstream_rq_time").count == len(paths)
    assert value(m, up + "upstream_cx_total") == 1
    assert value(m, up + "membership_total") == value(m, up + "membership_healthy") == 1
    for breaker in ("cx_open", "rq_open", "rq_pending_open", "rq_retry_open"):
        assert value(m, f"{up}circuit_breakers.default.{breaker}") == 0

    assert value(m, "server.state") == 0 and value(m, "server.live") == 1
    assert value(m, "server.total_connections") == 0
    assert value(m, "server.memory_allocated") > 1_000_000  # a Python process's RSS
    assert value(m, "server.version") == version_number()
    assert value(m, "server.concurrency") == 1
    assert value(m, "server.uptime") >= 0
    assert_documented(m)
    families: dict[str, str] = {}
    for metric in m.values():  # every family a legal Prometheus name, of one kind
        name = metric.prometheus_name()
        assert re.fullmatch(r"envoy_[a-zA-Z0-9_]+", name), metric
        # prometheus_client names a counter family without its ``_total``
        base = name.removesuffix("_total") if metric.kind == "counter" else name
        assert families.setdefault(base, metric.kind) == metric.kind, metric


async def test_in_flight_request_is_active_until_answered(nursery):
    up_port, arrived, release = await gated_upstream(nursery)
    config = http_config([to("up")], {"up": up_port})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/wait"))
            await arrived.wait()
            m = by_name(server)
            assert value(m, "http.ingress.downstream_rq_active") == 1
            assert value(m, "cluster.up.upstream_rq_active") == 1
            assert value(m, "server.total_connections") == 1
            release.set()
            assert (await client.response()).status == 200
            m = by_name(server)
            assert value(m, "http.ingress.downstream_rq_active") == 0
            assert value(m, "cluster.up.upstream_rq_active") == 0


async def test_client_gone_mid_request_leaves_no_active_request(nursery):
    """The attacker's view: clients that send a request and vanish, and bytes that are not
    HTTP, must not leave ``downstream_rq_active`` counting requests that are over."""
    up_port, arrived, release = await gated_upstream(nursery)
    config = http_config([to("up")], {"up": up_port})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        client = await Client.connect(port)
        await client.send(get("/wait"))
        await arrived.wait()
        await client.aclose()
        async with await Client.connect(port) as bad:
            await bad.send(b"\x00\x01 not http\r\n\r\n")
            assert (await bad.response()).status == 400
        release.set()
        await wait_closed(server)
    m = by_name(server)
    assert value(m, "http.ingress.downstream_rq_active") == 0
    assert value(m, "http.ingress.downstream_rq_4xx") == 1
    assert value(m, f"listener.127.0.0.1_{port}.downstream_cx_destroy") == 2


async def test_per_try_timeout_counted(nursery):
    async def silent(stream):
        buf = bytearray()
        if await read_request(stream, buf) is not None:
            await trio.sleep_forever()

    silent_port = await start_raw_server(nursery, silent)
    policy = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "100ms"}
    config = http_config([to("up", timeout="5s", retry_policy=policy)], {"up": silent_port})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            assert (await client.response()).status == 504
    m = by_name(server)
    assert value(m, "cluster.up.upstream_rq_per_try_timeout") == 2
    assert value(m, "cluster.up.upstream_rq_retry") == 1
    # No response came from the upstream: each try is charged as the 504 it became (Envoy
    # charges aborts as their local reply's code), with its time.
    assert value(m, "cluster.up.upstream_rq_5xx") == 2
    assert histogram(m, "cluster.up.upstream_rq_time").count == 2
    assert histogram(m, "cluster.up.upstream_rq_time").sum >= 2 * 100
    assert value(m, "http.ingress.downstream_rq_5xx") == 1


async def test_a_connect_failure_is_an_upstream_503(nursery):
    config = http_config([to("up")], {"up": closed_port()})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            assert (await client.response()).status == 503
    m = by_name(server)
    assert value(m, "cluster.up.upstream_cx_connect_fail") == 1
    assert value(m, "cluster.up.upstream_rq_5xx") == 1
    assert value(m, "cluster.up.upstream_rq_2xx") == 0


def bolt_config(port: int, service: str = frames.SERVICE):
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": service}]},
            "route": {"cluster_name": "up"},
        }
    ]
    return http_config(routes=routes, clusters={"up": port}, proxy={"downstream_protocol": "bolt"})


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "task-path"])
async def test_bolt_calls_counted_by_protocol_and_status(nursery, monkeypatch, fast):
    # the fast path (no stream filter) and the lifecycle's path (``forward``) count alike
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    up = await echo_upstream(nursery)
    server, port = await start_proxy(nursery, bolt_config(up))
    with trio.fail_after(10):
        client = await BoltClient.connect(port)
        for rid in range(1, 6):
            await client.send(request(rid, b"hi"))
            assert (await client.read()).status == 0
        await client.send(request(9, b"hi", service="com.example.Nobody:1.0"))
        assert (await client.read()).status == 0x0006  # NO_PROCESSOR: no route
        await client.stream.aclose()
        await wait_closed(server)
    m = by_name(server)
    rpc = "rpc.ingress.bolt."
    tags = (("envoy_rpc_prefix", "ingress"), ("envoy_rpc_protocol", "bolt"))
    assert (m[rpc + "downstream_rq_total"].tags, value(m, rpc + "downstream_rq_total")) == (
        tags,
        6,
    )
    ok = m[rpc + "downstream_rq_status.SUCCESS"]
    assert (ok.tag_name, ok.tags, ok.value) == (
        "rpc.downstream_rq_status",
        (*tags, ("envoy_rpc_status", "SUCCESS")),
        5,
    )
    assert ok.prometheus_name() == "envoy_rpc_downstream_rq_status"
    assert value(m, rpc + "downstream_rq_status.NO_PROCESSOR") == 1
    assert value(m, "http.ingress.downstream_rq_total") == 6
    assert value(m, "http.ingress.downstream_rq_active") == 0
    assert histogram(m, "http.ingress.downstream_rq_time").count == 6
    # the fast path's tries: answered by the upstream, timed
    assert value(m, "cluster.up.upstream_rq_2xx") == 5
    assert histogram(m, "cluster.up.upstream_rq_time").count == 5
    # /clusters' per-host counters: the host's five tries, on either path
    (cluster,) = await LocalTarget(server).clusters()
    (host,) = cluster["host_statuses"]
    assert {s["name"]: s["value"] for s in host["stats"]}["rq_total"] == 5
    assert_documented(m)


async def test_http2_streams_counted(nursery, upstream):
    proxy = {"downstream_protocol": "Http2", "upstream_protocol": "Http1"}
    server, port = await start_proxy(
        nursery, http_config([to("up")], {"up": upstream.port}, proxy=proxy)
    )
    statuses = [(await h2_request(port, "GET", path)).status for path in PATHS_H2]
    assert statuses == [200, 200, 503]
    await wait_closed(server)
    m = by_name(server)
    assert [value(m, f"http.ingress.downstream_rq_{k}xx") for k in (2, 5)] == [2, 1]
    assert value(m, "http.ingress.downstream_rq_total") == 3
    assert value(m, "http.ingress.downstream_rq_active") == 0
    assert histogram(m, "http.ingress.downstream_rq_time").count == 3
    assert [value(m, f"cluster.up.upstream_rq_{k}xx") for k in (2, 5)] == [2, 1]
    assert value(m, f"listener.127.0.0.1_{port}.downstream_cx_destroy") == 3


PATHS_H2 = ["/echo", "/echo", "/status/503"]


async def test_dubbo_calls_counted_by_status_name(nursery):
    up = await provider(nursery, "p")  # answers sayHello; SERVICE_ERROR for other methods
    config = http_config(
        routes=ANY_SERVICE, clusters={"up": up}, proxy={"downstream_protocol": "dubbo"}
    )
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        peer = await DubboPeer.connect(port)
        await peer.stream.send_all(captured.SAY_HELLO)
        assert (await peer.read()).status == df.Status.OK
        await peer.stream.send_all(captured.NO_ARGS)
        assert (await peer.read()).status == df.Status.SERVICE_ERROR
        await peer.stream.aclose()
        await wait_closed(server)
    m = by_name(server)
    rpc = "rpc.ingress.dubbo."
    assert value(m, rpc + "downstream_rq_total") == 2
    assert value(m, rpc + "downstream_rq_status.OK") == 1
    assert value(m, rpc + "downstream_rq_status.SERVICE_ERROR") == 1
    # MOSN's mapping: an error response is a 5xx, from the upstream and to the client
    assert [value(m, f"cluster.up.upstream_rq_{k}xx") for k in (2, 5)] == [1, 1]
    assert [value(m, f"http.ingress.downstream_rq_{k}xx") for k in (2, 5)] == [1, 1]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "task-path"])
async def test_bolt_timeout_counted_as_the_codec_status(nursery, monkeypatch, fast):
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    up = await echo_upstream(nursery, delay=5)
    route = {"cluster_name": "up", "timeout": "100ms"}
    routes = [
        {"match": {"headers": [{"name": "service", "value": frames.SERVICE}]}, "route": route}
    ]
    config = http_config(routes=routes, clusters={"up": up}, proxy={"downstream_protocol": "bolt"})
    server, port = await start_proxy(nursery, config)
    with trio.fail_after(10):
        client = await BoltClient.connect(port)
        await client.send(request(1, b"hi"))
        assert (await client.read()).status == 0x0007  # TIMEOUT
    m = by_name(server)
    assert value(m, "rpc.ingress.bolt.downstream_rq_status.TIMEOUT") == 1
    assert value(m, "cluster.up.upstream_rq_timeout") == 1
    # No response came: the try is charged as the 504 it became, on both paths.
    assert histogram(m, "cluster.up.upstream_rq_time").count == 1
    assert value(m, "cluster.up.upstream_rq_5xx") == 1
    assert value(m, "http.ingress.downstream_rq_5xx") == 1
    assert value(m, "http.ingress.downstream_rq_active") == 0


async def test_an_upstream_inventing_statuses_cannot_flood_the_series(nursery):
    """The attacker's upstream answers each call with another made-up bolt status: the
    statuses past the bound are counted together, as OTHER, not one series each."""

    async def inventive(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        status = 0x1000  # no such ResponseStatus, nor the ones after it
        try:
            while True:
                frame = await peer.read()
                status += 1
                await stream.send_all(bytes(BOLT.build_response(frame.request_id, status).data))
        except (EOFError, trio.BrokenResourceError):
            pass

    up = await start_raw_server(nursery, inventive)
    server, port = await start_proxy(nursery, bolt_config(up))
    calls = RpcStats.MAX_STATUSES + 20
    with trio.fail_after(10):
        client = await BoltClient.connect(port)
        for rid in range(1, calls + 1):
            await client.send(request(rid, b"x"))
            assert (await client.read()).status == 0x1000 + rid  # one connection, in order
    m = by_name(server)
    statuses = [n for n in m if n.startswith("rpc.ingress.bolt.downstream_rq_status.")]
    assert len(statuses) == RpcStats.MAX_STATUSES + 1
    assert value(m, "rpc.ingress.bolt.downstream_rq_status.OTHER") == 20
    assert value(m, f"rpc.ingress.bolt.downstream_rq_status.{0x1001}") == 1  # unnamed: its number
    assert value(m, "rpc.ingress.bolt.downstream_rq_total") == calls
