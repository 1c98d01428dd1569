"""Outlier detection (issue 18): a host failing tries in a row is ejected from the balancer,
comes back when its time is up and is ejected for longer the next time; max_ejection_percent
keeps hosts in; connect failures count as local-origin (or gateway) failures; bolt error
responses eject an RPC upstream. Real upstreams and the real proxy on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.h2_upstream import open_h2_client
from tests.http_helpers import (
    Client,
    closed_port,
    get,
    http_config,
    read_request,
    running_proxy,
    start_raw_server,
    to,
)
from tests.rpc_helpers import ANY_SERVICE, BoltClient, request
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus
from trio_mesh.proxy import xprotocol as xprotocol_proxy
from trio_mesh.upstream.host import Host

TIMEOUT = 10  # only reached when something is broken


class Counted:
    """An upstream's requests seen."""

    def __init__(self) -> None:
        self.count = 0


async def status_upstream(nursery: trio.Nursery, status: int) -> tuple[int, Counted]:
    """A raw HTTP/1.1 upstream answering every request with ``status``."""
    seen = Counted()
    reason = b"OK" if status == 200 else b"Service Unavailable"
    answer = b"HTTP/1.1 %d %s\r\ncontent-length: 2\r\n\r\nhi" % (status, reason)

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        try:
            while await read_request(stream, buf) is not None:
                seen.count += 1
                await stream.send_all(answer)
        except trio.BrokenResourceError:
            pass

    return await start_raw_server(nursery, serve), seen


def hosts(ports: list[int]) -> list[dict[str, Any]]:
    return [{"address": f"127.0.0.1:{p}"} for p in ports]


def cluster(ports: list[int], **outlier: Any) -> dict[str, Any]:
    return {
        "up": {
            "lb_type": "LB_ROUNDROBIN",
            "hosts": hosts(ports),
            "outlier_detection": outlier,
        }
    }


def host_of(server: Any, port: int) -> Host:
    return next(h for h in server.clusters.get("up").hosts if h.port == port)


async def statuses(port: int, n: int) -> list[int]:
    out = []
    async with await Client.connect(port) as c:
        for _ in range(n):
            await c.send(get("/"))
            out.append((await c.response()).status)
    return out


async def until(predicate: Any) -> None:
    """Poll the proxy's state (the detector's timer changes it) within the test's deadline."""
    while not predicate():
        await trio.sleep(0.01)


async def test_5xx_host_is_ejected_returns_and_is_ejected_longer(nursery: trio.Nursery) -> None:
    good, good_seen = await status_upstream(nursery, 200)
    bad, bad_seen = await status_upstream(nursery, 503)
    config = http_config([to()], cluster([good, bad], interval="50ms", base_ejection_time="200ms"))
    async with running_proxy(config) as (server, port):
        stats = server.clusters.get("up").stats
        bad_host = host_of(server, bad)
        with trio.fail_after(TIMEOUT):
            # round robin: the 5th 503 comes within 10 requests
            got = await statuses(port, 10)
            assert got.count(503) == 5 and bad_seen.count == 5
            assert bad_host.ejected and not bad_host.usable
            assert stats.outlier_detection_ejections_enforced_consecutive_5xx == 1
            assert stats.outlier_detection_ejections_enforced_total == 1
            assert stats.outlier_detection_ejections_active == 1
            # ejected: every request goes to the good host
            assert await statuses(port, 20) == [200] * 20
            assert bad_seen.count == 5
            await until(lambda: not bad_host.ejected)
            first = bad_host.od_unejected_at - bad_host.od_ejected_at
            assert first >= 0.2
            assert stats.outlier_detection_ejections_active == 0
            # back in rotation: it gets traffic, fails 5 more and is ejected for longer
            got = await statuses(port, 10)
            assert got.count(503) == 5 and bad_seen.count == 10
            assert bad_host.ejected and bad_host.od_ejections == 2
            assert stats.outlier_detection_ejections_enforced_total == 2
            assert await statuses(port, 10) == [200] * 10
            await until(lambda: not bad_host.ejected)
            assert bad_host.od_unejected_at - bad_host.od_ejected_at >= 0.4
    assert good_seen.count == 40


async def test_max_ejection_percent_keeps_a_host(nursery: trio.Nursery) -> None:
    """Both hosts fail: the default 10% still ejects one (at least one host always can be),
    never the second one: that one keeps the traffic and the refusal is counted."""
    a, a_seen = await status_upstream(nursery, 503)
    b, b_seen = await status_upstream(nursery, 503)
    config = http_config([to()], cluster([a, b], consecutive_5xx=3, base_ejection_time="30s"))
    async with running_proxy(config) as (server, port):
        stats = server.clusters.get("up").stats
        with trio.fail_after(TIMEOUT):
            assert await statuses(port, 30) == [503] * 30
        hosts = server.clusters.get("up").hosts
        assert sorted(h.ejected for h in hosts) == [False, True]
        assert stats.outlier_detection_ejections_enforced_total == 1
        assert stats.outlier_detection_ejections_active == 1
        assert stats.outlier_detection_ejections_overflow >= 1
        # the one left took every request after the ejection
        assert max(a_seen.count, b_seen.count) >= 25 and a_seen.count + b_seen.count == 30


