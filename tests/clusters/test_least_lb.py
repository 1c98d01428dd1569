"""LB_LEAST_REQUEST with weights, LB_LEAST_CONNECTION, LB_REQUEST_ROUNDROBIN."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio
import trio.testing

from tests.http_helpers import get, http_config, request, start_proxy, start_upstream, to
from trio_mesh.config import Address, LbType, parse_config
from trio_mesh.upstream import Cluster, Host, make_balancer
from trio_mesh.upstream.lb import (
    LeastConnectionLB,
    LeastRequestLB,
    RequestRoundRobinLB,
    WeightedLeastConnectionLB,
    WeightedLeastRequestLB,
)


def hosts(weights: list[int]) -> list[Host]:
    return [Host(Address("127.0.0.1", 9000 + i), weight=w) for i, w in enumerate(weights)]


@pytest.fixture(autouse=True)
def _seeded():
    state = random.getstate()
    random.seed(18)
    yield
    random.setstate(state)


def test_least_request_picks_p2c_with_equal_weights_and_edf_otherwise() -> None:
    assert isinstance(make_balancer(LbType.LB_LEAST_REQUEST, hosts([1, 1, 1])), LeastRequestLB)
    lb = make_balancer(LbType.LB_LEAST_REQUEST, hosts([1, 3]))
    assert isinstance(lb, WeightedLeastRequestLB)
    assert isinstance(make_balancer(LbType.LB_LEAST_CONNECTION, hosts([1, 1])), LeastConnectionLB)
    assert isinstance(
        make_balancer(LbType.LB_LEAST_CONNECTION, hosts([2, 1])), WeightedLeastConnectionLB
    )


def test_weighted_least_request_follows_weights_when_idle() -> None:
    hs = hosts([1, 3])
    lb = WeightedLeastRequestLB(hs)
    counts = Counter(lb.choose() for _ in range(4000))
    assert 900 <= counts[hs[0]] <= 1100 and 2900 <= counts[hs[1]] <= 3100, counts


def test_weighted_least_request_backs_off_a_busy_host() -> None:
    hs = hosts([1, 3])
    hs[1].active_requests = 9  # 3 / (9 + 1): now lighter than the idle weight-1 host
    lb = WeightedLeastRequestLB(hs)
    counts = Counter(lb.choose() for _ in range(4000))
    assert counts[hs[0]] > counts[hs[1]], counts


def test_least_connection_prefers_fewer_open_connections() -> None:
    hs = hosts([1, 1, 1])
    hs[0].cx_active = 5
    hs[1].cx_active = 5
    lb = LeastConnectionLB(hs)
    counts = Counter(lb.choose() for _ in range(3000))
    # host 2 wins every pair it is in (2/3 of the pairs); never loses to a busier one
    assert counts[hs[2]] >= 1900, counts


def test_weighted_least_connection_counts_connections_not_requests() -> None:
    hs = hosts([1, 2])
    hs[1].cx_active = 9
    hs[1].active_requests = 0
    lb = WeightedLeastConnectionLB(hs)
    counts = Counter(lb.choose() for _ in range(3000))
    assert counts[hs[0]] > counts[hs[1]], counts


def test_request_round_robin_starts_at_the_first_host() -> None:
    hs = hosts([1, 1, 1])
    lb = RequestRoundRobinLB(hs)
    assert {lb.choose() for _ in range(50)} == {hs[0]}
    assert RequestRoundRobinLB([]).choose() is None


def test_cluster_counts_open_connections_per_host() -> None:
    doc = {
        "cluster_manager": {
            "clusters": [
                {
                    "name": "c",
                    "lb_type": "LB_LEAST_CONNECTION",
                    "hosts": [{"address": "127.0.0.1:1"}],
                }
            ]
        }
    }
    (cfg,) = parse_config(doc).config.cluster_manager.clusters
    cluster = Cluster(cfg)
    (host,) = cluster.hosts
    assert isinstance(cluster.lb, LeastConnectionLB)
    host.cx_active = 1
    cluster.stats.upstream_cx_active = 1
    cluster.release_connection(host)
    assert host.cx_active == 0 and cluster.stats.upstream_cx_active == 0


async def test_open_connections_are_counted_per_host_with_real_upstreams(nursery) -> None:
    """LB_LEAST_CONNECTION's count follows the pools: up when a connection opens, down when
    it closes (the upstream closing it here)."""
    ups = [await start_upstream(nursery) for _ in range(2)]
    config = http_config(
        [to()],
        {
            "up": {
                "lb_type": "LB_LEAST_CONNECTION",
                "hosts": [{"address": f"127.0.0.1:{u.port}"} for u in ups],
            }
        },
    )
    server, port = await start_proxy(nursery, config)
    cluster = server.clusters.get("up")
    async with trio.open_nursery() as clients:
        for _ in range(6):
            clients.start_soon(request, port, get("/slow/0.2"))
    by_port = {h.port: h for h in cluster.hosts}
    for u in ups:
        assert by_port[u.port].cx_active == u.connections - u.closed > 0
    # both hosts served: the one with fewer open connections is preferred
    assert all(u.requests for u in ups)
    # an upstream that ends the connection with its response: the count goes back down
    before = sum(h.cx_active for h in cluster.hosts)
    closed = sum(u.closed for u in ups)
    response = await request(port, get("/close-delimited/10"))
    assert response.status == 200
    await trio.testing.wait_all_tasks_blocked()
    assert sum(u.closed for u in ups) == closed + 1
    assert sum(h.cx_active for h in cluster.hosts) == before - 1
    for u in ups:
        assert by_port[u.port].cx_active == u.connections - u.closed
