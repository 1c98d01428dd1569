"""The Prometheus exposition: Envoy's names in both formats, histograms, negotiation."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from trio_mesh.metrics.model import ENVOY_BUCKETS_MS, Histogram, Metric
from trio_mesh.metrics.prometheus import (
    OPENMETRICS_TYPE,
    TEXT_TYPE,
    render,
    wants_openmetrics,
)

CLUSTER = "envoy_cluster_name"
OM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus sends


def metrics() -> list[Metric]:
    h = Histogram()
    for ms in (0.3, 0.5, 7, 4_000_000):
        h.record(ms)
    return [
        Metric(
            "http.ingress.downstream_rq_total",
            "http.downstream_rq_total",
            (("envoy_http_conn_manager_prefix", "ingress"),),
            "counter",
            5,
        ),
        Metric(
            "cluster.a.upstream_cx_connect_fail",
            "cluster.upstream_cx_connect_fail",
            ((CLUSTER, "a"),),
            "counter",
            2,
            "Total connection failures",
        ),
        Metric(
            "cluster.b.upstream_cx_connect_fail",
            "cluster.upstream_cx_connect_fail",
            ((CLUSTER, "b"),),
            "counter",
            0,
        ),
        Metric(
            "cluster.b.upstream_rq_time",
            "cluster.upstream_rq_time",
            ((CLUSTER, "b"),),
            "histogram",
            h.snapshot(),
        ),
        Metric("server.live", "server.live", (), "gauge", 1),
        Metric("server.uptime", "server.uptime", (), "gauge", 1.5),
    ]


def test_text_keeps_envoys_counter_names() -> None:
    content_type, body = render(metrics(), None)
    assert content_type == TEXT_TYPE
    text = body.decode()
    # Envoy's own lines: bare names, with or without _total.
    assert "# TYPE envoy_cluster_upstream_cx_connect_fail counter\n" in text
    assert 'envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="a"} 2\n' in text
    assert "# TYPE envoy_http_downstream_rq_total counter\n" in text
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 5\n' in text
    assert "_connect_fail_total" not in text
    assert "# HELP envoy_cluster_upstream_cx_connect_fail Total connection failures\n" in text
    assert "# TYPE envoy_server_live gauge\nenvoy_server_live 1\n" in text
    assert "envoy_server_uptime 1.5\n" in text
    # One family per tag name, with every tag set.
    assert text.count("# TYPE envoy_cluster_upstream_cx_connect_fail ") == 1
    assert 'envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name="b"} 0\n' in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }
    key = ("envoy_http_downstream_rq_total", (("envoy_http_conn_manager_prefix", "ingress"),))
    assert samples[key] == 5


def test_histogram_buckets_in_envoys_style() -> None:
    text = render(metrics(), None)[1].decode()
    lines = [x for x in text.splitlines() if x.startswith("envoy_cluster_upstream_rq_time")]
    les = [x.split('le="')[1].split('"')[0] for x in lines if "_bucket" in x]
    assert les == [f"{b:g}" for b in ENVOY_BUCKETS_MS] + ["+Inf"]
    assert les[:3] == ["0.5", "1", "5"] and les[-2] == "3.6e+06"
    counts = [int(x.rsplit(" ", 1)[1]) for x in lines if "_bucket" in x]
    # Cumulative: 0.3 and 0.5 in le=0.5 (a value on a bound is in it), 7 by le=10, 4e6 only +Inf.
    assert counts[0] == 2 and counts[3] == 3 and counts[-2] == 3 and counts[-1] == 4
    assert counts == sorted(counts)
    assert 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="b"} 4' in lines
    assert 'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="b"} 4.0000078e+06' in lines
    (family,) = [f for f in parse_text(text) if f.name == "envoy_cluster_upstream_rq_time"]
    assert family.type == "histogram"


def test_openmetrics_by_negotiation_same_series_names() -> None:
    content_type, body = render(metrics(), OM_ACCEPT)
    assert content_type == OPENMETRICS_TYPE
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    # A counter named ..._total stays a counter; its sample keeps Envoy's name.
    rq = families["envoy_http_downstream_rq"]
    assert rq.type == "counter"
    assert [(s.name, s.value) for s in rq.samples] == [("envoy_http_downstream_rq_total", 5)]
    # OpenMetrics allows no counter sample without _total: the bare name, type unknown.
    fail = families["envoy_cluster_upstream_cx_connect_fail"]
    assert fail.type == "unknown"
    assert {s.name for s in fail.samples} == {"envoy_cluster_upstream_cx_connect_fail"}
    hist = families["envoy_cluster_upstream_rq_time"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][-1] == "+Inf" and buckets[-1].value == 4
    assert families["envoy_server_live"].type == "gauge"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("", False),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        (OM_ACCEPT, True),
        ("Application/OpenMetrics-Text; version=1.0.0", True),
        ("text/plain, application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=bogus", True),
        ("application/openmetrics-textual", False),
    ],
)
def test_negotiation(accept: str | None, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected
    assert render(metrics(), accept)[0] == (OPENMETRICS_TYPE if expected else TEXT_TYPE)


def test_hostile_label_values_and_names_stay_one_sample() -> None:
    """A tag value comes from configuration (a cluster name) or the wire: quotes, newlines
    and backslashes are escaped, never a second line or a broken sample."""
    evil = 'x"} 999\nenvoy_injected 1\n\\'
    ms = [
        Metric("c", "cluster.upstream_rq_total", ((CLUSTER, evil),), "counter", 1),
        Metric("c", "cluster.upstream_rq_total", (("0bad-name", "v"), ("__x", "w")), "counter", 2),
    ]
    for accept in (None, OM_ACCEPT):
        text = render(ms, accept)[1].decode()
        parse = parse_openmetrics if accept else parse_text
        samples = [s for f in parse(text) for s in f.samples]
        assert {s.name for s in samples} == {"envoy_cluster_upstream_rq_total"}
        values = {s.labels.get(CLUSTER): s.value for s in samples}
        assert values[evil] == 1
        (other,) = [s for s in samples if not s.labels.get(CLUSTER)]
        # OpenMetrics: a label the family has but this tag set lacks is empty (absent).
        assert {k: v for k, v in other.labels.items() if v} == {"tag_0bad_name": "v", "tag_x": "w"}


def test_duplicates_and_kind_clashes_are_left_out() -> None:
    ms = [
        Metric("a", "server.live", (), "gauge", 1),
        Metric("b", "server.live", (), "gauge", 7),  # the same series again
        Metric("c", "server.live", (("worker", "1"),), "counter", 3),  # another kind
    ]
    for accept in (None, OM_ACCEPT):
        text = render(ms, accept)[1].decode()
        parse = parse_openmetrics if accept else parse_text
        (family,) = list(parse(text))
        assert family.type == "gauge"
        assert [(s.labels, s.value) for s in family.samples] == [({}, 1)]


def test_empty_and_the_global_registry_untouched() -> None:
    before = set(prometheus_client.REGISTRY._collector_to_names)
    assert render([], None) == (TEXT_TYPE, b"")
    assert render([], OM_ACCEPT) == (OPENMETRICS_TYPE, b"# EOF\n")
    render(metrics(), OM_ACCEPT)
    assert set(prometheus_client.REGISTRY._collector_to_names) == before
