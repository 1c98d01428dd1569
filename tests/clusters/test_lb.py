"""Load balancers (trio_mesh.upstream.lb) and the Cluster that owns one."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trio_mesh.config import Address, LbType, parse_config
from trio_mesh.upstream import Cluster, Host, NoHostError, make_balancer
from trio_mesh.upstream.lb import LeastRequestLB, RandomLB, RoundRobinLB, WeightedRoundRobinLB

ALL_BALANCERS = [RandomLB, RoundRobinLB, WeightedRoundRobinLB, LeastRequestLB]


def hosts(n: int, weights: list[int] | None = None) -> list[Host]:
    weights = weights or [1] * n
    assert len(weights) == n
    return [Host(Address("127.0.0.1", 9000 + i), weight=w) for i, w in enumerate(weights)]


def picks(lb, n: int) -> list[Host]:
    out = [lb.choose() for _ in range(n)]
    assert None not in out
    return out


def assert_near_uniform(counts: Counter, members: list[Host], total: int) -> None:
    """Each member within 20% of its fair share; nothing outside ``members`` chosen."""
    assert set(counts) == set(members)
    expected = total / len(members)
    for h in members:
        assert 0.8 * expected <= counts[h] <= 1.2 * expected, (h, counts[h], expected)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test here sees the same random stream, whatever ran before it."""
    state = random.getstate()
    random.seed(20240601)
    yield
    random.setstate(state)


# --- every balancer ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_BALANCERS)
def test_empty_host_list_returns_none(cls):
    lb = cls([])
    for _ in range(3):
        assert lb.choose() is None


@pytest.mark.parametrize("cls", ALL_BALANCERS)
def test_single_host_is_always_returned(cls):
    (only,) = hosts(1, [7])
    only.active_requests = 1000
    lb = cls([only])
    for _ in range(50):
        assert lb.choose() is only


@pytest.mark.parametrize(
    ("lb_type", "cls"),
    [
        (LbType.LB_RANDOM, RandomLB),
        (LbType.LB_ROUNDROBIN, RoundRobinLB),
        (LbType.LB_WEIGHTED_ROUNDROBIN, WeightedRoundRobinLB),
        (LbType.LB_LEAST_REQUEST, LeastRequestLB),
    ],
)
def test_make_balancer_builds_the_configured_kind(lb_type, cls):
    hs = hosts(3)
    lb = make_balancer(lb_type, hs)
    assert type(lb) is cls
    assert lb.choose() in hs


@pytest.mark.parametrize("cls", ALL_BALANCERS)
def test_balancer_keeps_its_own_copy_of_the_host_list(cls):
    hs = hosts(2)
    lb = cls(hs)
    hs.append(Host(Address("127.0.0.1", 1)))
    hs.clear()
    assert len(lb.hosts) == 2
    assert set(picks(lb, 40)) <= set(lb.hosts)


# --- round robin ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5])
def test_round_robin_visits_each_host_once_per_cycle(n):
    hs = hosts(n)
    lb = RoundRobinLB(hs)
    seq = picks(lb, n * 20)
    for cycle in range(20):
        window = seq[cycle * n : (cycle + 1) * n]
        assert sorted(window, key=hs.index) == hs, cycle
    # And in list order, from wherever it started.
    start = hs.index(seq[0])
    assert seq == [hs[(start + k) % n] for k in range(n * 20)]


def test_round_robin_start_is_randomised_but_any_start_cycles():
    hs = hosts(4)
    starts = {RoundRobinLB(hs).choose() for _ in range(200)}
    # The random start spreads workers over the hosts (seeded: deterministic).
    assert starts == set(hs)


# --- smooth weighted round robin -------------------------------------------------------


def test_smooth_weighted_round_robin_is_nginx_sequence():
    a, b, c = hs = hosts(3, [5, 1, 1])
    lb = WeightedRoundRobinLB(hs)
    expected = [a, a, b, a, c, a, a]
    for cycle in range(50):
        assert picks(lb, 7) == expected, cycle


def longest_run(seq: list[Host]) -> int:
    longest = run = 0
    for prev, cur in zip([None, *seq], seq, strict=False):
        run = run + 1 if cur is prev else 1
        longest = max(longest, run)
    return longest


