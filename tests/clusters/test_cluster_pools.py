"""Each cluster's pools own their nursery: removing a cluster by a configuration swap closes
exactly its upstream connections (once its requests in flight are done); the other
cluster's connections stay open and keep serving; nothing of the pools outlives the server."""

from __future__ import annotations

import trio
import trio.testing

from tests.h2_upstream import start_h2_upstream
from tests.http_helpers import Client, get, http_config, start_proxy, start_raw_server, to
from tests.rpc_helpers import BoltClient, request
from trio_mesh.protocols.http2 import H2Settings, ResponseHeaders
from trio_mesh.protocols.xprotocol.bolt import BOLT
from trio_mesh.server import Server


class Upstream:
    """A bolt echo upstream that counts its connections, sees them end, and holds requests
    whose content is ``hold`` until ``release`` is set."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.changed = trio.Event()
        self.holding = trio.Event()
        self.release = trio.Event()
        self.port = 0

    async def handler(self, stream: trio.SocketStream) -> None:
        self.opened += 1
        self._changed()
        peer = BoltClient(stream)
        try:
            while True:
                frame = await peer.read()
                if frame.is_heartbeat:
                    await stream.send_all(bytes(BOLT.heartbeat_reply(frame).data))
                    continue
                if bytes(frame.content) == b"hold":
                    self.holding.set()
                    await self.release.wait()
                content = b"echo:" + bytes(frame.content)
                resp = BOLT.build_response(frame.request_id, 0, content=content)
                await stream.send_all(bytes(resp.data))
        except (EOFError, trio.BrokenResourceError):
            pass
        finally:
            self.closed += 1  # EOF from the proxy (or a reset)
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Upstream:
        self.port = await start_raw_server(nursery, self.handler)
        return self


def two_clusters(a: int, b: int | None):
    routes = [
        {
            "match": {"headers": [{"name": "service", "value": "svc.a"}]},
            "route": {"cluster_name": "a"},
        }
    ]
    clusters = {"a": a}
    if b is not None:
        routes.append(
            {
                "match": {"headers": [{"name": "service", "value": "svc.b"}]},
                "route": {"cluster_name": "b"},
            }
        )
        clusters["b"] = b
    return http_config(routes=routes, clusters=clusters, proxy={"downstream_protocol": "bolt"})


async def call(client: BoltClient, rid: int, service: str, body: bytes) -> bytes:
    await client.send(request(rid, body, service=service))
    resp = await client.read()
    assert resp.request_id == rid
    return bytes(resp.content)


async def test_removing_a_cluster_closes_exactly_its_connections(nursery):
    a = await Upstream().start(nursery)
    b = await Upstream().start(nursery)
    with trio.fail_after(20):
        async with trio.open_nursery() as server_nursery:
            server = await server_nursery.start(Server(two_clusters(a.port, b.port)).run)
            port = server.addresses["ingress"][1]
            client = await BoltClient.connect(port)
            assert await call(client, 1, "svc.a", b"x") == b"echo:x"
            assert await call(client, 2, "svc.b", b"y") == b"echo:y"
            assert (a.opened, b.opened) == (1, 1)
            cluster_b = server.clusters.get("b")
            (owner_b,) = [p for p in server.pools.running if p.cluster is cluster_b]

            # A call in flight on b when b is removed: it finishes, then b's connection closes.
            await client.send(request(3, b"hold", service="svc.b"))
            await b.holding.wait()
            await server.apply(two_clusters(a.port, None))
            assert "b" not in server.clusters
            assert b.closed == 0  # busy: not closed under its request
            assert await call(client, 4, "svc.a", b"z") == b"echo:z"  # a serves on
            b.release.set()
            resp = await client.read()
            assert resp.request_id == 3 and bytes(resp.content) == b"echo:hold"
            while b.closed == 0:
                await b.changed.wait()
            await owner_b.done.wait()  # b's nursery ended with its connections
            assert [p.cluster.name for p in server.pools.running] == ["a"]

            # a's connection is the one it had, open and serving.
            assert await call(client, 5, "svc.a", b"w") == b"echo:w"
            assert (a.opened, a.closed, b.opened, b.closed) == (1, 0, 1, 1)
            server_nursery.cancel_scope.cancel()
        # Shutdown: the pools' nursery ended cleanly and closed a's connection too.
        assert server.pools.running == []
        while a.closed == 0:
            await a.changed.wait()


def h2_clusters(a: int, b: int | None, cluster: dict | None = None):
    clusters = {"a": {"hosts": [{"address": f"127.0.0.1:{a}"}], **(cluster or {})}}
    routes = [to("a")]
    if b is not None:
        clusters["b"] = {"hosts": [{"address": f"127.0.0.1:{b}"}]}
        to_b = {"prefix": "/", "headers": [{"name": "x-to", "value": "b"}]}
        routes.insert(0, {"match": to_b, "route": {"cluster_name": "b"}})
    proxy = {"downstream_protocol": "Http1", "upstream_protocol": "Http2"}
    return http_config(routes, clusters, proxy=proxy)


async def test_removing_an_http2_cluster_closes_its_connection_only(nursery):
    a, b = await start_h2_upstream(nursery), await start_h2_upstream(nursery)
    server, port = await start_proxy(nursery, h2_clusters(a.port, b.port))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            for headers in ("", "x-to: b\r\n"):
                await client.send(get("/echo", headers=headers))
                assert (await client.response()).status == 200
            cluster_b = server.clusters.get("b")
            (owner_b,) = [p for p in server.pools.running if p.cluster is cluster_b]
            await server.apply(h2_clusters(a.port, None))
            await b.wait_until(lambda: b.connections_closed == 1)
            await owner_b.done.wait()  # b's nursery ended with its connection
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
    assert (a.connections, a.connections_closed, b.connections) == (1, 0, 1)
    assert [p.cluster.name for p in server.pools.running] == ["a"]


async def test_an_idle_http2_upstream_connection_is_reaped(nursery):
    up = await start_h2_upstream(nursery)
    server, port = await start_proxy(nursery, h2_clusters(up.port, None, {"idle_timeout": "300ms"}))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            assert (await client.response()).status == 200
        await up.wait_until(lambda: up.connections_closed == 1)  # the cluster's reaper
    stats = server.clusters.get("a").stats
    assert (stats.upstream_cx_idle_timeout, stats.upstream_cx_active) == (1, 0)


async def test_a_clusters_failure_stays_in_its_nursery(nursery):
    a = await Upstream().start(nursery)
    b = await Upstream().start(nursery)
    server = await nursery.start(Server(two_clusters(a.port, b.port)).run)
    client = await BoltClient.connect(server.addresses["ingress"][1])
    with trio.fail_after(10):
        assert await call(client, 1, "svc.a", b"x") == b"echo:x"
        assert await call(client, 2, "svc.b", b"y") == b"echo:y"
        cluster_b = server.clusters.get("b")
        (owner_b,) = [p for p in server.pools.running if p.cluster is cluster_b]

        async def fails() -> None:
            raise RuntimeError("a bug in one cluster's pools")

        (await owner_b.nursery()).start_soon(fails)
        await owner_b.done.wait()
        while b.closed == 0:
            await b.changed.wait()  # b's connection went with its nursery
        # a was not touched; b's next call builds its pools afresh.
        assert await call(client, 3, "svc.a", b"z") == b"echo:z"
        assert await call(client, 4, "svc.b", b"w") == b"echo:w"
    assert (a.opened, a.closed, b.opened, b.closed) == (1, 0, 2, 1)


async def test_a_late_try_on_a_removed_cluster_gets_its_connection(nursery):
    # A try that reaches a cluster's pools after the cluster left (a retry across a
    # configuration swap) must not meet the closed nursery of its pools (a RuntimeError: an
    # internal error to its client): the cluster's run waits for that connection, then ends
    # once it is idle again.
    up = await start_h2_upstream(nursery)
    server, _ = await start_proxy(nursery, h2_clusters(up.port, None))
    cluster = server.clusters.get("a")
    (host,) = cluster.hosts
    server.pools.remove_clusters([cluster])
    await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(10):
        pool = server.pools.http2(cluster, host, H2Settings())
        (owner,) = [p for p in server.pools.running if p.cluster is cluster]
        ep, sid, inbox = await pool.open_stream()
        path = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo")]
        ep.send_headers(sid, [*path, (b":authority", b"a")], end_stream=True)
        assert type(await inbox.get()) is ResponseHeaders
        ep.close_stream(sid)
        await owner.done.wait()  # idle again: closed with the cluster's nursery
        await up.wait_until(lambda: up.connections_closed == 1)
    assert server.pools.running == []
