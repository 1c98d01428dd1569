"""The registry under attack: a hostile local client of the API and hostile or broken
provider nodes written into the registry by someone else (in-memory registry: the same
runtime code as ZooKeeper's)."""

from __future__ import annotations

import os
import time

import pytest
import trio

from trio_mesh import Server
from trio_mesh.registry.memory import MemoryRegistry, MemorySession
from trio_mesh.registry.runtime import MAX_PROVIDER_NODES
from trio_mesh.registry.url import node_name, provider_url, providers_path

from ..rpc_helpers import provider
from .helpers import SERVICE, api, body, calls, provider_node, sidecar_config

ADDR = "127.0.0.1:2181"


@pytest.fixture(autouse=True)
def fresh_memory_registry():
    MemoryRegistry.reset()
    yield
    MemoryRegistry.reset()


def node_at(ip: str, port: int, **params: str) -> str:
    url = provider_url(
        ip=ip,
        port=port,
        interface=SERVICE,
        methods=("sayHello",),
        group="",
        version="",
        timestamp_ms=int(time.time() * 1000),
        pid=os.getpid(),
    )
    return f"{providers_path(SERVICE)}/{node_name(url)}"


async def register(nursery: trio.Nursery, *paths: str) -> MemorySession:
    session = MemorySession(("memory", ADDR, "", ""))
    await nursery.start(session.run)
    for path in paths:
        await session.create_ephemeral(path, timeout=5)
    return session


async def test_provider_nodes_pointing_back_at_the_proxy_are_not_routed(nursery):
    """A node naming the proxy's egress listener (every call would loop through the proxy
    until it runs out of connections), its registry API, or 0.0.0.0 / :: (this machine):
    dropped; the real provider takes every call."""
    a = await provider(nursery, "a")
    server = await nursery.start(Server(sidecar_config()).run)
    egress = server.addresses["egress"][1]
    assert server.registry is not None and server.registry.address is not None
    api_port = server.registry.address[1]
    await register(
        nursery,
        provider_node(a),
        node_at("127.0.0.1", egress),
        node_at("127.0.0.1", api_port),
        node_at("0.0.0.0", a),
        node_at("::", a),
        node_at("224.0.0.1", a),
    )
    status, answer = await api(server, "/sub", body(ADDR, type="memory"))
    assert (status, answer["err_no"]) == (200, 0)
    hosts = sorted(str(h.address) for h in server.clusters.get(SERVICE).hosts)
    assert hosts == [f"127.0.0.1:{a}"]
    answers = await calls(egress, 5)
    assert {x.rsplit(" ", 1)[1] for x in answers} == {"a"}


async def test_subscribing_to_what_this_proxy_publishes_still_routes_to_its_ingress(nursery):
    """The published listener is not a loop: the proxy's own publication stays a host."""
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    assert (await api(server, "/pub", body(ADDR, type="memory")))[0] == 200
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    hosts = [str(h.address) for h in server.clusters.get(SERVICE).hosts]
    assert hosts == [f"127.0.0.1:{server.addresses['ingress'][1]}"]
    assert await calls(server.addresses["egress"][1], 1) == ["hello c0 from local"]


async def test_a_flood_of_provider_nodes_does_not_stall_the_event_loop(nursery):
    """Ninety thousand provider nodes (a hostile writer): the subscription reads a
    bounded number of them and a concurrent task keeps ticking."""
    n = 90_000
    # Before the cap: 90,000 nodes stalled the event loop 2.5 s on every change.
    ips = (f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n))
    await register(nursery, *(node_at(ip, 20880) for ip in ips))
    server = await nursery.start(Server(sidecar_config()).run)
    worst = 0.0
    stop = trio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            before = trio.current_time()
            await trio.sleep(0.005)
            worst = max(worst, trio.current_time() - before - 0.005)

    nursery.start_soon(ticker)
    status, answer = await api(server, "/sub", body(ADDR, type="memory"))
    stop.set()
    assert (status, answer["err_no"]) == (200, 0)
    assert len(server.clusters.get(SERVICE).hosts) == MAX_PROVIDER_NODES
    assert worst < 0.5, f"the event loop stalled {worst:.3f}s"
