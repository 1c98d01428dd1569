"""Retries with real upstreams: Envoy's ``previous_hosts`` (a retry goes to no host already
tried while another is there) and the cluster's ``retry_budget``."""

from __future__ import annotations

from typing import Any

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

TIMEOUT = 20  # only reached when something is broken
RETRY_CONNECT_TWICE = {"retry_policy": {"retry_on": "connect-failure", "num_retries": 2}}


def cluster(ports: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "up": {
            "lb_type": "LB_RANDOM",  # random: a retry would often land on a host tried before
            "connect_timeout": "2s",
            "hosts": [{"address": f"127.0.0.1:{p}"} for p in ports],
            **extra,
        }
    }


async def requests_never_revisit(
    port: int, server: Any, dead_ports: set[int], n: int
) -> tuple[int, int]:
    """``n`` requests one at a time on one connection: each must answer 200 and try each dead
    host at most once. Returns (tries to dead hosts, requests)."""
    hosts = server.clusters.get("up").hosts
    dead = [h for h in hosts if h.port in dead_ports]
    tries = 0
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as c:
            for _ in range(n):
                before = [h.cx_connect_fail for h in dead]
                await c.send(get("/x"))
                assert (await c.response()).status == 200
                after = [h.cx_connect_fail for h in dead]
                assert all(a - b <= 1 for a, b in zip(after, before, strict=True)), (
                    before,
                    after,
                )
                tries += sum(after) - sum(before)
    return tries, n


async def test_one_dead_host_two_good_every_request_succeeds(nursery: trio.Nursery) -> None:
    good = [await start_upstream(nursery) for _ in range(2)]
    dead = closed_port()
    config = http_config([to(**RETRY_CONNECT_TWICE)], cluster([dead, good[0].port, good[1].port]))
    async with running_proxy(config) as (server, port):
        tries, n = await requests_never_revisit(port, server, {dead}, 60)
        stats = server.clusters.get("up").stats
        # random over three hosts: the dead one was picked first about a third of the time
        assert tries > 0 and stats.upstream_rq_retry == tries
        assert stats.upstream_rq_retry_overflow == 0
    assert len(good[0].requests) + len(good[1].requests) == n


async def test_two_dead_hosts_one_good_no_host_is_tried_twice(nursery: trio.Nursery) -> None:
    # Avoiding only the host that failed last would go dead, dead, dead (the first again)
    # and fail: with previous_hosts the third try is always the good host.
    good = await start_upstream(nursery)
    dead = {closed_port(), closed_port()}
    config = http_config([to(**RETRY_CONNECT_TWICE)], cluster([*dead, good.port]))
    async with running_proxy(config) as (server, port):
        tries, n = await requests_never_revisit(port, server, dead, 60)
        assert tries > n // 2  # two dead of three: most requests met at least one
    assert len(good.requests) == n


async def test_retry_budget_bounds_retries_outstanding(nursery: trio.Nursery) -> None:
    # min_retry_concurrency 0 and 0%: no retry may be outstanding, whatever the route asks.
    good = await start_upstream(nursery)
    dead = closed_port()
    budget = {
        "circuit_breakers": [{"retry_budget": {"budget_percent": 0, "min_retry_concurrency": 0}}]
    }
    config = http_config([to(**RETRY_CONNECT_TWICE)], cluster([dead, good.port], **budget))
    async with running_proxy(config) as (server, port):
        statuses = []
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port) as c:
                for _ in range(30):
                    await c.send(get("/x"))
                    statuses.append((await c.response()).status)
        stats = server.clusters.get("up").stats
        dead_host = next(h for h in server.clusters.get("up").hosts if h.port == dead)
        assert stats.upstream_rq_retry == 0
        assert stats.upstream_rq_retry_overflow == dead_host.cx_connect_fail > 0
        assert statuses.count(503) == dead_host.cx_connect_fail
        assert statuses.count(200) == len(good.requests)
