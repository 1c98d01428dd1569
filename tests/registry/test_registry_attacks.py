"""The registry under attack: a hostile local client of the API and hostile or broken
provider nodes written into the registry by someone else (in-memory registry: the same
runtime code as ZooKeeper's)."""

from __future__ import annotations

import json
import logging
import os
import time

import trio

from trio_mesh import Server
from trio_mesh.registry.backend import RegistryUnavailable
from trio_mesh.registry.memory import MAX_NAMESPACES, MemoryRegistry, MemorySession
from trio_mesh.registry.request import parse_request
from trio_mesh.registry.runtime import (
    MAX_PROVIDER_NODES,
    MAX_PUBLICATIONS,
    MAX_SESSIONS,
    MAX_SUBSCRIPTIONS,
)
from trio_mesh.registry.url import node_name, provider_url, providers_path

from ..rpc_helpers import provider
from ..zookeeper_server import ZooKeeper, needs_zookeeper
from .helpers import SERVICE, api, body, calls, provider_node, register, sidecar_config
from .test_zookeeper import connected
from .test_zookeeper import session as zk_session

ADDR = "127.0.0.1:2181"


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
        node_at("::ffff:127.0.0.1", egress),
        node_at("127.0.0.2", egress),
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


class FlakyDelete(MemorySession):
    """A memory session whose deletes fail while ``failing`` (a registry that stops
    answering between two requests of one call)."""

    failing = False

    async def delete_ephemeral(self, path: str, *, timeout: float) -> None:
        if FlakyDelete.failing:
            self.ephemerals.discard(path)  # as ZkSession: forgotten, then the call fails
            raise RegistryUnavailable(f"deleting {path}: timed out")
        await super().delete_ephemeral(path, timeout=timeout)


async def test_republishing_with_new_methods_leaves_nothing_out_of_reach(nursery, monkeypatch):
    """The old node cannot be deleted when new methods are published: before, the new node
    stayed registered but untracked, so /unpub (and the drain) could never remove it."""
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    assert server.registry is not None
    monkeypatch.setattr(server.registry, "_open_session", lambda key, config: FlakyDelete(key))
    monkeypatch.setattr(FlakyDelete, "failing", False)
    assert (await api(server, "/pub", body(ADDR, type="memory", methods=["a"])))[0] == 200
    FlakyDelete.failing = True
    status, answer = await api(server, "/pub", body(ADDR, type="memory", methods=["a", "b"]))
    assert (status, answer["err_no"]) == (200, 0)
    FlakyDelete.failing = False
    status, _ = await api(server, "/unpub", body(ADDR, type="memory", methods=[]))
    assert status == 200
    # The replaced node is left (it goes with the session); the current one is gone.
    left = MemoryRegistry.get(ADDR).children(providers_path(SERVICE))
    assert len(left) == 1 and "methods%3Da%26" in left[0]
    assert server.registry.publications == {}


async def test_publications_subscriptions_and_sessions_are_bounded(nursery):
    server = await nursery.start(Server(sidecar_config(provider_port=1)).run)
    runtime = server.registry
    assert runtime is not None
    for i in range(MAX_SESSIONS):
        status, _ = await api(server, "/pub", body(f"127.0.0.{i + 1}:2181", type="memory"))
        assert status == 200
    status, answer = await api(server, "/pub", body("127.0.1.1:2181", type="memory"))
    assert status == 409 and "registries" in answer["err_msg"]
    assert len(runtime.sessions) == MAX_SESSIONS
    for i in range(MAX_PUBLICATIONS - MAX_SESSIONS):
        doc = body(ADDR, type="memory", interface=f"svc.S{i}")
        assert (await api(server, "/pub", doc))[0] == 200
    status, answer = await api(server, "/pub", body(ADDR, type="memory", interface="svc.X"))
    assert status == 409 and "the most" in answer["err_msg"]
    assert len(runtime.publications) == MAX_PUBLICATIONS
    for i in range(MAX_SUBSCRIPTIONS):
        doc = body(ADDR, type="memory", interface=f"sub.S{i}")
        assert (await api(server, "/sub", doc))[0] == 200
    status, answer = await api(server, "/sub", body(ADDR, type="memory", interface="sub.X"))
    assert status == 409 and "the most" in answer["err_msg"]
    assert "sub.X" not in server.clusters


async def test_resubscribing_elsewhere_closes_the_old_registry_session(nursery):
    server = await nursery.start(Server(sidecar_config()).run)
    runtime = server.registry
    assert runtime is not None
    for i in range(3 * MAX_SESSIONS):
        status, _ = await api(server, "/sub", body(f"127.0.0.{i + 1}:2181", type="memory"))
        assert status == 200
    assert len(runtime.sessions) == 1


class Hanging(MemorySession):
    """A registry that takes the connection and never answers a create."""

    entered: trio.Event | None = None

    async def create_ephemeral(self, path: str, *, timeout: float) -> None:
        if Hanging.entered is not None:
            Hanging.entered.set()
        await trio.sleep_forever()


async def test_a_cancelled_request_does_not_leave_its_session_open(nursery, monkeypatch):
    """The API's handler timeout (or a stop) cancels a publish or subscribe stuck on its
    registry: the session it opened is closed (else MAX_SESSIONS of them refuse the rest)."""
    server = await nursery.start(Server(sidecar_config(provider_port=1)).run)
    runtime = server.registry
    assert runtime is not None
    monkeypatch.setattr(runtime, "_open_session", lambda key, config: Hanging(key))
    for kind, call in (("pub", runtime.publish), ("sub", runtime.subscribe)):
        for i in range(MAX_SESSIONS + 1):
            req = parse_request(
                json.dumps(body(f"127.0.0.{i + 1}:2181", type="memory")).encode(), kind=kind
            )
            with trio.move_on_after(0.05) as scope:
                await call(req)
            assert scope.cancelled_caught
        assert runtime.sessions == {}
    assert runtime.publications == {} and runtime.subscriptions == {}


