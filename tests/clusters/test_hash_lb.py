"""Consistent-hashing balancers (trio_mesh.upstream.hash_lb): stable, weighted, minimal
disruption when a host leaves."""

from __future__ import annotations

from collections import Counter

import pytest

from trio_mesh.config import Address, LbType
from trio_mesh.upstream import Host, make_balancer
from trio_mesh.upstream.hash_lb import MaglevLB, RingHashLB, hash_key

HASHING = [MaglevLB, RingHashLB]
KEYS = [hash_key(f"user-{i}".encode()) for i in range(100_000)]


def hosts(n: int, weights: list[int] | None = None) -> list[Host]:
    weights = weights or [1] * n
    return [Host(Address("127.0.0.1", 9000 + i), weight=w) for i, w in enumerate(weights)]


@pytest.mark.parametrize("cls", HASHING)
def test_same_key_same_host_and_order_independent(cls: type) -> None:
    hs = hosts(5)
    lb = cls(hs)
    again = cls(list(reversed(hs)))
    for k in KEYS[:2000]:
        first = lb.choose_key(k)
        assert first is not None
        assert lb.choose_key(k) is first
        assert again.choose_key(k) is first


@pytest.mark.parametrize("cls", HASHING)
@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_one_host_moves_few_keys(cls: type, n: int) -> None:
    hs = hosts(n)
    before = cls(hs)
    gone = hs[n // 2]
    after = cls([h for h in hs if h is not gone])
    moved = sum(1 for k in KEYS if before.choose_key(k) is not after.choose_key(k))
    # The removed host's keys must move; others should mostly stay.
    assert moved / len(KEYS) <= 1 / n + 0.02, (moved, n)
    assert all(after.choose_key(k) is not gone for k in KEYS[:1000])


@pytest.mark.parametrize("cls", HASHING)
def test_spread_follows_weights(cls: type) -> None:
    hs = hosts(3, [1, 1, 2])
    lb = cls(hs)
    counts = Counter(lb.choose_key(k) for k in KEYS)
    share = {h: counts[h] / len(KEYS) for h in hs}
    assert 0.18 <= share[hs[0]] <= 0.32, share
    assert 0.18 <= share[hs[1]] <= 0.32, share
    assert 0.42 <= share[hs[2]] <= 0.58, share


@pytest.mark.parametrize("cls", HASHING)
def test_no_key_is_random_and_empty_is_none(cls: type) -> None:
    hs = hosts(4)
    lb = cls(hs)
    assert set(lb.choose() for _ in range(400)) == set(hs)
    empty = cls([])
    assert empty.choose() is None
    assert empty.choose_key(123) is None


def test_maglev_table_is_full_and_balanced() -> None:
    hs = hosts(7)
    lb = MaglevLB(hs)
    assert len(lb.table) == 65537 and None not in lb.table
    counts = Counter(lb.table)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_ring_size_bounds() -> None:
    lb = RingHashLB(hosts(4), min_size=1024)
    assert 1024 <= len(lb.points) <= 2048
    capped = RingHashLB(hosts(2, [1, 1000]), min_size=1024, max_size=4096)
    assert len(capped.points) <= 4096


def test_ring_uses_weights_in_lowest_terms() -> None:
    same = RingHashLB(hosts(4, [100] * 4))
    assert len(same.points) == len(RingHashLB(hosts(4)).points)
    lb = RingHashLB(hosts(2, [60, 120]))
    counts = Counter(lb.owners)
    assert counts[lb.owners[0]] in (len(lb.points) // 3, 2 * len(lb.points) // 3)


def test_registered_lb_types() -> None:
    assert isinstance(make_balancer(LbType.LB_MAGLEV, hosts(2)), MaglevLB)
    assert isinstance(make_balancer(LbType.LB_RING_HASH, hosts(2)), RingHashLB)


def test_a_hashing_cluster_keeps_hashing_in_panic() -> None:
    """Fewer than half the hosts usable: all are offered again (panic), and the same key
    still goes to the same host (a consistent choice over all hosts), counted as panic."""
    from trio_mesh.config import parse_config
    from trio_mesh.upstream.cluster import Cluster

    doc = {
        "cluster_manager": {
            "clusters": [
                {
                    "name": "c",
                    "lb_type": "LB_MAGLEV",
                    "hosts": [{"address": f"127.0.0.1:{9000 + i}"} for i in range(4)],
                }
            ]
        }
    }
    cluster = Cluster(parse_config(doc).config.cluster_manager.clusters[0])
    for host in cluster.hosts[:3]:
        host.set_health(failed_active_hc=True)
    cluster.host_health_changed()
    assert cluster.panic
    picks = {cluster.choose_host_for(12345).label for _ in range(20)}
    assert len(picks) == 1
    assert cluster.stats.lb_healthy_panic == 20
