"""ZkSession against a real ZooKeeper (tests/zookeeper_server.py), checked by an independent
kazoo client: ephemerals, watches, outages, restarts, session expiry, digest ACLs, and that
nothing of kazoo outlives the session."""

from __future__ import annotations

import functools
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
from trio_mesh.registry.backend import RegistryUnavailable
from trio_mesh.registry.zookeeper import ZkSession

pytestmark = needs_zookeeper

SESSION_TIMEOUT = 2.0  # seconds: short, so an expiry is quick to wait past


@asynccontextmanager
async def kazoo(address: str, auth: str | None = None) -> AsyncIterator[KazooClient]:
    """An independent client (blocking: use it through ``blocking``)."""
    client = KazooClient(
        hosts=address, timeout=10.0, auth_data=[("digest", auth)] if auth else None
    )
    await blocking(client.start, timeout=15)
    try:
        yield client
    finally:
        await blocking(client.stop)
        await blocking(client.close)


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking kazoo call off the event loop."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@asynccontextmanager
async def session(
    address: str, username: str = "", password: str = "", timeout: float = SESSION_TIMEOUT
) -> AsyncIterator[ZkSession]:
    zk = ZkSession(("zookeeper", address, username, password), session_timeout=timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(zk.run)
        try:
            yield zk
        finally:
            await zk.aclose()


async def wait_until(
    what: str, predicate: Callable[[], Awaitable[bool]], timeout: float = 20
) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)  # a poll interval
        return
    raise AssertionError(f"{what}: not within {timeout}s")


async def connected(zk: ZkSession) -> None:
    async def check() -> bool:
        return zk.connected

    await wait_until("connected", check)