def test_smooth_weighted_round_robin_interleaves_not_bursts():
    hs = hosts(3, [5, 1, 1])
    lb = WeightedRoundRobinLB(hs)
    for cycle in range(100):
        # Within a cycle a never runs more than twice (not a a a a a b c). Across the
        # boundary the cycle's closing a a meets the next one's opening a a: that is nginx.
        assert longest_run(picks(lb, 7)) == 2, cycle


@pytest.mark.parametrize(
    "weights", [[1, 2, 3, 128], [1, 1], [3, 1], [2, 3, 5], [128, 128, 1], [7, 11, 13, 17]]
)
def test_smooth_weighted_round_robin_exact_counts_per_cycle(weights):
    hs = hosts(len(weights), weights)
    lb = WeightedRoundRobinLB(hs)
    total = sum(weights)
    for cycle in range(10):
        counts = Counter(picks(lb, total))
        assert [counts[h] for h in hs] == weights, cycle


def test_smooth_weighted_round_robin_spreads_within_a_cycle():
    """Over every prefix, each host's count stays close to its weighted share."""
    weights = [1, 2, 3, 128]
    hs = hosts(4, weights)
    total = sum(weights)
    seen = Counter()
    for k, h in enumerate(picks(WeightedRoundRobinLB(hs), total * 3), start=1):
        seen[h] += 1
        for host, w in zip(hs, weights, strict=True):
            assert abs(seen[host] - k * w / total) < len(hs), (k, host)


def test_weighted_round_robin_equal_weights_is_plain_round_robin():
    hs = hosts(3, [4, 4, 4])
    assert picks(WeightedRoundRobinLB(hs), 9) == hs * 3


# --- random -----------------------------------------------------------------------------


def test_random_is_roughly_uniform():
    hs = hosts(4)
    lb = RandomLB(hs)
    total = 10_000
    assert_near_uniform(Counter(picks(lb, total)), hs, total)


def test_random_ignores_weights_and_load():
    hs = hosts(3, [1, 1, 128])
    hs[0].active_requests = 1000
    total = 9_000
    assert_near_uniform(Counter(picks(RandomLB(hs), total)), hs, total)


# --- least request (power of two choices) -----------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(0, 1), (3, 4), (0, 1000), (9, 10)])
def test_least_request_two_hosts_never_picks_the_busier(low, high):
    idle, busy = hs = hosts(2)
    idle.active_requests, busy.active_requests = low, high
    lb = LeastRequestLB(hs)
    assert set(picks(lb, 500)) == {idle}
    # The other way round too: position in the list does not matter.
    idle.active_requests, busy.active_requests = high, low
    assert set(picks(lb, 500)) == {busy}


def test_least_request_two_equal_hosts_share():
    hs = hosts(2)
    for h in hs:
        h.active_requests = 5
    total = 4_000
    assert_near_uniform(Counter(picks(LeastRequestLB(hs), total)), hs, total)


def test_least_request_three_hosts_avoids_the_loaded_one():
    busy, x, y = hs = hosts(3)
    busy.active_requests = 50
    lb = LeastRequestLB(hs)
    total = 6_000
    counts = Counter(picks(lb, total))
    # Two *distinct* random hosts are compared, so the strictly busiest never wins.
    assert counts[busy] < total * 0.05
    assert counts[busy] == 0
    assert_near_uniform(Counter({x: counts[x], y: counts[y]}), [x, y], total)


def test_least_request_graded_loads():
    """Loads 0, 1, 5: of the six ordered pairs, 4 go to the idle host, 2 to the one at 1."""
    idle, light, heavy = hs = hosts(3)
    light.active_requests, heavy.active_requests = 1, 5
    total = 12_000
    counts = Counter(picks(LeastRequestLB(hs), total))
    assert counts[heavy] == 0
    assert 0.8 * (total * 2 / 3) <= counts[idle] <= 1.2 * (total * 2 / 3)
    assert 0.8 * (total / 3) <= counts[light] <= 1.2 * (total / 3)


def test_least_request_reads_live_counts():
    a, b = hs = hosts(2)
    lb = LeastRequestLB(hs)
    a.active_requests = 1
    assert lb.choose() is b
    b.active_requests = 2
    assert lb.choose() is a
    a.active_requests = 3
    assert lb.choose() is b


def test_least_request_all_idle_is_roughly_uniform():
    hs = hosts(5)
    total = 10_000
    assert_near_uniform(Counter(picks(LeastRequestLB(hs), total)), hs, total)


