"""A registry call failing in the middle of an API request that replaces something (a
publication with new methods, a subscription with new filters): what the proxy records, what
the registry holds and what the proxy routes stay one and the same."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_mesh import Server
from trio_mesh.config.registry import DubboRegistryConfig
from trio_mesh.registry.backend import RegistryUnavailable, SessionKey
from trio_mesh.registry.memory import MemoryRegistry, MemorySession
from trio_mesh.registry.request import parse_request
from trio_mesh.registry.url import parse_node, providers_path

from ..rpc_helpers import provider
from .helpers import SERVICE, api, body, provider_node, sidecar_config

ADDR = "127.0.0.1:2181"


class FlakySession(MemorySession):
    """A memory session whose next delete or watch can be made to fail, as a ZooKeeper that
    stops answering would."""

    fail_delete = False
    fail_watch = False
    hang_create = False
    #: Set: creates wait until it is set (a registry answering late).
    slow_create: trio.Event | None = None

    async def create_ephemeral(self, path: str, *, timeout: float) -> None:
        if FlakySession.hang_create:
            await trio.sleep_forever()  # the API's handler deadline comes first
        if FlakySession.slow_create is not None:
            await FlakySession.slow_create.wait()
        await super().create_ephemeral(path, timeout=timeout)

    async def delete_ephemeral(self, path: str, *, timeout: float) -> None:
        if FlakySession.fail_delete:
            FlakySession.fail_delete = False
            raise RegistryUnavailable(f"memory {path}: timed out")
        await super().delete_ephemeral(path, timeout=timeout)

    async def watch_children(self, path: str, on_change: Any, *, timeout: float) -> Any:
        if FlakySession.fail_watch:
            FlakySession.fail_watch = False
            raise RegistryUnavailable(f"memory {path}: timed out")
        return await super().watch_children(path, on_change, timeout=timeout)


def flaky(key: SessionKey, config: DubboRegistryConfig) -> FlakySession:
    return FlakySession(key)


async def flaky_server(nursery: trio.Nursery, **kw: Any) -> Server:
    server = Server(sidecar_config(**kw))
    assert server.registry is not None
    server.registry._open_session = flaky
    FlakySession.fail_delete = FlakySession.fail_watch = FlakySession.hang_create = False
    FlakySession.slow_create = None
    return await nursery.start(server.run)


async def test_new_methods_with_the_old_node_not_deleted_leave_no_unrecorded_node(nursery):
    local = await provider(nursery, "local")
    server = await flaky_server(nursery, provider_port=local)
    registry = MemoryRegistry.get(ADDR)
    status, _ = await api(server, "/pub", body(ADDR, type="memory", methods=["sayHello"]))
    assert status == 200
    # New methods: the new node is created, deleting the old one fails.
    FlakySession.fail_delete = True
    await api(server, "/pub", body(ADDR, type="memory", methods=["sayHello", "add"]))
    # The new node is in place: it is the publication recorded...
    _, listing = await api(server, "/pub", method="GET")
    (recorded,) = listing["publications"]
    assert recorded["service"]["methods"] == ["sayHello", "add"]
    nodes = registry.children(providers_path(SERVICE))
    assert [n for n in nodes if "add%2CsayHello" in n]
    # ... and /unpub takes out the node the proxy made last: none of ours with `add` stays.
    status, _ = await api(server, "/unpub", body(ADDR, type="memory", methods=[]))
    assert status == 200
    left = registry.children(providers_path(SERVICE))
    assert not [n for n in left if "add%2CsayHello" in n], left


async def test_a_failed_resubscription_leaves_no_route_to_the_old_one(nursery):
    a = await provider(nursery, "a")
    other = MemorySession(("memory", ADDR, "", ""))
    await nursery.start(other.run)
    await other.create_ephemeral(provider_node(a, group="g1"), timeout=5)
    server = await flaky_server(nursery)
    status, _ = await api(server, "/sub", body(ADDR, type="memory", group="g1"))
    assert status == 200 and server.clusters.get(SERVICE) is not None
    # New filters replace the subscription; the registry fails while watching.
    FlakySession.fail_watch = True
    status, answer = await api(server, "/sub", body(ADDR, type="memory", group="g2"))
    assert status == 503 and answer["err_no"] == 1
    _, listing = await api(server, "/sub", method="GET")
    # Nothing subscribed: nothing routed either (the old cluster and route are gone).
    assert listing["subscriptions"] == []
    assert SERVICE not in server.clusters
    routers = [
        r for s in server.config.servers for r in s.routers if r.router_config_name == "dubbo"
    ]
    assert all(not vh.routers for r in routers for vh in r.virtual_hosts)


@pytest.mark.parametrize("kind", ["pub", "sub"])
async def test_a_request_cancelled_midway_keeps_no_session(nursery, kind):
    # The API's handler has a deadline of its own (the HTTP server's): a registry slower
    # than it cancels the call in the middle; the session it opened must not live on,
    # connecting forever to a registry nothing uses.
    server = await flaky_server(nursery, provider_port=1)
    assert server.registry is not None
    FlakySession.hang_create = True
    doc = body(ADDR, type="memory")
    req = parse_request(json.dumps(doc).encode(), kind=kind)
    call = server.registry.publish if kind == "pub" else server.registry.subscribe
    with trio.move_on_after(0.2) as scope:
        await call(req)
    assert scope.cancelled_caught
    assert server.registry.sessions == {}
    assert server.registry.publications == {} and server.registry.subscriptions == {}


async def test_a_drain_that_gave_up_waiting_still_stops_publishing(nursery):
    # A /pub in flight (a slow registry) holds the registry's lock past the drain's bound:
    # the drain goes on without it, and neither that /pub nor any later one publishes.
    server = await flaky_server(nursery, provider_port=1)
    assert server.registry is not None
    req = parse_request(json.dumps(body(ADDR, type="memory")).encode(), kind="pub")
    FlakySession.slow_create = answered = trio.Event()
    done = trio.Event()

    async def publish() -> None:
        try:
            await server.registry.publish(req)
        except Exception:
            pass  # refused: what the registry holds is what matters
        finally:
            done.set()

    nursery.start_soon(publish)
    await trio.testing.wait_all_tasks_blocked()
    await server.drain(0.2)
    answered.set()
    with trio.fail_after(5):
        await done.wait()
    assert MemoryRegistry.get(ADDR).children(providers_path(SERVICE)) == ()
    assert server.registry.publications == {}
    status, answer = await api(server, "/pub", body(ADDR, type="memory"))
    assert status == 409 and "draining" in answer["err_msg"]


async def test_a_reload_moving_the_published_listener_is_refused(nursery):
    # The provider node names the listener's port: a reload that moves the listener would
    # leave consumers calling a closed port.
    import attrs

    from trio_mesh.config.scalars import Address
    from trio_mesh.errors import StartupError

    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    assert (await api(server, "/pub", body(ADDR, type="memory")))[0] == 200
    # The same file: fine, the port stays.
    await server.apply(sidecar_config(provider_port=local))
    (node,) = MemoryRegistry.get(ADDR).children(providers_path(SERVICE))
    published = parse_node(node)
    assert published is not None and published.port == server.addresses["ingress"][1]
    # The ingress listener on another (free) port, while published: refused, nothing changed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    moved = sidecar_config(provider_port=local)
    servers = list(moved.servers)
    listeners = tuple(
        attrs.evolve(lst, address=Address("127.0.0.1", free)) if lst.name == "ingress" else lst
        for lst in servers[0].listeners
    )
    servers[0] = attrs.evolve(servers[0], listeners=listeners)
    with pytest.raises(StartupError, match="server_listener"):
        await server.apply(attrs.evolve(moved, servers=tuple(servers)))
    assert server.addresses["ingress"][1] == published.port
    # Unpublished, the same reload is taken.
    assert (await api(server, "/unpub", body(ADDR, type="memory", methods=[])))[0] == 200
    await server.apply(attrs.evolve(moved, servers=tuple(servers)))
    assert server.addresses["ingress"][1] == free