async def test_memory_registry_namespaces_are_bounded(nursery):
    """A client naming a new memory addr on every call: the namespaces (which outlive their
    sessions) stop at MAX_NAMESPACES, with a 503 naming the bound."""
    server = await nursery.start(Server(sidecar_config(provider_port=1)).run)
    for i in range(MAX_NAMESPACES):
        doc = body(f"10.0.{i // 250}.{i % 250 + 1}:2181", type="memory")
        assert (await api(server, "/pub", doc))[0] == 200
        assert (await api(server, "/unpub", doc))[0] == 200
    status, answer = await api(server, "/pub", body("10.9.9.9:2181", type="memory"))
    assert status == 503 and f"{MAX_NAMESPACES} addrs" in answer["err_msg"]
    assert server.registry is not None and server.registry.sessions == {}


async def test_a_flapping_provider_does_not_flood_the_log(nursery, caplog):
    """A node added and removed again and again among many: each change logs what changed,
    not every address."""
    other = await register(nursery, *(node_at(f"10.0.0.{i + 1}", 20880) for i in range(200)))
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    assert server.registry is not None
    (mine,) = server.registry.sessions.values()
    assert isinstance(mine, MemorySession)
    flap = node_at("10.9.9.9", 20880)
    caplog.set_level(logging.INFO, logger="trio_mesh.registry")
    caplog.clear()
    for _ in range(5):
        await other.create_ephemeral(flap, timeout=5)
        await mine.settled()
        await other.delete_ephemeral(flap, timeout=5)
        await mine.settled()
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_mesh.registry"]
    assert lines and all(len(line) < 200 for line in lines), max(lines, key=len)
    assert any("added 10.9.9.9:20880" in line for line in lines)


@needs_zookeeper
async def test_the_digest_password_is_not_logged_at_debug(zookeeper: ZooKeeper, caplog):
    """kazoo logs each request it sends at DEBUG, the Auth with "user:password" too: an
    operator's ``--log-level DEBUG`` must not write the password into the logs."""
    caplog.set_level(logging.DEBUG)
    async with zk_session(zookeeper.address, "alice", "s3cret-pw") as zk:
        await connected(zk)
        await zk.create_ephemeral("/attack/debug-log", timeout=10)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Auth(" in text  # kazoo did log the request: the check is not vacuous
    assert "s3cret-pw" not in text


async def test_providers_all_at_weight_zero_are_still_called_as_dubbo_does(nursery):
    """Dubbo's random balancer picks among all providers alike when every weight is 0;
    dropping them all would empty the cluster. With one above 0, the others get nothing."""
    a = await provider(nursery, "a")
    b = await provider(nursery, "b")
    await register(
        nursery,
        *(
            f"{providers_path(SERVICE)}/"
            + node_name(f"dubbo://127.0.0.1:{port}/{SERVICE}?interface={SERVICE}&weight=0")
            for port in (a, b)
        ),
    )
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    hosts = sorted(str(h.address) for h in server.clusters.get(SERVICE).hosts)
    assert hosts == sorted([f"127.0.0.1:{a}", f"127.0.0.1:{b}"])
    answers = await calls(server.addresses["egress"][1], 30)
    assert {x.rsplit(" ", 1)[1] for x in answers} == {"a", "b"}


async def test_status_writes_ipv6_providers_unambiguously(nursery):
    """GET / listed ``[::1]:1`` as ``::1:1`` (host and port cannot be told apart)."""
    v6 = f"{providers_path(SERVICE)}/" + node_name(
        f"dubbo://[::1]:20880/{SERVICE}?interface={SERVICE}"
    )
    await register(nursery, v6)
    server = await nursery.start(Server(sidecar_config()).run)
    assert (await api(server, "/sub", body(ADDR, type="memory")))[0] == 200
    status, listing = await api(server, "/", method="GET")
    assert status == 200 and listing["subscriptions"][0]["hosts"] == ["[::1]:20880"]


async def test_a_request_stuck_on_its_registry_cannot_publish_after_a_drain(nursery, monkeypatch):
    """A /pub hanging on an unresponsive registry holds the API's lock past the drain's
    bound: the drain's unpublish gives up waiting, and a /pub after it must be refused."""
    server = await nursery.start(Server(sidecar_config(provider_port=1)).run)
    runtime = server.registry
    assert runtime is not None

    def sessions(key, config):
        return Hanging(key) if key[1] == "10.1.1.1:2181" else MemorySession(key)

    monkeypatch.setattr(runtime, "_open_session", sessions)
    stuck = parse_request(json.dumps(body("10.1.1.1:2181", type="memory")).encode(), kind="pub")
    cancel_stuck = trio.CancelScope()

    async def publish_stuck() -> None:
        with cancel_stuck:
            await runtime.publish(stuck)

    monkeypatch.setattr(Hanging, "entered", trio.Event())
    nursery.start_soon(publish_stuck)
    assert Hanging.entered is not None
    await Hanging.entered.wait()  # the stuck request holds the lock
    await server.drain(0.2)
    cancel_stuck.cancel()
    status, answer = await api(server, "/pub", body(ADDR, type="memory"))
    assert status == 409 and "draining" in answer["err_msg"]
    assert MemoryRegistry.get(ADDR).children(providers_path(SERVICE)) == ()
