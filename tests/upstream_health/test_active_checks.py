"""Active health checks end to end: a real proxy in a nursery, real upstreams on 127.0.0.1
that are killed and restarted on the same port, requests over real sockets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from trio_mesh import Server
from trio_mesh.admin.target import LocalTarget
from trio_mesh.metrics.collect import collect
from trio_mesh.upstream import health
from trio_mesh.upstream.host import Host

from ..http_helpers import Client, free_port, get, http_config, start_proxy, start_raw_server, to
from ..upstream import Upstream

DEADLINE = 10.0  # bound of every wait on the checker (its intervals are 100-200 ms)


class KillableUpstream(Upstream):
    """The test upstream on a fixed port, stopped (listener and connections closed) and
    started again on the same port."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self._nursery = nursery
        self.port = free_port()
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery | None = None) -> int:
        await self._nursery.start(self._run)
        return self.port

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            await trio.serve_tcp(self._serve, self.port, host="127.0.0.1", task_status=task_status)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    def served(self, path: str = "/x") -> int:
        return sum(1 for r in self.requests if r["target"] == path)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll the embedded state until ``predicate`` holds (bounded by ``DEADLINE``)."""
    with trio.fail_after(DEADLINE):
        while not predicate():
            await trio.sleep(0.02)


def config(ports: list[int], hc: dict[str, Any], **cluster: Any):
    entry = {
        "name": "up",
        "connect_timeout": "1s",
        "lb_type": "LB_ROUNDROBIN",
        "hosts": [{"address": f"127.0.0.1:{p}"} for p in ports],
        "health_check": hc,
        **cluster,
    }
    return http_config([to("up")], [entry])


HTTP_HC = {
    "protocol": "http",
    "timeout": "500ms",
    "interval": "100ms",
    "interval_jitter": "20ms",
    "healthy_threshold": 1,
    "unhealthy_threshold": 2,
    "check_config": {"path": "/health"},
}


def host_of(server: Server, port: int) -> Host:
    return next(h for h in server.clusters.get("up").hosts if h.port == port)


async def send(port: int, n: int) -> list[int]:
    statuses = []
    async with await Client.connect(port) as client:
        for _ in range(n):
            await client.send(get("/x"))
            response = await client.response()
            statuses.append(response.status)
    return statuses


async def test_a_killed_host_leaves_rotation_and_returns_when_restarted(nursery):
    a, b = KillableUpstream(nursery), KillableUpstream(nursery)
    await a.start()
    await b.start()
    server, port = await start_proxy(nursery, config([a.port, b.port], HTTP_HC))
    await until(lambda: b.served("/health") >= 1 and a.served("/health") >= 1)
    assert await send(port, 10) == [200] * 10
    assert a.served() == b.served() == 5  # round robin over both

    b.stop()
    down = host_of(server, b.port)
    await until(lambda: down.failed_active_hc)
    cluster = server.clusters.get("up")
    assert cluster.healthy_hosts == 1 and not cluster.panic
    before = a.served()
    assert await send(port, 20) == [200] * 20  # no retries configured: none failed
    assert a.served() == before + 20

    # The same port again: back within two intervals of its first pass.
    await b.start()
    await until(lambda: down.usable)
    assert cluster.healthy_hosts == 2
    assert await send(port, 10) == [200] * 10
    # Traffic is back on it (a request may meet a pooled connection of its old process
    # first and be sent on another: not a count to pin here).
    assert b.served() >= 5 + 4


async def test_all_down_is_panic_and_requests_are_still_tried(nursery):
    a, b = KillableUpstream(nursery), KillableUpstream(nursery)
    await a.start()
    await b.start()
    server, port = await start_proxy(nursery, config([a.port, b.port], HTTP_HC))
    a.stop()
    b.stop()
    cluster = server.clusters.get("up")
    await until(lambda: all(h.failed_active_hc for h in cluster.hosts))
    assert cluster.panic and cluster.healthy_hosts == 0
    fails = cluster.stats.upstream_cx_connect_fail
    assert await send(port, 2) == [503, 503]
    assert cluster.stats.lb_healthy_panic == 2
    assert cluster.stats.upstream_cx_connect_fail == fails + 2  # tried, not refused unseen
    # The embedded admin view and the metrics tell the same.
    (status,) = await LocalTarget(server).clusters()
    assert {h["health_flags"] for h in status["host_statuses"]} == {"/failed_active_hc"}
    assert all(h["health_status"]["failed_active_health_check"] for h in status["host_statuses"])
    metrics = {m.name: m.value for m in collect(server)}
    assert metrics["cluster.up.membership_healthy"] == 0
    assert metrics["cluster.up.membership_total"] == 2
    assert metrics["cluster.up.lb_healthy_panic"] == 2
    # Every check counted: the failures (refused connections) are network failures.
    stats = cluster.stats
    assert stats.health_check_attempt >= stats.health_check_success + stats.health_check_failure
    assert stats.health_check_failure >= 4 and stats.health_check_network_failure >= 4
    assert metrics["cluster.up.health_check.failure"] == stats.health_check_failure
    await b.start()
    await until(lambda: host_of(server, b.port).usable)
    assert not cluster.panic  # one of two usable: 50% is not under the threshold
    assert await send(port, 3) == [200] * 3


async def _hang(accepted: list[int], stream: trio.SocketStream) -> None:
    accepted.append(1)
    await trio.sleep_forever()  # accepts and never answers


async def test_a_host_that_never_answers_times_out_without_blocking_others(nursery):
    good = KillableUpstream(nursery)
    await good.start()
    accepted: list[int] = []
    hang_port = await start_raw_server(nursery, functools.partial(_hang, accepted))
    hc = {**HTTP_HC, "timeout": "1s", "unhealthy_threshold": 1}
    server, port = await start_proxy(nursery, config([good.port, hang_port], hc))
    stuck = host_of(server, hang_port)
    await until(lambda: len(accepted) >= 1)
    # While its first check hangs (1 s), the good host is checked every ~100 ms.
    checks = good.served("/health")
    await until(lambda: good.served("/health") >= checks + 3)
    assert not stuck.failed_active_hc and len(accepted) == 1  # one check at a time per host
    await until(lambda: stuck.failed_active_hc)
    assert server.clusters.get("up").stats.health_check_network_failure >= 1  # the timeout
    assert host_of(server, good.port).usable
    assert await send(port, 6) == [200] * 6
    assert good.served() == 6


async def test_concurrent_checks_are_bounded(nursery, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(health, "MAX_CONCURRENT", 3)
    open_now: list[int] = [0]
    most: list[int] = [0]

    async def hold(stream: trio.SocketStream) -> None:
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        try:
            while await stream.receive_some(4096):  # never answers; ends when the check closes
                pass
        except trio.BrokenResourceError:
            pass  # the check's abort (RST)
        finally:
            open_now[0] -= 1

    ports = [await start_raw_server(nursery, hold) for _ in range(8)]
    hc = {
        "protocol": "tcp",
        "timeout": "300ms",
        "interval": "50ms",
        "check_config": {"send": "50494e47", "expect": "504f4e47"},
    }
    server, _ = await start_proxy(nursery, config(ports, hc))
    cluster = server.clusters.get("up")
    await until(lambda: all(h.failed_active_hc for h in cluster.hosts))
    assert most[0] == 3


async def _pong(stream: trio.SocketStream) -> None:
    data = await stream.receive_some(4)
    await stream.send_all(b"PONG" if data == b"PING" else b"NOPE")


async def _garbage(stream: trio.SocketStream) -> None:
    await stream.receive_some(4)
    await stream.send_all(b"NOPE")


async def test_tcp_send_expect(nursery):
    good = await start_raw_server(nursery, _pong)
    bad = await start_raw_server(nursery, _garbage)
    hc = {
        "protocol": "tcp",
        "timeout": "500ms",
        "interval": "50ms",
        "unhealthy_threshold": 1,
        "check_config": {"send": "50494e47", "expect": "504f4e47"},
    }
    server, _ = await start_proxy(nursery, config([good, bad], hc))
    await until(lambda: host_of(server, bad).failed_active_hc)
    assert host_of(server, good).usable


async def test_http_status_outside_expected_fails(nursery):
    up = KillableUpstream(nursery)
    other = KillableUpstream(nursery)
    await up.start()
    await other.start()
    hc = {**HTTP_HC, "check_config": {"path": "/status/503", "expected_statuses": [200]}}
    ok = {
        **HTTP_HC,
        "check_config": {"path": "/status/204", "expected_statuses": [{"start": 200, "end": 300}]},
    }
    server, _ = await start_proxy(nursery, config([up.port], hc))
    await until(lambda: host_of(server, up.port).failed_active_hc)
    stats = server.clusters.get("up").stats
    assert stats.health_check_failure >= 2 and stats.health_check_network_failure == 0
    server2, _ = await start_proxy(nursery, config([other.port], ok))
    await until(lambda: other.served("/status/204") >= 3)
    assert host_of(server2, other.port).usable


async def test_reload_without_health_check_clears_failures(nursery):
    a, b = KillableUpstream(nursery), KillableUpstream(nursery)
    await a.start()
    await b.start()
    server, _ = await start_proxy(nursery, config([a.port, b.port], HTTP_HC))
    b.stop()
    down = host_of(server, b.port)
    await until(lambda: down.failed_active_hc)
    plain = config([a.port, b.port], HTTP_HC)
    entry = plain.cluster_manager.clusters[0]
    await server.apply(
        attrs.evolve(
            plain,
            cluster_manager=attrs.evolve(
                plain.cluster_manager, clusters=(attrs.evolve(entry, health_check=None),)
            ),
        )
    )
    await until(lambda: down.usable)
    assert host_of(server, b.port) is down  # the host object stayed


async def test_removing_the_cluster_ends_its_checker(nursery):
    a = KillableUpstream(nursery)
    await a.start()
    server, _ = await start_proxy(nursery, config([a.port], HTTP_HC))
    await until(lambda: a.served("/health") >= 2)
    assert any(p.cluster.name == "up" for p in server.pools.running)
    await server.apply(http_config([], []))
    await until(lambda: not any(p.cluster.name == "up" for p in server.pools.running))
    seen = a.served("/health")
    # Its nursery is gone, and with it the checker: no check starts over several intervals.
    await trio.sleep(0.5)
    assert a.served("/health") == seen


async def test_hosts_added_by_a_reload_are_checked_and_removed_ones_are_not(nursery):
    a, b = KillableUpstream(nursery), KillableUpstream(nursery)
    await a.start()
    await b.start()
    server, _ = await start_proxy(nursery, config([a.port], HTTP_HC))
    await until(lambda: a.served("/health") >= 1)
    await server.apply(config([b.port], HTTP_HC))
    await until(lambda: b.served("/health") >= 2)
    seen = a.served("/health")
    await until(lambda: b.served("/health") >= 6)
    assert a.served("/health") <= seen + 1  # at most the check in flight at the swap


async def test_attacker_endless_status_line_is_bounded(nursery):
    sent: list[int] = [0]

    async def flood(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        chunk = b"HTTP/1.1 200" + b"0" * 4084  # never a line end
        try:
            while sent[0] < 10_000_000:
                await stream.send_all(chunk)
                sent[0] += len(chunk)
        except trio.BrokenResourceError:
            pass  # the checker gave up and closed

    good = KillableUpstream(nursery)
    await good.start()
    bad = await start_raw_server(nursery, flood)
    hc = {**HTTP_HC, "timeout": "5s", "unhealthy_threshold": 1}
    server, _ = await start_proxy(nursery, config([good.port, bad], hc))
    await until(lambda: host_of(server, bad).failed_active_hc)
    # Failed on its 16 KiB budget, long before the timeout; a wrong answer, not a network one.
    stats = server.clusters.get("up").stats
    assert stats.health_check_network_failure == 0
    assert sent[0] < 10_000_000 and host_of(server, good.port).usable
