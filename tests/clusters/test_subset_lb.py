"""Subset load balancing with real upstreams: a route's ``metadata_match`` reaches only the
hosts of its subset; the fallback policies; health within a subset."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.http_helpers import (
    Client,
    closed_port,
    get,
    http_config,
    running_proxy,
    start_upstream,
    to,
)
from trio_mesh.config.errors import ConfigError
from trio_mesh.config.load import parse_config
from trio_mesh.config.subset import match_key
from trio_mesh.upstream.cluster import Cluster, NoHostError

TIMEOUT = 20  # only reached when something is broken
N = 30


def subset_cluster(ports: list[int], versions: list[str], **subset: Any) -> dict[str, Any]:
    return {
        "up": {
            "lb_type": "LB_ROUNDROBIN",
            "hosts": [
                {"address": f"127.0.0.1:{p}", "metadata": {"version": v}}
                for p, v in zip(ports, versions, strict=True)
            ],
            "lb_subset_config": {"subset_selectors": [["version"]], **subset},
        }
    }


async def statuses(port: int, n: int, path: str = "/x") -> list[int]:
    out = []
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as c:
            for _ in range(n):
                await c.send(get(path))
                out.append((await c.response()).status)
    return out


async def three(nursery: trio.Nursery) -> list[Any]:
    return [await start_upstream(nursery) for _ in range(3)]


async def test_route_matching_v2_only_reaches_v2_hosts(nursery: trio.Nursery) -> None:
    ups = await three(nursery)
    routes = [
        to(prefix="/v2", metadata_match={"filter_metadata": {"mosn.lb": {"version": "v2"}}}),
        to(prefix="/v1", metadata_match={"version": "v1"}),  # MOSN's flat form
        to(prefix="/"),
    ]
    config = http_config(routes, subset_cluster([u.port for u in ups], ["v1", "v2", "v2"]))
    async with running_proxy(config) as (_server, port):
        assert await statuses(port, N, "/v2") == [200] * N
        assert len(ups[0].requests) == 0
        # both v2 hosts share the subset's round robin
        assert len(ups[1].requests) == len(ups[2].requests) == N // 2
        assert await statuses(port, N, "/v1") == [200] * N
        assert len(ups[0].requests) == N
        # No metadata_match: the fallback policy (NO_FALLBACK by default), as in Envoy.
        assert await statuses(port, 3, "/any") == [503] * 3


async def test_no_fallback_answers_503_for_a_match_without_subset(nursery: trio.Nursery) -> None:
    ups = await three(nursery)
    routes = [to(metadata_match={"version": "v3"})]
    config = http_config(routes, subset_cluster([u.port for u in ups], ["v1", "v2", "v2"]))
    async with running_proxy(config) as (server, port):
        assert await statuses(port, 5) == [503] * 5
        assert server.clusters.get("up").stats.upstream_cx_none_healthy == 5
    assert sum(len(u.requests) for u in ups) == 0


async def test_any_endpoint_fallback_uses_the_whole_cluster(nursery: trio.Nursery) -> None:
    ups = await three(nursery)
    routes = [to(metadata_match={"version": "v3"})]
    clusters = subset_cluster(
        [u.port for u in ups],
        ["v1", "v2", "v2"],
        fall_back_policy=1,  # MOSN's number
    )
    async with running_proxy(http_config(routes, clusters)) as (_server, port):
        assert await statuses(port, 9) == [200] * 9
    assert [len(u.requests) for u in ups] == [3, 3, 3]


async def test_default_subset_fallback(nursery: trio.Nursery) -> None:
    ups = await three(nursery)
    routes = [to(metadata_match={"version": "v3"})]
    clusters = subset_cluster(
        [u.port for u in ups],
        ["v1", "v2", "v2"],
        fallback_policy="DEFAULT_SUBSET",
        default_subset={"version": "v1"},
    )
    async with running_proxy(http_config(routes, clusters)) as (_server, port):
        assert await statuses(port, 6) == [200] * 6
    assert [len(u.requests) for u in ups] == [6, 0, 0]


async def test_weighted_cluster_match_merges_over_the_route(nursery: trio.Nursery) -> None:
    ups = await three(nursery)
    routes = [
        {
            "match": {"prefix": "/"},
            "route": {
                "metadata_match": {"version": "v1"},
                "weighted_clusters": [
                    {"cluster": {"name": "up", "weight": 1, "metadata_match": {"version": "v2"}}}
                ],
            },
        }
    ]
    config = http_config(routes, subset_cluster([u.port for u in ups], ["v1", "v2", "v2"]))
    async with running_proxy(config) as (_server, port):
        assert await statuses(port, 10) == [200] * 10
    assert len(ups[0].requests) == 0


async def test_failed_hosts_leave_their_subset(nursery: trio.Nursery) -> None:
    # The health checker's own calls (set_health, then host_health_changed) on the running
    # cluster: the subsets are rebuilt over the usable hosts.
    ups = await three(nursery)
    routes = [to(metadata_match={"version": "v2"}, retry_policy={"retry_on": "5xx"})]
    config = http_config(routes, subset_cluster([u.port for u in ups], ["v1", "v2", "v2"]))
    async with running_proxy(config) as (server, port):
        cluster = server.clusters.get("up")
        v2 = [h for h in cluster.hosts if h.metadata["version"] == "v2"]
        assert v2[0].set_health(failed_active_hc=True)
        cluster.host_health_changed()
        assert await statuses(port, 8) == [200] * 8
        assert (len(ups[0].requests), len(ups[1].requests), len(ups[2].requests)) == (0, 0, 8)
        # every host of the subset failed: the subset panics (Envoy's) over its own hosts,
        # counted, and still never reaches v1
        assert v2[1].set_health(failed_active_hc=True)
        cluster.host_health_changed()
        assert await statuses(port, 8) == [200] * 8
        assert len(ups[0].requests) == 0
        assert cluster.stats.lb_healthy_panic == 8


def base(cluster: dict[str, Any], route: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": [
                                    {
                                        "match": {"prefix": "/"},
                                        "route": {"cluster_name": "c", **(route or {})},
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}], **cluster}]
        },
    }


@pytest.mark.parametrize(
    ("subset", "where"),
    [
        ({"fall_back_policy": 7}, "lb_subset_config.fall_back_policy"),
        ({"fallback_policy": "SOMETIMES"}, "lb_subset_config.fallback_policy"),
        ({"subset_selectors": [[]]}, "lb_subset_config.subset_selectors[0]"),
        ({"subset_selectors": [["a", "a"]]}, "lb_subset_config.subset_selectors[0]"),
        ({"default_subset": {"v": [1]}}, "lb_subset_config.default_subset.v"),
    ],
)
def test_bad_subset_config_names_the_path(subset: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(base({"lb_subset_config": subset}))
    assert f"cluster_manager.clusters[0].{where}" in str(exc.value)


def test_bad_metadata_match_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(base({}, {"metadata_match": {"version": {"nested": 1}}}))
    assert "metadata_match.version" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config(base({}, {"metadata_match": {"filter_metadata": {"other": {}}}}))
    assert "metadata_match.filter_metadata" in str(exc.value)


async def test_health_checker_takes_a_dead_host_out_of_its_subset(nursery: trio.Nursery) -> None:
    # The real active health checker: the dead v2 host is marked failed_active_hc and the v2
    # subset is rebuilt without it (no retry policy: a request sent there would fail).
    ups = await three(nursery)
    dead = closed_port()
    ports = [u.port for u in ups] + [dead]
    clusters = subset_cluster(ports, ["v1", "v2", "v2", "v2"])
    clusters["up"]["health_check"] = {
        "protocol": "http",
        "timeout": "500ms",
        "interval": "100ms",
        "interval_jitter": "20ms",
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
        "check_config": {"path": "/health"},
    }
    config = http_config([to(metadata_match={"version": "v2"})], clusters)
    async with running_proxy(config) as (server, port):
        cluster = server.clusters.get("up")
        down = next(h for h in cluster.hosts if h.port == dead)
        with trio.fail_after(TIMEOUT):
            while not down.failed_active_hc:
                await trio.sleep(0.02)
        assert await statuses(port, 10) == [200] * 10
        served = [sum(1 for r in u.requests if r["target"] == "/x") for u in ups]
        assert served == [0, 5, 5]
        assert cluster.stats.lb_healthy_panic == 0


def test_reload_rebuilds_subsets_from_new_metadata() -> None:
    def conf(version: str) -> Any:
        doc = base(
            {
                "lb_subset_config": {"subset_selectors": [["version"]]},
                "hosts": [{"address": "127.0.0.1:1", "metadata": {"version": version}}],
            }
        )
        return parse_config(doc).config.cluster_manager.clusters[0]

    cluster = Cluster(conf("v1"))
    v1, v2 = match_key({"version": "v1"}), match_key({"version": "v2"})
    host = cluster.choose_subset(v1)
    assert cluster.update(conf("v2")) == []  # the same host, new metadata
    assert cluster.choose_subset(v2) is host
    with pytest.raises(NoHostError):
        cluster.choose_subset(v1)


async def test_a_route_without_metadata_match_takes_the_fallback_policy(
    nursery: trio.Nursery,
) -> None:
    """Envoy's rule: a route with no metadata_match is served by the fallback policy, so a
    NO_FALLBACK cluster cannot be reached around its subsets by a plain route."""
    ups = await three(nursery)
    config = http_config([to()], subset_cluster([u.port for u in ups], ["v1", "v2", "v2"]))
    async with running_proxy(config) as (_, port):
        assert await statuses(port, 4) == [503] * 4
    assert sum(len(u.requests) for u in ups) == 0
    default = subset_cluster(
        [u.port for u in ups],
        ["v1", "v2", "v2"],
        fallback_policy="DEFAULT_SUBSET",
        default_subset={"version": "v1"},
    )
    async with running_proxy(http_config([to()], default)) as (_, port):
        assert await statuses(port, 6) == [200] * 6
    assert [len(u.requests) for u in ups] == [6, 0, 0]


def test_a_hashing_balancer_keeps_hashing_inside_a_subset() -> None:
    from trio_mesh.config import parse_config
    from trio_mesh.config.subset import match_key
    from trio_mesh.upstream.cluster import Cluster

    doc = {
        "cluster_manager": {
            "clusters": [
                {
                    "name": "c",
                    "lb_type": "LB_MAGLEV",
                    "hosts": [
                        {"address": f"127.0.0.1:{9000 + i}", "metadata": {"version": "v2"}}
                        for i in range(5)
                    ],
                    "lb_subset_config": {"subset_selectors": [["version"]]},
                }
            ]
        }
    }
    cluster = Cluster(parse_config(doc).config.cluster_manager.clusters[0])
    match = match_key({"version": "v2"})
    for key in (1, 77, 123456789):
        assert len({cluster.choose_subset(match, key).label for _ in range(30)}) == 1
    keys = {cluster.choose_subset(match, k).label for k in range(200)}
    assert len(keys) > 1  # different keys spread over the subset
