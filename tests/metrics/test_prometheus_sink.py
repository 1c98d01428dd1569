"""MOSN's prometheus sink: its configuration, and the server it runs (real sockets, curl)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from tests.http_helpers import curl, get, http_config, raw_exchange, request, split_curl_output
from trio_mesh import Server
from trio_mesh.config import MeshConfig, parse_config
from trio_mesh.config.errors import ConfigError
from trio_mesh.config.observability import MetricsConfig, MetricsSink, PrometheusSinkConfig
from trio_mesh.errors import StartupError
from trio_mesh.metrics.model import Metric
from trio_mesh.metrics.prometheus import OPENMETRICS_TYPE, TEXT_TYPE
from trio_mesh.metrics.sink import run_prometheus_sink

BASE: dict[str, Any] = {"servers": [], "cluster_manager": {"clusters": []}}


def load(metrics: dict[str, Any]) -> tuple[str, ...]:
    return parse_config({**BASE, "metrics": metrics}).warnings


def errors(metrics: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(metrics)
    return info.value.errors


def sink(**config: Any) -> dict[str, Any]:
    return {"sinks": [{"type": "prometheus", "config": config}]}


def test_mosn_sink_loads() -> None:
    assert load(sink(port=34903, endpoint="/metrics")) == ()
    assert load(sink()) == ()  # MOSN's defaults: port 34903, /metrics
    assert load(sink(address="::1", port=0)) == ()


def test_sink_config_errors_name_their_path() -> None:
    assert errors(sink(port="x")) == ["metrics.sinks[0].config.port: expected an integer, got 'x'"]
    assert errors(sink(bogus=1))[0].startswith("metrics.sinks[0].config.bogus: unknown key")
    assert errors(sink(port=70000)) == [
        "metrics.sinks[0].config.port: expected a port number (0-65535), got 70000"
    ]
    assert errors(sink(endpoint="metrics"))[0].startswith("metrics.sinks[0].config.endpoint:")
    assert errors(sink(endpoint="/m?x"))[0].startswith("metrics.sinks[0].config.endpoint:")
    two = {"sinks": [{"type": "prometheus"}, {"type": "prometheus", "config": {"port": 34903}}]}
    assert errors(two) == [
        "metrics.sinks[1].config.port: the same address and port as metrics.sinks[0].config"
    ]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_sink_off_loopback_is_refused_unless_allowed(address: str) -> None:
    (error,) = errors(sink(address=address))
    assert error.startswith(f"metrics.sinks[0].config.address: {address} is not a loopback")
    assert "allow_non_loopback" in error
    assert load(sink(address=address, allow_non_loopback=True)) == ()


def test_unenforced_keys_warn() -> None:
    warnings = load(
        {
            **sink(percentiles=[50, 99], disable_passive_flush=True),
            "lazy_flush": True,
            "stats_matcher": {"reject_all": True},
            "shm_zone": "mosn_shm",
        }
    )
    assert set(warnings) == {
        "metrics.sinks[0].config.percentiles: not enforced: latencies are exported as"
        " histograms (Envoy's buckets), not as summaries with percentiles",
        "metrics.sinks[0].config.disable_passive_flush: not enforced: ignored",
        "metrics.lazy_flush: not enforced: ignored",
        "metrics.stats_matcher: not enforced: ignored",
        "metrics.shm_zone: not enforced: ignored",
    }
    assert load({"sinks": [{"type": "console"}]}) == (
        "metrics.sinks[0].type: 'console': only prometheus sinks are served",
    )


STAND_IN = [
    Metric("http.ingress.downstream_rq_total", "http.downstream_rq_total",
           (("envoy_http_conn_manager_prefix", "ingress"),), "counter", 3),
    Metric("cluster.b.upstream_cx_connect_fail", "cluster.upstream_cx_connect_fail",
           (("envoy_cluster_name", "b"),), "counter", 1),
]  # fmt: skip


async def stand_in() -> list[Metric]:
    return STAND_IN


async def test_sink_serves_both_formats(nursery: trio.Nursery) -> None:
    config = PrometheusSinkConfig(port=0, endpoint="/stats")
    host, port = await nursery.start(run_prometheus_sink, config, stand_in)
    assert host == "127.0.0.1" and port > 0
    url = f"http://127.0.0.1:{port}/stats"
    code, out, _ = await curl("-i", url)
    assert code == 0
    ((status, headers, body),) = split_curl_output(out)
    assert status == 200 and headers.get("content-type") == TEXT_TYPE
    samples = [line for line in body.decode().splitlines() if not line.startswith("#")]
    assert samples == [
        'envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="b"} 1',
        'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 3',
    ]
    code, out, _ = await curl("-i", "-H", "Accept: application/openmetrics-text", url)
    ((status, headers, body),) = split_curl_output(out)
    assert status == 200 and headers.get("content-type") == OPENMETRICS_TYPE
    assert body.endswith(b"# EOF\n")


async def test_sink_bad_requests(nursery: trio.Nursery) -> None:
    config = PrometheusSinkConfig(port=0)
    _, port = await nursery.start(run_prometheus_sink, config, stand_in)
    assert (await request(port, get("/other"))).status == 404
    post = await request(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.status == 405 and post.headers.get("allow") == "GET, HEAD"
    head = await request(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert head.status == 200 and head.body == b""
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert (await raw_exchange(port, huge)).startswith(b"HTTP/1.1 431")
    # The server still serves after all of that.
    assert (await request(port, get("/metrics"))).status == 200


async def test_sink_port_in_use_fails_start(nursery: trio.Nursery) -> None:
    _, port = await nursery.start(run_prometheus_sink, PrometheusSinkConfig(port=0), stand_in)
    with pytest.raises(Exception, match="cannot listen"):
        await nursery.start(run_prometheus_sink, PrometheusSinkConfig(port=port), stand_in)


def sink_config() -> MeshConfig:
    sinks = (MetricsSink(type="prometheus", config={"port": 0}),)
    return attrs.evolve(http_config(), metrics=MetricsConfig(sinks=sinks))


async def test_server_starts_its_sinks(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Server, "collect_metrics", lambda self: stand_in())
    config = sink_config()
    server = await nursery.start(Server(config).run)
    ((_, port),) = server.metrics_addresses
    response = await request(port, get("/metrics"))
    assert response.status == 200 and b"envoy_http_downstream_rq_total" in response.body
    # Worker processes leave the sinks to the admin process.
    other = await nursery.start(Server(config, serve_admin=False).run)
    assert other.metrics_addresses == []


async def test_a_reload_changing_the_sinks_is_refused_whole(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink opens a port: who may scrape is access, so a change is refused, not warned."""
    monkeypatch.setattr(Server, "collect_metrics", lambda self: stand_in())
    config = sink_config()
    server = await nursery.start(Server(config).run)
    ((_, port),) = server.metrics_addresses
    await server.apply(config)  # the same sinks: applied
    with pytest.raises(StartupError, match=r"^metrics\.sinks: cannot change"):
        await server.apply(attrs.evolve(config, metrics=None))
    assert server.config is config
    assert (await request(port, get("/metrics"))).status == 200
