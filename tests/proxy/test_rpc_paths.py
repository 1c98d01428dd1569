"""The RPC fast path (no stream filter: the reader serves a call without a task of its own) and
the task path (``lifecycle.handle_message`` on a task per call) behave the same: the same
answers to the client, the same access log records, the same counters, for a success, a
timeout, no route, no healthy host, an upstream refusing or dropping the connection, and a
oneway request. ``xprotocol.FAST_PATH`` off puts every call on the task path."""

from __future__ import annotations

import trio
import trio.testing

from tests.http_helpers import (
    access_log,
    closed_port,
    http_config,
    read_access_log,
    running_proxy,
    start_raw_server,
)
from tests.rpc_helpers import BoltClient, echo_upstream, request
from trio_mesh.protocols.xprotocol import ErrorKind
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus
from trio_mesh.proxy import xprotocol

SERVICE = "com.example.Echo:1.0"
# What the two paths must agree on (times and the client's port differ from run to run).
LOGGED = (
    "protocol",
    "x-mosn-rpc-service",
    "x-mosn-rpc-method",
    "response_code",
    "response_flag",
    "route_name",
    "upstream_cluster",
    "upstream_host",
    "bytes_received",
    "bytes_sent",
)


def config(up, listener, timeout: str | None = None, retry_policy: dict | None = None):
    route: dict = {"cluster_name": "up"}
    if timeout is not None:
        route["timeout"] = timeout
    if retry_policy is not None:
        route["retry_policy"] = retry_policy
    routes = [
        {
            "name": "echo",
            "match": {"headers": [{"name": "service", "value": SERVICE}]},
            "route": route,
        }
    ]
    return http_config(
        routes=routes,
        clusters={"up": up},
        proxy={"downstream_protocol": "bolt"},
        listener=listener,
    )


async def both_paths(
    monkeypatch, tmp_path, up, calls, timeout: str | None = None, retry_policy: dict | None = None
):
    """Run ``calls(client)`` through a proxy in each mode: per mode, what the client got,
    the access log records and the counters."""
    seen = {}
    for fast in (True, False):
        monkeypatch.setattr(xprotocol, "FAST_PATH", fast)
        logdir = tmp_path / ("fast" if fast else "task")
        logdir.mkdir()
        keys, path = access_log(logdir)
        async with running_proxy(config(up, keys, timeout, retry_policy)) as (server, port):
            client = await BoltClient.connect(port)
            with trio.fail_after(10):
                got = await calls(client)
            listener = server.listeners["ingress"].stats
            cluster = server.clusters.clusters["up"].stats
            counters = (
                listener.downstream_rq_total,
                listener.downstream_rq_2xx,
                listener.downstream_rq_4xx,
                listener.downstream_rq_5xx,
                cluster.upstream_rq_total,
                cluster.upstream_rq_timeout,
                cluster.upstream_rq_active,
                cluster.upstream_rq_retry,
            )
        lines = [{k: line[k] for k in LOGGED} for line in read_access_log(path)]
        seen[fast] = (got, lines, counters)
    assert seen[True] == seen[False]
    return seen[True]


def answer(frame) -> tuple:
    return frame.request_id, frame.status, bytes(frame.content)


async def test_success(nursery, monkeypatch, tmp_path):
    up = await echo_upstream(nursery)

    async def calls(client):
        for rid in (1, 2, 3):
            await client.send(request(rid, b"ping%d" % rid, service=SERVICE))
        return sorted([answer(await client.read()) for _ in range(3)])

    got, lines, counters = await both_paths(monkeypatch, tmp_path, up, calls)
    assert got == [(r, ResponseStatus.SUCCESS, b"echo:ping%d" % r) for r in (1, 2, 3)]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(200, None)] * 3
    assert lines[0]["upstream_host"] == f"127.0.0.1:{up}"
    assert counters == (3, 3, 0, 0, 3, 0, 0, 0)


