"""Envoy's cluster ``health_checks`` (CDS) become the cluster's ``health_check``: HTTP, TCP
and gRPC checks, thresholds and durations; what is not mapped is refused by path."""

from __future__ import annotations

import datetime

import pytest

from trio_mesh.config.health_check import GrpcCheck, HttpCheck, TcpCheck, parse_check
from trio_mesh.config.load import parse_config
from trio_mesh.xds import types as t
from trio_mesh.xds.translate import ConvertError, cluster_doc


def secs(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


def converted(hc: t.HealthCheck):
    doc, _ = cluster_doc(t.Cluster(name="up", connect_timeout=secs(1), health_checks=[hc]))
    (cluster,) = parse_config(
        {"cluster_manager": {"clusters": [doc]}}
    ).config.cluster_manager.clusters
    health = cluster.health_check
    spec, errors = parse_check(health, "health_check")
    assert errors == []
    return health, spec


def test_http_check_maps_with_thresholds_and_ranges() -> None:
    health, spec = converted(
        t.HealthCheck(
            timeout=secs(0.5),
            interval=secs(2),
            interval_jitter=secs(0.25),
            unhealthy_threshold=3,
            healthy_threshold=2,
            http_health_check=t.HealthCheckHttpHealthCheck(
                host="svc", path="/healthz", expected_statuses=[t.Int64Range(start=200, end=300)]
            ),
        )
    )
    assert (health.timeout, health.interval, health.interval_jitter) == (0.5, 2.0, 0.25)
    assert (health.unhealthy_threshold, health.healthy_threshold) == (3, 2)
    assert spec == HttpCheck("/healthz", "svc", ((200, 300),))


def test_tcp_payloads_and_grpc_service() -> None:
    _, spec = converted(
        t.HealthCheck(
            timeout=secs(1),
            interval=secs(1),
            tcp_health_check=t.HealthCheckTcpHealthCheck(
                send=t.HealthCheckPayload(text="50494e47"),
                receive=[t.HealthCheckPayload(text="504f"), t.HealthCheckPayload(binary=b"NG")],
            ),
        )
    )
    assert spec == TcpCheck(b"PING", b"PONG")
    health, spec = converted(
        t.HealthCheck(
            timeout=secs(1),
            interval=secs(1),
            unhealthy_threshold=4,
            grpc_health_check=t.HealthCheckGrpcHealthCheck(service_name="my.Svc", authority="a"),
        )
    )
    assert spec == GrpcCheck("my.Svc", "a") and health.unhealthy_threshold == 4


@pytest.mark.parametrize(
    ("hc", "message"),
    [
        (
            t.HealthCheck(timeout=secs(1), interval=secs(1)),
            "health_checks[0]: give http_health_check, tcp_health_check or grpc_health_check",
        ),
        (
            t.HealthCheck(interval=secs(1), tcp_health_check=t.HealthCheckTcpHealthCheck()),
            "health_checks[0]: timeout and interval are required",
        ),
        (
            t.HealthCheck(
                timeout=secs(1),
                interval=secs(1),
                http_health_check=t.HealthCheckHttpHealthCheck(path="/", method=2),
            ),
            "health_checks[0].http_health_check.method",
        ),
        (
            t.HealthCheck(
                timeout=secs(1),
                interval=secs(1),
                no_traffic_interval=secs(5),
                tcp_health_check=t.HealthCheckTcpHealthCheck(),
            ),
            "health_checks[0].no_traffic_interval",
        ),
    ],
)
def test_refusals_name_the_path(hc: t.HealthCheck, message: str) -> None:
    with pytest.raises(ConvertError) as info:
        cluster_doc(t.Cluster(name="up", health_checks=[hc]))
    assert message in str(info.value)


def test_another_panic_threshold_warns_not_enforced(caplog: pytest.LogCaptureFixture) -> None:
    lb = t.ClusterCommonLbConfig(healthy_panic_threshold=t.Percent(value=0.0))
    cluster_doc(t.Cluster(name="up", common_lb_config=lb))
    assert "common_lb_config.healthy_panic_threshold: not enforced" in caplog.text
    caplog.clear()
    lb = t.ClusterCommonLbConfig(healthy_panic_threshold=t.Percent(value=50.0))
    cluster_doc(t.Cluster(name="up", common_lb_config=lb))
    assert "healthy_panic_threshold" not in caplog.text
