"""The registry service end to end against a real ZooKeeper (tests/zookeeper_server.py), with
real peers: Dubbo providers behind trio-mesh, the dubbo-ssl-python consumer (with its own
ZooKeeper registry, or calling an egress listener), and an independent kazoo client that
checks what is in ZooKeeper. Each test uses its own interface: the session's ZooKeeper is
shared."""

from __future__ import annotations

import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError

from tests.http_helpers import closed_port
from tests.zookeeper_server import ZooKeeper, needs_zookeeper
from trio_mesh import Server
from trio_mesh.registry.url import consumers_path, parse_node, providers_path

from ..rpc_helpers import provider
from .helpers import api, body, provider_node, sidecar_config
from .test_zookeeper import blocking, kazoo, wait_until

pytestmark = needs_zookeeper


@pytest.fixture(autouse=True)
def _consumer_ip() -> None:
    # dubbo-ssl-python finds "its" IP by a UDP socket towards 8.8.8.8 (cached in a module
    # global): set it, so nothing depends on the machine's routes.
    import dubbo_ssl.common.util

    dubbo_ssl.common.util.ip = "127.0.0.1"


def ingress_of(server: Server) -> str:
    return f"127.0.0.1:{server.addresses['ingress'][1]}"


def egress_of(server: Server) -> int:
    return server.addresses["egress"][1]


def said_by(answer: str) -> str:
    """The provider's name in ``hello X from NAME``."""
    return answer.rsplit(" ", 1)[1]


async def call_many(port: int, interface: str, n: int) -> list[str]:
    """``n`` calls of ``sayHello`` by dubbo-ssl-python at 127.0.0.1:port (in a thread)."""
    from dubbo_ssl.client import DubboClient

    def run() -> list[str]:
        client = DubboClient(interface, group="", version="", host=f"127.0.0.1:{port}")
        return [str(client.call("sayHello", [f"c{i}"], timeout=10)) for i in range(n)]

    return await trio.to_thread.run_sync(run)


class Load:
    """A steady stream of calls (one at a time) by dubbo-ssl-python, in a thread."""

    def __init__(self, port: int, interface: str) -> None:
        self.port, self.interface = port, interface
        self.answers: list[str] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from dubbo_ssl.client import DubboClient

        client = DubboClient(self.interface, group="", version="", host=f"127.0.0.1:{self.port}")
        i = 0
        while not self.stop.is_set():
            try:
                self.answers.append(str(client.call("sayHello", [f"l{i}"], timeout=10)))
            except Exception as exc:
                self.errors.append(exc)
            i += 1

    async def more(self, n: int, timeout: float = 20) -> None:
        """Until ``n`` more calls have been answered (or failed)."""
        target = len(self.answers) + len(self.errors) + n
        with trio.fail_after(timeout):
            while len(self.answers) + len(self.errors) < target:
                await trio.sleep(0.01)  # a poll interval: the calls are another thread's


@asynccontextmanager
async def load(port: int, interface: str) -> AsyncIterator[Load]:
    running = Load(port, interface)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, running.run)
        try:
            await running.more(1)
            yield running
        finally:
            running.stop.set()  # the thread ends after its call in flight


@asynccontextmanager
async def zk_register(address: str) -> AsyncIterator[Any]:
    """dubbo-ssl-python's ZooKeeper registry (its kazoo client runs in its own threads)."""
    from dubbo_ssl.client import ZkRegister

    register = await blocking(ZkRegister, address)
    try:
        yield register
    finally:
        await blocking(register.close)
        await blocking(register.zk.close)


async def until(what: str, predicate: Callable[[], bool], timeout: float = 20) -> None:
    """A bounded poll of state another program (thread) owns."""

    async def check() -> bool:
        return predicate()

    await wait_until(what, check, timeout)