@pytest.mark.parametrize(
    ("keys", "counter"),
    [
        (
            {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 3},
            "outlier_detection_ejections_enforced_consecutive_local_origin_failure",
        ),
        (
            # without the split a connect failure counts as a 503: a gateway failure
            {
                "consecutive_5xx": 0,
                "consecutive_gateway_failure": 3,
                "enforcing_consecutive_gateway_failure": 100,
            },
            "outlier_detection_ejections_enforced_consecutive_gateway_failure",
        ),
    ],
)
async def test_connect_failures_eject(
    nursery: trio.Nursery, keys: dict[str, Any], counter: str
) -> None:
    good, good_seen = await status_upstream(nursery, 200)
    dead = closed_port()
    config = http_config([to()], cluster([good, dead], base_ejection_time="30s", **keys))
    async with running_proxy(config) as (server, port):
        stats = server.clusters.get("up").stats
        with trio.fail_after(TIMEOUT):
            got = await statuses(port, 6)
            assert got.count(503) == 3
            assert host_of(server, dead).ejected
            assert getattr(stats, counter) == 1
            assert stats.outlier_detection_ejections_enforced_total == 1
            assert await statuses(port, 10) == [200] * 10
    assert good_seen.count == 13


async def test_gateway_failures_do_not_eject_by_default(nursery: trio.Nursery) -> None:
    """Envoy's enforcing_consecutive_gateway_failure is 0: detected, not enforced."""
    good, _ = await status_upstream(nursery, 200)
    dead = closed_port()
    config = http_config(
        [to()], cluster([good, dead], consecutive_5xx=0, consecutive_gateway_failure=2)
    )
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            got = await statuses(port, 12)
        assert got.count(503) == 6
        assert not host_of(server, dead).ejected
        assert server.clusters.get("up").stats.outlier_detection_ejections_enforced_total == 0


