"""``outlier_detection`` in a configuration file: Envoy's keys and defaults, errors naming the
key's path, success-rate keys loaded with a warning; the detector's backoff and its decay."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.outlier import OutlierDetection
from trio_mesh.upstream.cluster import Cluster

P = "cluster_manager.clusters[0].outlier_detection"


def doc(outlier: Any) -> dict[str, Any]:
    cluster = {"name": "c", "hosts": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}]}
    return {"cluster_manager": {"clusters": [{**cluster, "outlier_detection": outlier}]}}


def test_envoys_defaults() -> None:
    od = parse_config(doc({})).config.cluster_manager.clusters[0].outlier_detection
    assert od == OutlierDetection()
    assert (od.consecutive_5xx, od.consecutive_gateway_failure) == (5, 5)
    assert (od.interval, od.base_ejection_time, od.max_ejection_percent) == (10.0, 30.0, 10)
    assert (od.enforcing_consecutive_5xx, od.enforcing_consecutive_gateway_failure) == (100, 0)
    assert od.ejection_time(1) == 30.0 and od.ejection_time(20) == 300.0
    assert OutlierDetection(base_ejection_time=400.0).ejection_time(2) == 400.0  # cap: base


def test_no_key_no_detector() -> None:
    config = parse_config(doc({})).config.cluster_manager.clusters[0]
    assert Cluster(config).outlier is not None
    plain = {"cluster_manager": {"clusters": [{"name": "c"}]}}
    assert Cluster(parse_config(plain).config.cluster_manager.clusters[0]).outlier is None


def test_short_times_and_success_rate_warns() -> None:
    loaded = parse_config(
        doc({"interval": "50ms", "base_ejection_time": "200ms", "success_rate_stdev_factor": 1900})
    )
    od = loaded.config.cluster_manager.clusters[0].outlier_detection
    assert (od.interval, od.base_ejection_time) == (0.05, 0.2)
    assert loaded.warnings == (
        f"{P}.success_rate_stdev_factor: known MOSN key, not implemented yet: ignored",
    )


@pytest.mark.parametrize(
    ("outlier", "error"),
    [
        (
            {"max_ejection_percent": 101},
            "max_ejection_percent: expected a percentage 0..100, got 101",
        ),
        (
            {"enforcing_consecutive_5xx": 200},
            "enforcing_consecutive_5xx: expected a percentage 0..100, got 200",
        ),
        ({"consecutive_5xx": -1}, "consecutive_5xx: expected an integer of at least 0, got -1"),
        ({"interval": "0s"}, "interval: expected a positive duration"),
        (
            {"base_ejection_time": "60s", "max_ejection_time": "10s"},
            "max_ejection_time: 10s is less than base_ejection_time 60s",
        ),
        ({"consecutive5xx": 3}, "consecutive5xx: unknown key"),
        ("often", "expected a mapping"),
    ],
)
def test_errors_name_the_key(outlier: Any, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc(outlier))
    assert any(e.startswith(f"{P}") and error in e for e in info.value.errors), info.value.errors


async def test_backoff_caps_and_decays() -> None:
    """The multiplier grows per ejection up to the cap and decays by one for each stretch a
    host stays in as long as its last ejection lasted (the tick's ``now`` is given)."""
    config = parse_config(
        doc({"consecutive_5xx": 1, "base_ejection_time": "1s", "max_ejection_time": "3s"})
    ).config
    cluster = Cluster(config.cluster_manager.clusters[0])
    od = cluster.outlier
    assert od is not None
    host = cluster.hosts[0]
    times = []
    for _ in range(5):
        od.response(host, 500)
        assert host.ejected and cluster.lb.choose() is cluster.hosts[1]
        times.append(od.config.ejection_time(host.od_ejections))
        od.tick(host.od_ejected_at + 10.0)
        assert not host.ejected
    assert times == [1.0, 2.0, 3.0, 3.0, 3.0]
    now = trio.current_time()
    host.od_unejected_at = now
    od.tick(now + 3.0)  # a stretch as long as the last ejection: one step down
    assert host.od_ejections == 2
    od.tick(now + 4.5)  # 1.5s since that step: not yet another one (2 x 1s)
    assert host.od_ejections == 2
    od.tick(now + 5.0)
    assert host.od_ejections == 1


def test_a_2xx_resets_the_count() -> None:
    config = parse_config(doc({"consecutive_5xx": 3})).config
    cluster = Cluster(config.cluster_manager.clusters[0])
    od = cluster.outlier
    assert od is not None
    host = cluster.hosts[0]
    for code in (500, 503, 200, 500, 502, 404, 500, 500):
        od.response(host, code)
    assert not host.ejected and host.od_5xx == 2
