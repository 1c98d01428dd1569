"""The host health model: ``Host.set_health``, ``Cluster.host_health_changed`` (balancers
skip unusable hosts; panic under 50% usable), the retry's host choice, and what /clusters
and the metrics show."""

from __future__ import annotations

from collections import Counter

import pytest

from trio_mesh.config import parse_config
from trio_mesh.config.routes import RetryPolicy as RetryPolicyConfig
from trio_mesh.proxy import replies
from trio_mesh.proxy.retry import RetryState
from trio_mesh.router.table import RetryPolicy
from trio_mesh.upstream import Cluster, Host

LB_TYPES = ["LB_RANDOM", "LB_ROUNDROBIN", "LB_WEIGHTED_ROUNDROBIN", "LB_LEAST_REQUEST"]


def cluster(n: int, lb_type: str = "LB_ROUNDROBIN") -> Cluster:
    entry = {
        "name": "up",
        "lb_type": lb_type,
        "hosts": [{"address": f"127.0.0.1:{10000 + i}"} for i in range(n)],
    }
    (config,) = parse_config(
        {"cluster_manager": {"clusters": [entry]}}
    ).config.cluster_manager.clusters
    return Cluster(config)


def fail(c: Cluster, host: Host, **flags: bool) -> None:
    if host.set_health(**flags):
        c.host_health_changed()


def test_set_health_reports_only_a_change_of_usable():
    h = cluster(1).hosts[0]
    assert h.usable and h.health_flags() == "healthy"
    assert h.set_health(failed_active_hc=True) is True
    assert not h.usable and h.health_flags() == "/failed_active_hc"
    assert h.set_health(ejected=True) is False  # still unusable
    assert h.health_flags() == "/failed_active_hc/failed_outlier_check"
    assert h.set_health(failed_active_hc=False) is False  # ejected still
    assert h.health_flags() == "/failed_outlier_check"
    assert h.set_health(ejected=False) is True and h.usable
    assert h.set_health() is False


@pytest.mark.parametrize("lb_type", LB_TYPES)
def test_every_balancer_skips_unusable_hosts(lb_type):
    c = cluster(4, lb_type)
    down = c.hosts[1]
    fail(c, down, failed_active_hc=True)
    chosen = Counter(c.choose_host() for _ in range(400))
    assert down not in chosen and set(chosen) == set(c.hosts) - {down}
    assert c.healthy_hosts == 3 and not c.panic and c.stats.lb_healthy_panic == 0
    fail(c, down, failed_active_hc=False)  # back: the balancer offers it again
    assert down in {c.choose_host() for _ in range(400)}


def test_panic_under_half_usable_offers_all_and_counts():
    c = cluster(4)
    fail(c, c.hosts[0], failed_active_hc=True)
    fail(c, c.hosts[1], ejected=True)  # 2 of 4 usable: 50% is not under the threshold
    assert not c.panic and {c.choose_host() for _ in range(8)} == set(c.hosts[2:])
    fail(c, c.hosts[2], failed_active_hc=True)  # 1 of 4: panic
    assert c.panic and c.healthy_hosts == 1
    assert {c.choose_host() for _ in range(8)} == set(c.hosts)
    assert c.stats.lb_healthy_panic == 8
    fail(c, c.hosts[2], failed_active_hc=False)
    assert not c.panic
    c.choose_host()
    assert c.stats.lb_healthy_panic == 8  # counted only in panic


def test_all_down_still_tries_every_host():
    c = cluster(2)
    for h in c.hosts:
        fail(c, h, failed_active_hc=True)
    assert c.panic and c.healthy_hosts == 0
    assert {c.choose_host() for _ in range(4)} == set(c.hosts)


def test_health_survives_a_host_set_update_for_hosts_that_stay():
    c = cluster(3)
    down = c.hosts[0]
    fail(c, down, failed_active_hc=True)
    entry = {
        "name": "up",
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [{"address": "127.0.0.1:10000"}, {"address": "127.0.0.1:10005"}],
    }
    (config,) = parse_config(
        {"cluster_manager": {"clusters": [entry]}}
    ).config.cluster_manager.clusters
    c.update(config)
    assert c.hosts[0] is down and down.failed_active_hc
    # 1 of 2 usable is not under 50%: the new host alone is offered.
    assert {c.choose_host() for _ in range(6)} == {c.hosts[1]}


def test_retry_fallback_never_takes_an_unusable_host():
    c = cluster(3, "LB_RANDOM")
    down = c.hosts[2]
    fail(c, down, failed_active_hc=True)
    policy = RetryPolicy(RetryPolicyConfig(retry_on="connect-failure", num_retries=100))
    for _ in range(200):
        state = RetryState(policy, c)
        first = state.choose_host()
        assert state.should_retry(replies.CONNECT_FAILURE)
        second = state.choose_host()
        assert second is not first and down not in (first, second)
        state.release()


def test_retry_after_the_failed_host_left_the_set():
    c = cluster(3, "LB_ROUNDROBIN")
    policy = RetryPolicy(RetryPolicyConfig(retry_on="connect-failure", num_retries=5))
    state = RetryState(policy, c)
    first = state.choose_host()
    assert state.should_retry(replies.CONNECT_FAILURE)
    fail(c, first, failed_active_hc=True)  # health checks took it out meanwhile
    assert state.choose_host() is not first