async def bolt_upstream(nursery: trio.Nursery, status: int) -> tuple[int, Counted]:
    """A raw bolt server answering every request with ``status``."""
    seen = Counted()

    async def serve(stream: trio.SocketStream) -> None:
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    continue
                seen.count += 1
                resp = BOLT.build_response(frame.request_id, status, content=b"r")
                await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass

    return await start_raw_server(nursery, serve), seen


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "task-path"])
async def test_bolt_error_responses_eject_an_rpc_upstream(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    good, good_seen = await bolt_upstream(nursery, ResponseStatus.SUCCESS)
    bad, bad_seen = await bolt_upstream(nursery, ResponseStatus.SERVER_EXCEPTION)
    config = http_config(
        ANY_SERVICE,
        cluster([good, bad], consecutive_5xx=3, base_ejection_time="30s"),
        proxy={"downstream_protocol": "bolt"},
    )
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            c = await BoltClient.connect(port)
            results = []
            for rid in range(1, 21):
                await c.send(request(rid, b"x"))
                results.append((await c.read()).status)
            await c.stream.aclose()
        assert host_of(server, bad).ejected
        assert server.clusters.get("up").stats.outlier_detection_ejections_enforced_total == 1
        assert bad_seen.count == 3  # none after the third error
        assert results.count(ResponseStatus.SERVER_EXCEPTION) == 3
        assert good_seen.count == 17


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "task-path"])
async def test_bolt_connect_failures_eject(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    monkeypatch.setattr(xprotocol_proxy, "FAST_PATH", fast)
    good, good_seen = await bolt_upstream(nursery, ResponseStatus.SUCCESS)
    dead = closed_port()
    config = http_config(
        ANY_SERVICE,
        cluster([good, dead], consecutive_5xx=2, base_ejection_time="30s"),
        proxy={"downstream_protocol": "bolt"},
    )
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            c = await BoltClient.connect(port)
            results = []
            for rid in range(1, 11):
                await c.send(request(rid, b"x"))
                results.append((await c.read()).status)
            await c.stream.aclose()
        assert host_of(server, dead).ejected
        assert results.count(ResponseStatus.SUCCESS) == 8
        assert good_seen.count == 8


async def test_a_reload_without_outlier_detection_brings_ejected_hosts_back(
    nursery: trio.Nursery,
) -> None:
    good, _ = await status_upstream(nursery, 200)
    bad, bad_seen = await status_upstream(nursery, 503)
    config = http_config([to()], cluster([good, bad], consecutive_5xx=2))
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            await statuses(port, 4)
            bad_host = host_of(server, bad)
            assert bad_host.ejected
            cl = server.clusters.get("up")
            await server.apply(http_config([to()], [{"name": "up", "hosts": hosts([good, bad])}]))
            assert server.clusters.get("up") is cl  # updated in place: the same hosts
            assert cl.outlier is None and not bad_host.ejected and bad_host.usable
            assert (await statuses(port, 4)).count(503) == 2
            assert bad_seen.count == 4


async def test_stats_carry_envoys_outlier_names(nursery: trio.Nursery) -> None:
    good, _ = await status_upstream(nursery, 200)
    bad, _ = await status_upstream(nursery, 503)
    config = http_config([to()], cluster([good, bad], consecutive_5xx=1))
    async with running_proxy(config) as (server, port):
        with trio.fail_after(TIMEOUT):
            await statuses(port, 2)
            metrics = {m.name: m for m in await server.collect_metrics()}
    active = metrics["cluster.up.outlier_detection.ejections_active"]
    assert (active.kind, active.value) == ("gauge", 1)
    assert active.tag_name == "cluster.outlier_detection.ejections_active"
    total = metrics["cluster.up.outlier_detection.ejections_enforced_total"]
    assert (total.kind, total.value) == ("counter", 1)
    assert metrics["cluster.up.outlier_detection.ejections_enforced_consecutive_5xx"].value == 1
    assert metrics["cluster.up.outlier_detection.ejections_overflow"].value == 0


async def test_a_reload_turning_it_on_starts_the_interval_task(nursery: trio.Nursery) -> None:
    good, _ = await status_upstream(nursery, 200)
    bad, bad_seen = await status_upstream(nursery, 503)
    plain = [{"name": "up", "lb_type": "LB_ROUNDROBIN", "hosts": hosts([good, bad])}]
    async with running_proxy(http_config([to()], plain)) as (server, port):
        with trio.fail_after(TIMEOUT):
            assert (await statuses(port, 4)).count(503) == 2  # the pools run, no detector
            cl = server.clusters.get("up")
            assert cl.outlier is None
            keys = {"consecutive_5xx": 2, "interval": "50ms", "base_ejection_time": "100ms"}
            await server.apply(http_config([to()], cluster([good, bad], **keys)))
            assert server.clusters.get("up") is cl and cl.outlier is not None
            await statuses(port, 4)
            bad_host = host_of(server, bad)
            assert bad_host.ejected
            await until(lambda: not bad_host.ejected)  # the pools' next second starts its timer
            assert bad_seen.count == 4


async def test_clients_resetting_their_streams_eject_nothing(nursery: trio.Nursery) -> None:
    """The attacker's way to a host's ejection would be its own aborts: a client that resets
    its streams while the upstream works is no failure of the upstream."""
    arrived = Counted()

    async def silent(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            arrived.count += 1  # and never answered

    held = await start_raw_server(nursery, silent)
    keys = {
        "consecutive_5xx": 1,
        "consecutive_gateway_failure": 1,
        "enforcing_consecutive_gateway_failure": 100,
    }
    config = http_config(
        [to()],
        cluster([held], **keys),
        proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http1"},
    )
    async with running_proxy(config) as (server, port):
        cl = server.clusters.get("up")
        with trio.fail_after(TIMEOUT):
            async with open_h2_client(port) as client:
                for n in range(1, 4):
                    sid = await client.send_headers("GET", f"/{n}", end_stream=True)
                    await until(lambda n=n: arrived.count == n)
                    await client.reset(sid)
                    await until(lambda: cl.stats.upstream_rq_active == 0)
        assert not host_of(server, held).ejected
        assert cl.stats.outlier_detection_ejections_enforced_total == 0
        assert cl.stats.upstream_rq_5xx == 0


@pytest.mark.parametrize("downstream", ["Http1", "Http2"])
async def test_route_timeouts_eject_a_hanging_host(nursery: trio.Nursery, downstream: str) -> None:
    """A host that accepts requests and never answers: each route timeout (504) counts
    against it, as Envoy counts them, without any retry policy."""
    good, good_seen = await status_upstream(nursery, 200)
    arrived = Counted()

    async def silent(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            arrived.count += 1

    hung = await start_raw_server(nursery, silent)
    config = http_config(
        [to(timeout="100ms")],
        cluster([good, hung], consecutive_5xx=2, base_ejection_time="30s"),
        proxy={"downstream_protocol": downstream, "upstream_protocol": "Http1"},
    )
    async with running_proxy(config) as (server, port):
        got = []
        with trio.fail_after(TIMEOUT):
            for n in range(8):
                if downstream == "Http1":
                    got += await statuses(port, 1)
                else:
                    async with open_h2_client(port) as client:
                        got.append((await client.request("GET", f"/{n}")).status)
        assert host_of(server, hung).ejected
        assert got.count(504) == 2 and arrived.count == 2
        assert server.clusters.get("up").stats.outlier_detection_ejections_enforced_total == 1
    assert good_seen.count == 6