def exists(client: KazooClient, path: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await blocking(client.exists, path) is not None

    return check


async def children(client: KazooClient, path: str) -> list[str]:
    try:
        return sorted(await blocking(client.get_children, path))
    except NoNodeError:
        return []


async def wait_hosts(server: Server, interface: str, expected: set[str]) -> None:
    """Until the proxy's cluster for ``interface`` has exactly these hosts."""
    assert server.registry is not None

    def hosts() -> set[str]:
        cluster = server.clusters.get(interface)
        return {str(h.address) for h in cluster.hosts} if cluster is not None else set()

    with trio.fail_after(20):
        while hosts() != expected:
            await server.registry.wait_applied()


async def status(server: Server) -> dict[str, Any]:
    code, doc = await api(server, "/", method="GET")
    assert code == 200
    return doc


# --------------------------------------------------------------------------- publish


async def test_a_dubbo_consumer_finds_the_published_sidecar_and_loses_it_on_unpub(
    nursery: trio.Nursery, zookeeper: ZooKeeper
) -> None:
    from dubbo_ssl.client import DubboClient
    from dubbo_ssl.common.exceptions import RegisterException

    interface = "org.example.e2e.PublishService"
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    doc = body(zookeeper.address, interface=interface, group="g1", version="1.0.0")
    assert await api(server, "/pub", doc) == (200, {"err_no": 0, "err_msg": "publish success"})

    async with kazoo(zookeeper.address) as other:
        # One ephemeral node, in Dubbo's layout, pointing at the sidecar's ingress.
        (name,) = await children(other, providers_path(interface))
        url = parse_node(name)
        assert url is not None and f"{url.host}:{url.port}" == ingress_of(server)
        assert (url.params["group"], url.params["version"]) == ("g1", "1.0.0")
        assert url.params["side"] == "provider" and url.params["interface"] == interface
        stat = (await blocking(other.get, f"{providers_path(interface)}/{name}"))[1]
        assert stat.ephemeralOwner != 0

        async with zk_register(zookeeper.address) as register:
            client = DubboClient(interface, group="g1", version="1.0.0", zk_register=register)

            def three_calls() -> list[str]:
                return [str(client.call("sayHello", [f"z{i}"], timeout=10)) for i in range(3)]

            # Through trio-mesh: the consumer knows only the ingress, not the provider's port.
            assert await blocking(three_calls) == [f"hello z{i} from local" for i in range(3)]
            key = (interface, "1.0.0", "g1")
            assert register.hosts[key] == [ingress_of(server)]
            assert ingress_of(server) != f"127.0.0.1:{local}"
            # The consumer registered itself, as Dubbo consumers do.
            await wait_until("consumer node", lambda: _any_child(other, consumers_path(interface)))

            answer = await api(server, "/unpub", doc)
            assert answer == (200, {"err_no": 0, "err_msg": "unpub success"})
            assert await children(other, providers_path(interface)) == []
            # Its watch empties its cache.
            await until("the consumer sees no provider", lambda: register.hosts[key] == [])
            with pytest.raises(RegisterException, match="no providers"):
                await blocking(client.call, "sayHello", ["late"], timeout=10)


async def _any_child(client: KazooClient, path: str) -> bool:
    return bool(await children(client, path))


# --------------------------------------------------------------------------- subscribe


async def test_subscribed_calls_are_balanced_and_follow_a_provider_leaving(
    nursery: trio.Nursery, zookeeper: ZooKeeper
) -> None:
    interface = "org.example.e2e.SubscribeService"
    a = await provider(nursery, "a")
    b = await provider(nursery, "b")
    # Provider a behind another sidecar, which publishes it.
    publisher = await nursery.start(Server(sidecar_config(provider_port=a)).run)
    assert (await api(publisher, "/pub", body(zookeeper.address, interface=interface)))[0] == 200
    async with kazoo(zookeeper.address) as other:
        # Provider b registered as a Java provider would (its own ephemeral node).
        node_b = provider_node(b, interface=interface)
        await blocking(other.create, node_b, b"", ephemeral=True, makepath=True)

        server = await nursery.start(Server(sidecar_config()).run)
        answer = await api(server, "/sub", body(zookeeper.address, interface=interface))
        assert answer == (200, {"err_no": 0, "err_msg": "subscribe success"})
        await wait_hosts(server, interface, {ingress_of(publisher), f"127.0.0.1:{b}"})
        (consumer,) = await children(other, consumers_path(interface))
        assert consumer.startswith("consumer%3A%2F%2F127.0.0.1%2F" + interface)
        stat = (await blocking(other.get, f"{consumers_path(interface)}/{consumer}"))[1]
        assert stat.ephemeralOwner != 0

        egress = egress_of(server)
        answers = await call_many(egress, interface, 40)
        assert {said_by(x) for x in answers} == {"a", "b"}

        # b leaves while calls go on: none fails, and none goes to b once the swap is in.
        async with load(egress, interface) as running:
            await blocking(other.delete, node_b)
            await wait_hosts(server, interface, {ingress_of(publisher)})
            mark = len(running.answers) + len(running.errors)
            await running.more(20)
        assert running.errors == []
        # (one call may have been in flight to b when the swap came)
        assert {said_by(x) for x in running.answers[mark + 1 :]} == {"a"}
        assert {said_by(x) for x in await call_many(egress, interface, 10)} == {"a"}


# --------------------------------------------------------------------------- outages


@pytest.mark.parametrize("data", ["kept", "wiped"])
async def test_a_zookeeper_restart_under_load(
    nursery: trio.Nursery, zookeeper_factory: Callable[[], Awaitable[ZooKeeper]], data: str
) -> None:
    """Restarted with its data (the sessions survive) or wiped (a new, empty ensemble: the
    sessions are gone, the sidecars must write their nodes again, and the subscriber may
    see no provider for a while: it keeps its host)."""
    interface = "org.example.e2e.RestartService"
    zk = await zookeeper_factory()
    a = await provider(nursery, "a")
    registry = {"session_timeout": "4s", "registry_timeout": "2s"}
    publisher = await nursery.start(Server(sidecar_config(provider_port=a, registry=registry)).run)
    server = await nursery.start(Server(sidecar_config(registry=registry)).run)
    assert (await api(publisher, "/pub", body(zk.address, interface=interface)))[0] == 200
    assert (await api(server, "/sub", body(zk.address, interface=interface)))[0] == 200
    await wait_hosts(server, interface, {ingress_of(publisher)})

    async with load(egress_of(server), interface) as running:
        await zk.astop()
        for sidecar in (publisher, server):
            await until_status(sidecar, connected=False)
        await running.more(10)  # calls go on during the outage
        before_restart = len(running.answers)
        if data == "wiped":
            await blocking(shutil.rmtree, zk.dir / "data")
            (zk.dir / "data").mkdir()
        await zk.astart()
        for sidecar in (publisher, server):
            await until_status(sidecar, connected=True)
        async with kazoo(zk.address) as other:
            await wait_until(
                "consumer node back", lambda: _any_child(other, consumers_path(interface))
            )
            await wait_until(
                "provider node back", lambda: _any_child(other, providers_path(interface))
            )
            (name,) = await children(other, providers_path(interface))
            url = parse_node(name)
            assert url is not None and f"{url.host}:{url.port}" == ingress_of(publisher)
            stat = (await blocking(other.get, f"{providers_path(interface)}/{name}"))[1]
            assert stat.ephemeralOwner != 0
        await running.more(10)
    assert running.errors == []
    assert before_restart >= 10 and len(running.answers) > before_restart
    assert {said_by(x) for x in running.answers} == {"a"}
    # The cluster never lost its host.
    assert {str(h.address) for h in server.clusters.get(interface).hosts} == {ingress_of(publisher)}


async def until_status(server: Server, *, connected: bool, timeout: float = 30) -> None:
    """Until ``GET /`` shows the (one) session connected or not."""

    async def check() -> bool:
        sessions = (await status(server))["sessions"]
        assert len(sessions) == 1
        return bool(sessions[0]["connected"] == connected)

    await wait_until(f"session connected={connected}", check, timeout)


async def test_session_expiry_recreates_the_nodes_and_rearms_the_watch(
    nursery: trio.Nursery, zookeeper: ZooKeeper
) -> None:
    interface = "org.example.e2e.ExpiryService"
    local = await provider(nursery, "local")
    b = await provider(nursery, "b")
    c = await provider(nursery, "c")
    config = sidecar_config(provider_port=local, registry={"session_timeout": "4s"})
    server = await nursery.start(Server(config).run)
    doc = body(zookeeper.address, interface=interface)
    async with kazoo(zookeeper.address) as other:
        await blocking(
            other.create, provider_node(b, interface=interface), b"", ephemeral=True, makepath=True
        )
        assert (await api(server, "/sub", doc))[0] == 200
        assert (await api(server, "/pub", doc))[0] == 200
        ingress = ingress_of(server)
        await wait_hosts(server, interface, {f"127.0.0.1:{b}", ingress})

        assert server.registry is not None
        session = server.registry.sessions[("zookeeper", zookeeper.address, "", "")]
        client = session._client  # type: ignore[attr-defined]
        assert client is not None
        old_session, password = client.client_id

        def hijack() -> None:
            # Another client takes the session over and closes it: the session expires.
            thief = KazooClient(hosts=zookeeper.address, client_id=(old_session, password))
            thief.start(timeout=15)
            thief.stop()
            thief.close()

        await blocking(hijack)

        async def owned_anew(parent: str) -> bool:
            owners = []
            for name in await children(other, parent):
                try:
                    owners.append((await blocking(other.get, f"{parent}/{name}"))[1].ephemeralOwner)
                except NoNodeError:
                    return False
            return len(owners) >= 1 and all(o not in (0, old_session) for o in owners)

        await wait_until("consumer node re-created", lambda: owned_anew(consumers_path(interface)))

        async def provider_back() -> bool:
            for name in await children(other, providers_path(interface)):
                url = parse_node(name)
                if url is not None and f"{url.host}:{url.port}" == ingress:
                    stat = (await blocking(other.get, f"{providers_path(interface)}/{name}"))[1]
                    return bool(stat.ephemeralOwner not in (0, old_session))
            return False

        await wait_until("provider node re-created", provider_back)
        # The watch is armed again: a provider added now is picked up.
        await blocking(
            other.create, provider_node(c, interface=interface), b"", ephemeral=True, makepath=True
        )
        await wait_hosts(server, interface, {f"127.0.0.1:{b}", f"127.0.0.1:{c}", ingress})
        answers = await call_many(egress_of(server), interface, 40)
        assert {said_by(x) for x in answers} == {"local", "b", "c"}


async def test_zookeeper_unavailable_at_request_time(nursery: trio.Nursery) -> None:
    interface = "org.example.e2e.UnavailableService"
    local = await provider(nursery, "local")
    config = sidecar_config(provider_port=local, registry={"registry_timeout": "1s"})
    server = await nursery.start(Server(config).run)
    doc = body(f"127.0.0.1:{closed_port()}", interface=interface)
    for path in ("/pub", "/sub"):
        with trio.fail_after(5):
            code, answer = await api(server, path, doc)
        assert code == 503 and answer["err_no"] == 1, answer
        assert "timed out" in answer["err_msg"], answer
    # The proxy serves on meanwhile.
    assert await call_many(server.addresses["ingress"][1], interface, 2) == [
        "hello c0 from local",
        "hello c1 from local",
    ]
    # Nothing half-registered, no session left behind.
    assert server.registry is not None and server.registry.sessions == {}
    assert await status(server) == {"publications": [], "subscriptions": [], "sessions": []}
    assert interface not in server.clusters


async def test_digest_acl(nursery: trio.Nursery, zookeeper: ZooKeeper) -> None:
    interface = "org.example.e2e.AclService"
    local = await provider(nursery, "local")
    publisher = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    doc = body(zookeeper.address, interface=interface)
    doc["registry"].update(username="alice", password="secret")
    assert (await api(publisher, "/pub", doc))[0] == 200
    async with (
        kazoo(zookeeper.address) as anonymous,
        kazoo(zookeeper.address, "alice:secret") as alice,
    ):
        (name,) = await children(alice, providers_path(interface))
        node = f"{providers_path(interface)}/{name}"
        with pytest.raises(NoAuthError):
            await blocking(anonymous.get, node)
        assert (await blocking(alice.get, node))[1].ephemeralOwner != 0

    server = await nursery.start(Server(sidecar_config()).run)
    # Without the credentials: refused, and nothing left behind.
    code, answer = await api(server, "/sub", body(zookeeper.address, interface=interface))
    assert code == 503 and "authentication failed" in answer["err_msg"], answer
    assert server.registry is not None and server.registry.sessions == {}
    sub = body(zookeeper.address, interface=interface)
    sub["registry"].update(username="alice", password="secret")
    assert (await api(server, "/sub", sub))[0] == 200
    await wait_hosts(server, interface, {ingress_of(publisher)})
    assert await call_many(egress_of(server), interface, 1) == ["hello c0 from local"]


async def test_drain_unpublishes_before_the_listeners_drain(
    nursery: trio.Nursery, zookeeper: ZooKeeper
) -> None:
    interface = "org.example.e2e.DrainService"
    local = await provider(nursery, "local")
    server = await nursery.start(Server(sidecar_config(provider_port=local)).run)
    assert (await api(server, "/pub", body(zookeeper.address, interface=interface)))[0] == 200
    async with kazoo(zookeeper.address) as other:
        (name,) = await children(other, providers_path(interface))
        node = f"{providers_path(interface)}/{name}"
        gone = threading.Event()

        def watch(event: Any) -> None:
            gone.set()

        assert await blocking(other.exists, node, watch=watch) is not None
        ingress = server.listeners["ingress"]
        drain = ingress.drain
        asked: list[Any] = []

        def drain_and_look(**kwargs: bool) -> None:
            # When the listener begins to drain, the node must be gone already: a read sent
            # now (without blocking the event loop) is served after the delete was applied.
            asked.append(other.exists_async(node))
            drain(**kwargs)

        ingress.drain = drain_and_look  # type: ignore[method-assign]
        assert await server.drain(5)
        assert len(asked) == 1
        assert await blocking(asked[0].get, timeout=10) is None
        await until("the watch saw the node go", gone.is_set)
