"""A real Prometheus scrapes the proxy's metrics sink; promtool checks the exposition."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import trio

from tests.http_helpers import get, http_config, request, start_upstream, to
from tests.prometheus_server import needs_prometheus, promtool_check, start_prometheus
from trio_mesh import Server
from trio_mesh.config import Address
from trio_mesh.config.observability import (
    AdminConfig,
    MetricsConfig,
    MetricsSink,
    PrometheusSinkConfig,
)
from trio_mesh.metrics.model import Histogram, Metric
from trio_mesh.metrics.prometheus import render
from trio_mesh.metrics.sink import run_prometheus_sink

pytestmark = needs_prometheus

# promtool's naming lints that Envoy's own names draw (they are what dashboards query):
# counters without _total (upstream_cx_connect_fail), the gauge membership_total, _ms.
ENVOY_NAMING = (
    re.compile(r'^envoy_\S+ counter metrics should have "_total" suffix$'),
    re.compile(r'^envoy_\S+ non-counter metrics should not have "_total" suffix$'),
    re.compile(r"^envoy_\S+ metric names should not contain abbreviated units$"),
)


def lint_problems(output: str) -> list[str]:
    """promtool's lines that are not about Envoy's names (ours to fix)."""
    return [
        line
        for line in output.splitlines()
        if line.strip() and not any(p.match(line.strip()) for p in ENVOY_NAMING)
    ]


def stand_in(n: int) -> list[Metric]:
    h = Histogram()
    for ms in range(n):
        h.record(ms)
    return [
        Metric("http.ingress.downstream_rq_total", "http.downstream_rq_total",
               (("envoy_http_conn_manager_prefix", "ingress"),), "counter", n),
        Metric("cluster.up.upstream_cx_connect_fail", "cluster.upstream_cx_connect_fail",
               (("envoy_cluster_name", "up"),), "counter", 2),
        Metric("http.ingress.downstream_rq_time", "http.downstream_rq_time",
               (("envoy_http_conn_manager_prefix", "ingress"),), "histogram", h.snapshot()),
        Metric("listener.x.downstream_cx_length_ms", "listener.downstream_cx_length_ms",
               (("envoy_listener_address", "127.0.0.1_0"),), "histogram", h.snapshot()),
        Metric("server.live", "server.live", (), "gauge", 1),
    ]  # fmt: skip


async def test_prometheus_scrapes_envoy_names(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Prometheus negotiates OpenMetrics: the series keep Envoy's names all the same."""
    metrics = stand_in(7)

    async def source() -> list[Metric]:
        return metrics

    _, port = await nursery.start(run_prometheus_sink, PrometheusSinkConfig(port=0), source)
    prometheus = await start_prometheus(nursery, tmp_path, [f"127.0.0.1:{port}"])
    (target,) = await prometheus.wait_up()
    assert target["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"
    await prometheus.wait_value("envoy_http_downstream_rq_total", 7)
    (fail,) = await prometheus.query("envoy_cluster_upstream_cx_connect_fail")
    assert fail["metric"]["envoy_cluster_name"] == "up" and fail["value"][1] == "2"
    assert await prometheus.query("envoy_cluster_upstream_cx_connect_fail_total") == []
    (inf,) = await prometheus.query('envoy_http_downstream_rq_time_bucket{le="+Inf"}')
    assert inf["value"][1] == "7"
    # The metadata shows that OpenMetrics was negotiated (text 0.0.4 would say counter).
    metadata = (await prometheus.api("/api/v1/metadata"))["data"]
    assert metadata["envoy_cluster_upstream_cx_connect_fail"][0]["type"] == "unknown"
    assert metadata["envoy_http_downstream_rq"][0]["type"] == "counter"
    (p50,) = await prometheus.query("histogram_quantile(0.5, envoy_http_downstream_rq_time_bucket)")
    assert 1 <= float(p50["value"][1]) <= 5  # 0..6 ms: the median is in the (1, 5] bucket


async def test_promtool_accepts_the_exposition() -> None:
    code, output = await promtool_check(render(stand_in(3), None)[1])
    assert code in (0, 3), output  # 1: it does not parse
    assert lint_problems(output) == []
    # The lints it does print are about Envoy's names, which stay as they are.
    assert "envoy_cluster_upstream_cx_connect_fail counter metrics" in output
    # And an exposition that is broken is caught (the check checks).
    assert (await promtool_check(b'envoy_x{a="1" 1\n'))[0] == 1


async def test_prometheus_counts_the_proxys_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The whole path: requests through the proxy, its sink, a real Prometheus."""
    upstream = await start_upstream(nursery)
    config = http_config(routes=[to("up")], clusters={"up": upstream.port})
    sinks = (MetricsSink(type="prometheus", config={"port": 0}),)
    server = await nursery.start(
        Server(attrs.evolve(config, metrics=MetricsConfig(sinks=sinks))).run
    )
    ((_, sink_port),) = server.metrics_addresses
    proxy_port = server.addresses["ingress"][1]
    n = 25
    for _ in range(n):
        assert (await request(proxy_port, get("/echo"))).status == 200
    prometheus = await start_prometheus(nursery, tmp_path, [f"127.0.0.1:{sink_port}"])
    await prometheus.wait_up()
    await prometheus.wait_value(
        'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"}', n
    )
    code, output = await promtool_check(render(await server.collect_metrics(), None)[1])
    assert code in (0, 3), output
    assert lint_problems(output) == []


async def test_prometheus_scrapes_the_admin_port(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The issue's own setup: a real Prometheus scraping the admin API's /stats/prometheus
    (OpenMetrics, which it asks for first) counts the requests sent, the target up."""
    upstream = await start_upstream(nursery)
    config = http_config(routes=[to("up")], clusters={"up": upstream.port})
    admin = AdminConfig(address=Address(host="127.0.0.1", port=0))
    server = await nursery.start(Server(attrs.evolve(config, admin=admin)).run)
    assert server.admin_address is not None
    admin_port = server.admin_address[1]
    proxy_port = server.addresses["ingress"][1]
    n = 17
    for _ in range(n):
        assert (await request(proxy_port, get("/echo"))).status == 200
    prometheus = await start_prometheus(
        nursery, tmp_path, [f"127.0.0.1:{admin_port}"], metrics_path="/stats/prometheus"
    )
    await prometheus.wait_up()
    await prometheus.wait_value(
        'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"}', n
    )
    await prometheus.wait_value(
        'envoy_cluster_upstream_rq_xx{envoy_cluster_name="up",envoy_response_code_class="2"}', n
    )