# --- Cluster ----------------------------------------------------------------------------


def cluster_config(hosts_: list[dict], lb_type: str = "LB_ROUNDROBIN"):
    doc = {
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "lb_type": lb_type,
                    "connect_timeout": "1s",
                    "hosts": hosts_,
                    # LB_ORIGINAL_DST belongs to an ORIGINAL_DST cluster (config refuses others)
                    **({"type": "ORIGINAL_DST"} if lb_type == "LB_ORIGINAL_DST" else {}),
                }
            ]
        }
    }
    (cfg,) = parse_config(doc).config.cluster_manager.clusters
    return cfg


def test_cluster_empty_raises_no_host_and_counts():
    cluster = Cluster(cluster_config([]))
    assert cluster.hosts == ()
    assert cluster.stats.upstream_cx_none_healthy == 0
    for i in range(1, 4):
        with pytest.raises(NoHostError, match="'up'"):
            cluster.choose_host()
        assert cluster.stats.upstream_cx_none_healthy == i
    # No other counter moves.
    others = {k: v for k, v in cluster.stats.as_dict().items() if k != "upstream_cx_none_healthy"}
    assert set(others.values()) == {0}


@pytest.mark.parametrize("lb_type", [t.value for t in LbType])
def test_cluster_empty_raises_for_every_lb_type(lb_type):
    cluster = Cluster(cluster_config([], lb_type))
    with pytest.raises(NoHostError):
        cluster.choose_host()
    assert cluster.stats.upstream_cx_none_healthy == 1


def test_cluster_hosts_come_from_config():
    cluster = Cluster(
        cluster_config(
            [
                {"address": "127.0.0.1:9001", "weight": 5, "metadata": {"zone": "a"}},
                {"address": "127.0.0.1:9002"},
                {"address": "127.0.0.1:9003"},
            ],
            "LB_WEIGHTED_ROUNDROBIN",
        )
    )
    a, b, c = cluster.hosts
    assert (a.host, a.port, a.weight, a.metadata) == ("127.0.0.1", 9001, 5, {"zone": "a"})
    assert (b.port, b.weight, c.port, c.weight) == (9002, 1, 9003, 1)
    assert isinstance(cluster.lb, WeightedRoundRobinLB)
    assert [cluster.choose_host() for _ in range(7)] == [a, a, b, a, c, a, a]
    assert cluster.stats.upstream_cx_none_healthy == 0


def test_cluster_set_hosts_replaces_set_and_balancer():
    cluster = Cluster(
        cluster_config([{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}])
    )
    old_hosts, old_lb = cluster.hosts, cluster.lb
    new = hosts(3)
    new_list = list(new)
    cluster.set_hosts(new_list)
    new_list.clear()  # the caller's list is not kept
    assert cluster.hosts == tuple(new)
    assert cluster.lb is not old_lb
    assert isinstance(cluster.lb, RoundRobinLB)
    assert cluster.lb.hosts == tuple(new)
    assert old_lb.hosts == old_hosts  # the old balancer was not mutated under its users
    chosen = [cluster.choose_host() for _ in range(30)]
    assert set(chosen) == set(new)
    assert not set(chosen) & set(old_hosts)


def test_cluster_set_hosts_to_empty_and_back():
    cluster = Cluster(cluster_config([{"address": "127.0.0.1:9001"}]))
    (first,) = cluster.hosts
    assert cluster.choose_host() is first
    cluster.set_hosts([])
    with pytest.raises(NoHostError):
        cluster.choose_host()
    assert cluster.stats.upstream_cx_none_healthy == 1
    (h,) = hosts(1)
    cluster.set_hosts([h])
    assert cluster.choose_host() is h


def test_cluster_set_hosts_resets_weighted_state():
    cluster = Cluster(cluster_config([], "LB_WEIGHTED_ROUNDROBIN"))
    a, b, c = hs = hosts(3, [5, 1, 1])
    cluster.set_hosts(hs)
    assert [cluster.choose_host() for _ in range(3)] == [a, a, b]
    # A new set mid-cycle starts a fresh smooth sequence, not the old one's leftovers.
    cluster.set_hosts(hs)
    assert [cluster.choose_host() for _ in range(7)] == [a, a, b, a, c, a, a]