class Changes:
    """A listener that queues what it is told (bounded) to be awaited in order."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[str, ...]](100)
        self.calls = 0

    def __call__(self, children: tuple[str, ...]) -> None:
        self.calls += 1
        self.send.send_nowait(children)

    async def until(self, expected: tuple[str, ...], timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while (got := await self.receive.receive()) != expected:
                pass
        assert got == expected


async def test_ephemeral_nodes_are_created_and_deleted(zookeeper: ZooKeeper) -> None:
    path = "/t-ephemeral/dubbo/com.example.Echo/providers/dubbo%3A%2F%2F10.0.0.1%3A20880"
    async with kazoo(zookeeper.address) as other:
        async with session(zookeeper.address) as zk:
            await zk.create_ephemeral(path, timeout=5)
            assert zk.connected
            stat = (await blocking(other.get, path))[1]
            owner = stat.ephemeralOwner
            assert owner != 0
            parent_stat = (await blocking(other.get, path.rsplit("/", 1)[0]))[1]
            assert parent_stat.ephemeralOwner == 0  # parents are persistent

            await zk.delete_ephemeral(path, timeout=5)
            assert await blocking(other.exists, path) is None
            await zk.delete_ephemeral(path, timeout=5)  # absent is fine

            # a node left by another (earlier) session is replaced by ours, as Dubbo does
            await blocking(other.create, path, b"", ephemeral=True)
            await zk.create_ephemeral(path, timeout=5)
            stat = (await blocking(other.get, path))[1]
            assert stat.ephemeralOwner == owner

            await zk.ensure_path("/t-ephemeral/persistent/a", timeout=5)
            assert await blocking(other.exists, "/t-ephemeral/persistent/a") is not None
        # closed: the session ended, its ephemerals with it
        assert not zk.connected
        assert await blocking(other.exists, path) is None
        with pytest.raises(RegistryUnavailable, match="session closed"):
            await zk.create_ephemeral(path, timeout=1)


async def test_watch_children_tells_adds_and_removes(zookeeper: ZooKeeper) -> None:
    providers = "/t-watch/dubbo/com.example.Echo/providers"
    changes = Changes()
    async with kazoo(zookeeper.address) as other:
        async with session(zookeeper.address) as zk:
            assert await zk.watch_children(providers, changes, timeout=5) == ()
            await blocking(other.create, f"{providers}/a", b"", ephemeral=True)
            await changes.until(("a",))
            await blocking(other.create, f"{providers}/b", b"")
            await changes.until(("a", "b"))
            await blocking(other.delete, f"{providers}/a")
            await changes.until(("b",))

            # a burst is coalesced: the listener ends on the full list, in few calls
            before = changes.calls
            for name in "cdefgh":
                await blocking(other.create, f"{providers}/{name}", b"")
            await changes.until(("b", "c", "d", "e", "f", "g", "h"))
            assert changes.calls - before <= 6

            # the watched path deleted by someone: created again and still watched
            await blocking(other.delete, providers, recursive=True)
            await changes.until(())
            await wait_until("the path back", lambda: blocking(_exists, other, providers))
            await blocking(other.create, f"{providers}/z", b"")
            await changes.until(("z",))

            # unwatched: no more calls
            zk.unwatch(providers)
            calls = changes.calls
            await blocking(other.create, f"{providers}/y", b"")
            assert await zk.watch_children("/t-watch/other", Changes(), timeout=5) == ()
            await trio.sleep(0.3)  # a window for a wrong call to show up
            assert changes.calls == calls


async def test_a_create_that_timed_out_leaves_no_node(zookeeper: ZooKeeper) -> None:
    """A create cancelled by its timeout may still reach ZooKeeper: the API said it failed,
    so the node must not stay."""
    parent = "/t-orphan/dubbo/com.example.Echo/providers"
    async with kazoo(zookeeper.address) as other, session(zookeeper.address) as zk:
        await zk.ensure_path(parent, timeout=5)
        failed = []
        for i in range(30):
            try:
                await zk.create_ephemeral(f"{parent}/n{i}", timeout=0.0005 * (i % 6))
            except RegistryUnavailable as exc:
                assert "timed out" in str(exc)
                failed.append(f"n{i}")
        assert failed  # a zero timeout at least fails

        async def cleaned() -> bool:
            children = await blocking(other.get_children, parent)
            return not set(failed) & set(children)

        await wait_until("the failed creates' nodes deleted", cleaned)
        await zk.create_ephemeral(f"{parent}/{failed[0]}", timeout=5)  # a retry stays
        await trio.sleep(0.3)  # a window for a wrong cleanup to show up
        assert await blocking(other.exists, f"{parent}/{failed[0]}") is not None


async def test_unavailable_zookeeper_fails_each_call_in_time() -> None:
    address = f"127.0.0.1:{closed_port()}"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with session(address) as zk:
            assert not zk.connected
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: zk.create_ephemeral("/t/a", timeout=0.5),
                lambda: zk.delete_ephemeral("/t/a", timeout=0.5),
                lambda: zk.ensure_path("/t", timeout=0.5),
                lambda: zk.watch_children("/t", Changes(), timeout=0.5),
            ]
            for call in calls:
                start, ticks_before = trio.current_time(), ticks
                with pytest.raises(RegistryUnavailable) as caught:
                    await call()
                elapsed = trio.current_time() - start
                assert 0.45 <= elapsed < 1.5, elapsed
                assert address in str(caught.value)
                assert "timed out after 0.5s waiting for a connection" in str(caught.value)
                assert ticks - ticks_before >= 10  # the event loop kept running
            assert not zk.connected
        nursery.cancel_scope.cancel()


async def test_restart_keeps_ephemerals_and_watches(
    zookeeper_factory: Callable[[], Awaitable[ZooKeeper]],
) -> None:
    server = await zookeeper_factory()
    node = "/t-restart/dubbo/com.example.Echo/providers/me"
    providers = "/t-restart/dubbo/com.example.Other/providers"
    changes = Changes()
    async with session(server.address) as zk:
        await zk.create_ephemeral(node, timeout=5)
        await zk.watch_children(providers, changes, timeout=5)

        await server.astop()
        await wait_until("disconnected", lambda: _false(zk.connected))
        calls = changes.calls
        with pytest.raises(RegistryUnavailable, match="timed out"):
            await zk.create_ephemeral(node + "2", timeout=0.3)
        assert changes.calls == calls  # never told anything during the outage

        await server.astart()
        await connected(zk)
        await changes.until(())  # re-read once back: changes may have been missed
        async with kazoo(server.address) as other:
            await wait_until("node back", lambda: blocking(_exists, other, node))
            await blocking(other.create, f"{providers}/p1", b"")
            await changes.until(("p1",))


async def test_a_zookeeper_restarted_empty_gets_a_new_session(
    zookeeper_factory: Callable[[], Awaitable[ZooKeeper]],
) -> None:
    """A ZooKeeper that lost its data refuses for good to resume a session that has seen
    later zxids than it has: past the session timeout the session is given up for a new one,
    which restores the ephemerals and the watches."""
    server = await zookeeper_factory()
    node = "/t-wiped/dubbo/com.example.Echo/providers/me"
    providers = "/t-wiped/dubbo/com.example.Other/providers"
    changes = Changes()
    async with session(server.address) as zk:
        await zk.create_ephemeral(node, timeout=5)
        await zk.watch_children(providers, changes, timeout=5)
        await server.astop()
        await wait_until("disconnected", lambda: _false(zk.connected))
        await blocking(shutil.rmtree, server.dir / "data")
        (server.dir / "data").mkdir()
        await server.astart()
        await connected(zk)
        await changes.until(())
        async with kazoo(server.address) as other:
            await wait_until("node back", lambda: blocking(_exists, other, node))
            await blocking(other.create, f"{providers}/p1", b"")
            await changes.until(("p1",))


async def _false(value: bool) -> bool:
    return not value


def _exists(client: KazooClient, path: str) -> bool:
    return client.exists(path) is not None


async def test_session_expiry_recreates_ephemerals_and_rearms_watches(
    zookeeper: ZooKeeper,
) -> None:
    node = "/t-expiry/dubbo/com.example.Echo/providers/me"
    providers = "/t-expiry/dubbo/com.example.Other/providers"
    changes = Changes()
    async with kazoo(zookeeper.address) as other:
        async with session(zookeeper.address) as zk:
            await zk.create_ephemeral(node, timeout=5)
            await zk.watch_children(providers, changes, timeout=5)
            assert zk._client is not None
            old_session, password = zk._client.client_id
            assert (await blocking(other.get, node))[1].ephemeralOwner == old_session

            # a second client takes over our session and closes it: the session is gone
            def hijack() -> None:
                thief = KazooClient(hosts=zookeeper.address, client_id=(old_session, password))
                thief.start(timeout=15)
                thief.stop()
                thief.close()

            await blocking(hijack)

            async def recreated() -> bool:
                try:
                    stat = (await blocking(other.get, node))[1]
                except NoNodeError:
                    return False
                return bool(stat.ephemeralOwner not in (0, old_session))

            await wait_until("the node created again by a new session", recreated)
            assert zk.connected
            assert zk._client.client_id[0] != old_session
            await blocking(other.create, f"{providers}/p1", b"")
            await changes.until(("p1",))


async def test_digest_acl(zookeeper: ZooKeeper) -> None:
    node = "/t-acl/dubbo/com.example.Echo/providers/me"
    async with session(zookeeper.address, "alice", "secret") as zk:
        await zk.create_ephemeral(node, timeout=5)
        async with kazoo(zookeeper.address) as anonymous:
            with pytest.raises(NoAuthError):
                await blocking(anonymous.get, node)
            with pytest.raises(NoAuthError):
                await blocking(anonymous.get_children, "/t-acl/dubbo/com.example.Echo/providers")
        async with kazoo(zookeeper.address, "alice:secret") as alice:
            assert (await blocking(alice.get, node))[0] == b""

        async with session(zookeeper.address, "alice", "wrong") as intruder:
            for call in (
                lambda: intruder.delete_ephemeral(node, timeout=5),
                lambda: intruder.create_ephemeral(node + "2", timeout=5),
                lambda: intruder.watch_children(
                    "/t-acl/dubbo/com.example.Echo/providers", Changes(), timeout=5
                ),
            ):
                start = trio.current_time()
                with pytest.raises(RegistryUnavailable, match="authentication failed"):
                    await call()
                assert trio.current_time() - start < 5
        async with kazoo(zookeeper.address, "alice:secret") as alice:
            assert await blocking(alice.exists, node) is not None


def kazoo_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive, except Trio's idle workers."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]


async def test_cancellation_closes_the_client(zookeeper: ZooKeeper) -> None:
    before = set(threading.enumerate())
    node = "/t-cancel/me"
    zk = ZkSession(("zookeeper", zookeeper.address, "", ""), session_timeout=SESSION_TIMEOUT)
    async with trio.open_nursery() as nursery:
        await nursery.start(zk.run)
        await zk.create_ephemeral(node, timeout=5)
        assert kazoo_threads(before)  # kazoo's threads, while it runs
        nursery.cancel_scope.cancel()
    assert not zk.connected
    assert kazoo_threads(before) == []
    async with kazoo(zookeeper.address) as other:
        assert await blocking(other.exists, node) is None  # the session was closed


async def test_cancellation_before_connecting_closes_the_client() -> None:
    before = set(threading.enumerate())
    zk = ZkSession(("zookeeper", f"127.0.0.1:{closed_port()}", "", ""), session_timeout=2.0)
    with trio.move_on_after(0.5):
        await zk.run()
    assert kazoo_threads(before) == []


async def test_credentials_refused_by_the_server_fail_calls_at_once(
    zookeeper: ZooKeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZooKeeper accepts any digest (a wrong password shows as NoAuth on the nodes), so the
    session-ending AUTH_FAILED is provoked with an auth scheme the server does not know."""
    import kazoo.client

    class UnknownScheme(kazoo.client.KazooClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["auth_data"] = [("no-such-scheme", "alice:secret")]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kazoo.client, "KazooClient", UnknownScheme)
    async with session(zookeeper.address, "alice", "secret") as zk:
        for _ in range(2):  # the first waits for the refusal, the next fail at once
            start = trio.current_time()
            with pytest.raises(RegistryUnavailable, match="authentication failed"):
                await zk.create_ephemeral("/t-authfailed/me", timeout=5)
            assert trio.current_time() - start < 3
        assert not zk.connected
