"""A name no UTF-8 can carry: a JSON configuration may hold ``"\\ud800"`` (a lone surrogate,
which ``json.loads`` accepts) in a cluster or listener name. It must not turn every scrape
and ``/stats`` into a 500."""

from __future__ import annotations

import json

import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.admin.test_admin_api import fetch, start
from tests.http_helpers import http_config, start_upstream, to
from tests.prometheus_server import needs_prometheus, promtool_check
from trio_mesh.metrics.model import Metric
from trio_mesh.metrics.prometheus import render

LONE = json.loads('"a\\ud800b"')  # what a JSON config file gives
OM_ACCEPT = "application/openmetrics-text;version=1.0.0"


def _metrics() -> list[Metric]:
    return [
        Metric(
            f"cluster.{LONE}.upstream_rq_total",
            "cluster.upstream_rq_total",
            (("envoy_cluster_name", LONE),),
            "counter",
            3,
        ),
        Metric("server.live", "server.live", (), "gauge", 1),
    ]


def test_lone_surrogate_label_is_replaced_not_fatal() -> None:
    for accept in (None, OM_ACCEPT):
        body = render(_metrics(), accept)[1].decode("utf-8")  # valid UTF-8
        parse = parse_openmetrics if accept else parse_text
        samples = {
            (s.name, s.labels.get("envoy_cluster_name")): s.value
            for f in parse(body)
            for s in f.samples
        }
        assert samples[("envoy_cluster_upstream_rq_total", "a\ufffdb")] == 3
        assert samples[("envoy_server_live", None)] == 1


@needs_prometheus
async def test_promtool_accepts_lone_surrogate_label() -> None:
    code, output = await promtool_check(render(_metrics(), None)[1])
    assert code in (0, 3), output


async def test_admin_stats_with_a_lone_surrogate_cluster(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    _, url, _ = await start(nursery, http_config([to(LONE)], {LONE: upstream.port}))
    for path in ("/stats/prometheus", "/stats", "/clusters", "/api/v1/stats_glob"):
        status, body, _ = await fetch(f"{url}{path}")
        assert status == 200, (path, body)
        body.decode("utf-8")
    status, body, _ = await fetch(f"{url}/stats")
    assert "cluster.a\ufffdb.upstream_rq_total: 0" in body.decode().splitlines()
