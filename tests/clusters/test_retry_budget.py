"""``circuit_breakers[].retry_budget`` (Envoy's): the limit it computes, the file's errors
naming the path, and its CDS translation (refusals naming the Envoy field)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from trio_mesh.config import ConfigError, parse_config
from trio_mesh.config.model import RetryBudget
from trio_mesh.config.routes import RetryPolicy as RetryPolicyConfig
from trio_mesh.proxy import replies
from trio_mesh.proxy.retry import RetryState
from trio_mesh.router.table import RetryPolicy
from trio_mesh.upstream import Cluster
from trio_mesh.xds import types as t
from trio_mesh.xds.envoy_import import envoy_import
from trio_mesh.xds.translate import ConvertError, cluster_doc

with envoy_import():
    from envoy_data_plane.envoy.config.cluster.v3 import CircuitBreakersThresholdsRetryBudget
    from envoy_data_plane.envoy.type.v3 import Percent

P = "cluster_manager.clusters[0].circuit_breakers[0].retry_budget"


def cluster_entry(**thresholds: Any) -> dict[str, Any]:
    return {
        "name": "up",
        "lb_type": "LB_RANDOM",
        "hosts": [{"address": f"127.0.0.1:{10000 + i}"} for i in range(3)],
        "circuit_breakers": [thresholds],
    }


def runtime_cluster(**thresholds: Any) -> Cluster:
    doc = {"cluster_manager": {"clusters": [cluster_entry(**thresholds)]}}
    (config,) = parse_config(doc).config.cluster_manager.clusters
    return Cluster(config)


def retrying(c: Cluster) -> RetryState:
    state = RetryState(RetryPolicy(RetryPolicyConfig(retry_on="5xx", num_retries=5)), c)
    state.choose_host()
    return state


def test_defaults_are_envoys() -> None:
    c = runtime_cluster(retry_budget={})
    assert c.retry_budget == (0.2, 3)
    assert runtime_cluster(max_retries=1).retry_budget is None


def test_budget_floor_is_min_retry_concurrency() -> None:
    c = runtime_cluster(retry_budget={"budget_percent": 20, "min_retry_concurrency": 2})
    states = [retrying(c) for _ in range(3)]
    c.stats.upstream_rq_active = 3  # 20% of 3 is under the floor: 2
    assert states[0].should_retry(replies.UPSTREAM_RESET)
    assert states[1].should_retry(replies.UPSTREAM_RESET)
    assert not states[2].should_retry(replies.UPSTREAM_RESET)
    assert (c.stats.upstream_rq_retry, c.stats.upstream_rq_retry_overflow) == (2, 1)
    states[0].release()
    assert states[2].should_retry(replies.UPSTREAM_RESET)  # a slot came free


def test_budget_grows_with_active_requests_and_replaces_max_retries() -> None:
    c = runtime_cluster(
        max_retries=1, retry_budget={"budget_percent": 50, "min_retry_concurrency": 0}
    )
    states = [retrying(c) for _ in range(6)]
    c.stats.upstream_rq_active = 10  # 50% of 10: five retries, max_retries 1 not applied
    assert [s.should_retry(replies.UPSTREAM_RESET) for s in states] == [True] * 5 + [False]
    assert c.stats.upstream_rq_retry_active == 5
    for s in states:
        s.release()
    assert c.stats.upstream_rq_retry_active == 0


def test_zero_budget_refuses_every_retry() -> None:
    c = runtime_cluster(retry_budget={"budget_percent": 0, "min_retry_concurrency": 0})
    c.stats.upstream_rq_active = 1000
    assert not retrying(c).should_retry(replies.UPSTREAM_RESET)
    assert c.stats.upstream_rq_retry_overflow == 1


@pytest.mark.parametrize(
    ("budget", "error"),
    [
        ({"budget_percent": 150}, f"{P}.budget_percent: expected a percentage 0..100, got 150"),
        ({"budget_percent": -1}, f"{P}.budget_percent: expected a percentage 0..100, got -1"),
        ({"budget_percent": float("nan")}, f"{P}.budget_percent: expected a percentage"),
        ({"budget_percent": True}, f"{P}.budget_percent"),
        ({"min_retry_concurrency": -1}, f"{P}.min_retry_concurrency"),
        ({"min_retry_concurrency": "three"}, f"{P}.min_retry_concurrency"),
        ({"budget_interval": "1s"}, f"{P}"),
    ],
)
def test_file_errors_name_the_path(budget: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster_manager": {"clusters": [cluster_entry(retry_budget=budget)]}})
    assert any(error in e for e in info.value.errors), info.value.errors


def cds(budget: Any) -> t.Cluster:
    return t.Cluster(
        name="be",
        type=t.ClusterDiscoveryType.EDS,
        circuit_breakers=t.CircuitBreakers(
            thresholds=[t.CircuitBreakersThresholds(retry_budget=budget)]
        ),
    )


def loaded_budget(c: t.Cluster) -> RetryBudget | None:
    doc, _ = cluster_doc(c)
    doc["hosts"] = [{"address": "127.0.0.1:8080"}]
    result = parse_config({"cluster_manager": {"clusters": [doc]}}, dynamic=True)
    return result.config.cluster_manager.clusters[0].thresholds().retry_budget


def test_cds_translates_the_budget() -> None:
    given = CircuitBreakersThresholdsRetryBudget(
        budget_percent=Percent(value=25.0), min_retry_concurrency=7
    )
    assert loaded_budget(cds(given)) == RetryBudget(budget_percent=25.0, min_retry_concurrency=7)
    # Envoy's defaults are ours: an empty budget is 20% / 3
    assert loaded_budget(cds(CircuitBreakersThresholdsRetryBudget())) == RetryBudget()


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            CircuitBreakersThresholdsRetryBudget(budget_percent=Percent(value=101.0)),
            "Cluster 'be': circuit_breakers.thresholds[0].retry_budget.budget_percent:"
            " expected 0..100, got 101.0",
        ),
        (
            CircuitBreakersThresholdsRetryBudget(budget_interval=datetime.timedelta(seconds=1)),
            "Cluster 'be': circuit_breakers.thresholds[0].retry_budget.budget_interval:"
            " not supported by trio-mesh",
        ),
    ],
)
def test_cds_refusals_name_the_envoy_field(budget: Any, message: str) -> None:
    with pytest.raises(ConvertError) as info:
        cluster_doc(cds(budget))
    assert str(info.value) == message