async def silent_upstream(nursery) -> int:
    """Reads requests, answers none."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass

    return await start_raw_server(nursery, handler)


async def test_timeout(nursery, monkeypatch, tmp_path):
    up = await silent_upstream(nursery)

    async def calls(client):
        await client.send(request(7, b"slow", service=SERVICE))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(monkeypatch, tmp_path, up, calls, timeout="0.2s")
    assert got == [(7, BOLT.status_for(ErrorKind.TIMEOUT), b"")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(504, "UT")]
    assert counters == (1, 0, 0, 1, 1, 1, 0, 0)


async def test_no_route(nursery, monkeypatch, tmp_path):
    up = await echo_upstream(nursery)

    async def calls(client):
        await client.send(request(3, b"x", service="com.example.Nobody:1.0"))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(monkeypatch, tmp_path, up, calls)
    assert got == [(3, BOLT.status_for(ErrorKind.NO_ROUTE), b"")]
    assert [(e["response_code"], e["response_flag"], e["route_name"]) for e in lines] == [
        (404, "NR", None)
    ]
    assert counters == (1, 0, 1, 0, 0, 0, 0, 0)


async def test_no_healthy_host(monkeypatch, tmp_path):
    async def calls(client):
        await client.send(request(4, b"x", service=SERVICE))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(monkeypatch, tmp_path, [], calls)
    assert got == [(4, BOLT.status_for(ErrorKind.NO_HEALTHY_HOST), b"")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(503, "UH")]
    assert counters == (1, 0, 0, 1, 1, 0, 0, 0)


async def test_upstream_refuses_the_connection(monkeypatch, tmp_path):
    async def calls(client):
        await client.send(request(5, b"x", service=SERVICE))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(monkeypatch, tmp_path, closed_port(), calls)
    assert got == [(5, BOLT.status_for(ErrorKind.UPSTREAM_FAILURE), b"")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(503, "UF")]
    assert counters == (1, 0, 0, 1, 1, 0, 0, 0)


async def test_a_retry_policy_on_an_rpc_route_is_not_applied_on_either_path(monkeypatch, tmp_path):
    """RPC calls are not retried (config warns so for an RPC route's retry_policy): the task
    path must not retry either, nor fail on a per-try timeout it cannot arm."""
    policy = {"retry_on": ["connect-failure"], "num_retries": 2, "per_try_timeout": "1s"}

    async def calls(client):
        await client.send(request(5, b"x", service=SERVICE))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(
        monkeypatch, tmp_path, closed_port(), calls, retry_policy=policy
    )
    assert got == [(5, BOLT.status_for(ErrorKind.UPSTREAM_FAILURE), b"")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(503, "UF")]
    assert counters == (1, 0, 0, 1, 1, 0, 0, 0)


async def test_upstream_drops_the_connection_mid_call(nursery, monkeypatch, tmp_path):
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the request: closed without an answer
        await stream.aclose()

    up = await start_raw_server(nursery, handler)

    async def calls(client):
        await client.send(request(6, b"x", service=SERVICE))
        return [answer(await client.read())]

    got, lines, counters = await both_paths(monkeypatch, tmp_path, up, calls)
    assert got == [(6, BOLT.status_for(ErrorKind.UPSTREAM_RESET), b"")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(502, "UC")]
    assert counters == (1, 0, 0, 1, 1, 0, 0, 0)


async def test_oneway(nursery, monkeypatch, tmp_path):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)

    async def calls(client):
        await client.send(request(8, b"fire", service=SERVICE, oneway=True))
        await client.send(request(9, b"ping", service=SERVICE))
        return [answer(await client.read())]  # the only answer: none for the oneway

    got, lines, counters = await both_paths(monkeypatch, tmp_path, up, calls)
    assert got == [(9, ResponseStatus.SUCCESS, b"echo:ping")]
    assert [(e["response_code"], e["response_flag"]) for e in lines] == [(200, None)] * 2
    assert counters == (2, 2, 0, 0, 2, 0, 0, 0)
    fired = [bytes(f.content) for f in seen if f.is_oneway]
    assert fired == [b"fire", b"fire"]  # one per mode


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def test_the_fast_path_starts_no_task_per_call(nursery, monkeypatch):
    """What the fast path is for: pipelined calls on a warm connection spawn no task in the
    proxy (the task path spawns one per call)."""
    up = await echo_upstream(nursery)
    spawned = {}
    for fast in (True, False):
        monkeypatch.setattr(xprotocol, "FAST_PATH", fast)
        async with running_proxy(config(up, {})) as (_, port):
            client = await BoltClient.connect(port)
            with trio.fail_after(10):
                await client.send(request(1, b"warm", service=SERVICE))
                await client.read()  # the upstream connection is open now
                spawns = _Spawns()
                trio.lowlevel.add_instrument(spawns)
                try:
                    for rid in range(2, 22):
                        await client.send(request(rid, b"x", service=SERVICE))
                    answers = [await client.read() for _ in range(20)]
                finally:
                    trio.lowlevel.remove_instrument(spawns)
            assert sorted(a.request_id for a in answers) == list(range(2, 22))
            spawned[fast] = spawns.count
    assert spawned[True] == 0
    assert spawned[False] >= 20


async def test_a_connection_closed_mid_call(nursery, monkeypatch, tmp_path):
    """Calls still upstream when their connection is closed (here: the client sent a bad
    frame) end as a cancelled task's would: one record each, nothing answered, nothing left
    counted as active or pending upstream."""
    up = await silent_upstream(nursery)
    seen = {}
    for fast in (True, False):
        monkeypatch.setattr(xprotocol, "FAST_PATH", fast)
        logdir = tmp_path / ("fast" if fast else "task")
        logdir.mkdir()
        keys, path = access_log(logdir)
        async with running_proxy(config(up, keys)) as (server, port):
            cluster = server.clusters.clusters["up"]
            client = await BoltClient.connect(port)
            with trio.fail_after(10):
                for rid in (1, 2):
                    await client.send(request(rid, b"x", service=SERVICE))
                while cluster.stats.upstream_rq_active < 2:
                    await trio.testing.wait_all_tasks_blocked()
                await client.stream.send_all(b"\xff" * 32)  # not bolt: the proxy closes
                while cluster.stats.upstream_rq_active:
                    await trio.testing.wait_all_tasks_blocked()
            (pool,) = server.pools._x.values()
            pending = sum(len(c.pending) for c in pool.conns)
            active = [h.active_requests for h in cluster.hosts]
        lines = [{k: line[k] for k in LOGGED} for line in read_access_log(path)]
        seen[fast] = (lines, pending, active)
    assert seen[True] == seen[False]
    lines, pending, active = seen[True]
    assert [(e["response_code"], e["bytes_sent"]) for e in lines] == [(0, 0), (0, 0)]
    assert (pending, active) == (0, [0])
