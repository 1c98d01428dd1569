"""Summing the workers' snapshots into one scrape (``merge_metrics``, ``merge_state``)."""

from __future__ import annotations

from trio_mesh.admin.fanout import merge_clusters, merge_metrics, merge_state
from trio_mesh.metrics.model import Histogram, Metric, from_json, to_json

LISTENER = (("envoy_listener_address", "127.0.0.1_8080"),)


def snapshot(rq: int, active: int, live: int, state: int, latencies: list[float]) -> list[Metric]:
    h = Histogram()
    for ms in latencies:
        h.record(ms)
    metrics = [
        Metric(
            "http.in.downstream_rq_total", "http.downstream_rq_total", (("p", "in"),), "counter", rq
        ),
        Metric(
            "listener.127.0.0.1_8080.downstream_cx_active",
            "listener.downstream_cx_active",
            LISTENER,
            "gauge",
            active,
        ),
        Metric(
            "http.in.downstream_rq_time", "http.downstream_rq_time", (), "histogram", h.snapshot()
        ),
        Metric(
            "listener.127.0.0.1_8080.downstream_cx_rx_bytes_buffered",
            "listener.downstream_cx_rx_bytes_buffered",
            LISTENER,
            "gauge",
            10 * rq,
        ),
        Metric("cluster.b.membership_healthy", "cluster.membership_healthy", (), "gauge", 3),
        Metric("server.live", "server.live", (), "gauge", live),
        Metric("server.state", "server.state", (), "gauge", state),
        Metric("server.uptime", "server.uptime", (), "gauge", 5),
        Metric("server.concurrency", "server.concurrency", (), "gauge", 1),
        Metric("server.memory_allocated", "server.memory_allocated", (), "gauge", 1000 * (rq + 1)),
    ]
    return from_json(to_json(metrics))  # as they arrive from a worker


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


def test_counters_and_histograms_sum_per_process_gauges_get_a_worker_label() -> None:
    merged = merge_metrics(
        {0: snapshot(3, 2, 1, 0, [1, 700]), 1: snapshot(4, 5, 1, 0, [1, 2, 40000])},
        workers=2,
        uptime=42.9,
    )
    m = by_name(merged)
    assert m["http.in.downstream_rq_total"].value == 7
    rq_time = m["http.in.downstream_rq_time"].value
    assert rq_time.count == 5 and rq_time.sum == 1 + 700 + 1 + 2 + 40000
    assert rq_time.counts[1] == 2  # both 1 ms samples in the le=1 bucket
    assert "listener.127.0.0.1_8080.downstream_cx_active" not in m
    w0 = m["listener.127.0.0.1_8080.worker_0.downstream_cx_active"]
    w1 = m["listener.127.0.0.1_8080.worker_1.downstream_cx_active"]
    assert (w0.value, w1.value) == (2, 5)
    assert w0.tags == (*LISTENER, ("worker", "0")) and w1.tags[-1] == ("worker", "1")
    assert w0.prometheus_name() == "envoy_listener_downstream_cx_active"  # one family
    assert m["server.worker_1.memory_allocated"].value == 5000
    assert m["listener.127.0.0.1_8080.worker_1.downstream_cx_rx_bytes_buffered"].value == 40
    assert m["cluster.b.membership_healthy"].value == 3  # the same everywhere: not summed
    assert m["server.uptime"].value == 42 and m["server.concurrency"].value == 2


def test_live_is_the_minimum_and_state_the_worst() -> None:
    merged = by_name(
        merge_metrics(
            {0: snapshot(0, 0, 1, 0, []), 1: snapshot(0, 0, 0, 1, [])}, workers=2, uptime=0
        )
    )
    assert merged["server.live"].value == 0
    assert merged["server.state"].value == 1  # DRAINING


def test_a_worker_missing_from_the_merge_leaves_its_counts_out() -> None:
    merged = by_name(merge_metrics({1: snapshot(4, 1, 1, 0, [])}, workers=2, uptime=1))
    assert merged["http.in.downstream_rq_total"].value == 4
    assert "listener.127.0.0.1_8080.worker_0.downstream_cx_active" not in merged


def test_state_counts_a_worker_not_linked_as_not_ready() -> None:
    assert merge_state(["LIVE", "LIVE"], 2) == "LIVE"
    assert merge_state(["LIVE"], 2) == "PRE_INITIALIZING"
    assert merge_state(["LIVE", "DRAINING"], 2) == "DRAINING"
    assert merge_state([], 2) == "PRE_INITIALIZING"


def cluster(name: str, rq: int, host_rq: int, hosts: tuple[int, ...] = (9001,)) -> dict:
    return {
        "name": name,
        "added_via_api": False,
        "stats": {"upstream_rq_total": rq, "upstream_cx_active": 1},
        "host_statuses": [
            {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "weight": 1,
                "stats": [
                    {"name": "rq_total", "type": "COUNTER", "value": host_rq},
                    {"name": "rq_active", "type": "GAUGE", "value": 0},
                ],
            }
            for port in hosts
        ],
    }


def test_clusters_add_up_the_workers_counts() -> None:
    merged = merge_clusters(
        [[cluster("a", 3, 3)], [cluster("a", 4, 2, hosts=(9001, 9002)), cluster("b", 1, 1)]]
    )
    a, b = merged
    assert a["name"] == "a" and a["stats"] == {"upstream_rq_total": 7, "upstream_cx_active": 2}
    first, second = a["host_statuses"]
    assert first["stats"][0]["value"] == 5 and first["weight"] == 1  # weights are not counts
    assert second["address"]["socket_address"]["port_value"] == 9002
    assert b["stats"]["upstream_rq_total"] == 1
