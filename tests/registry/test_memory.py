"""The in-memory registry session: Dubbo's node layout, ephemeral ownership, watches
delivered on the session's own task, expiry, bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from trio_mesh.registry.backend import RegistryUnavailable, Session
from trio_mesh.registry.memory import MemoryRegistry, MemorySession

T = 1.0
PROVIDERS = "/dubbo/com.example.Greeter/providers"


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    MemoryRegistry.reset()
    yield
    MemoryRegistry.reset()


def key(addr: str = "mem-1") -> tuple[str, str, str, str]:
    return ("memory", addr, "", "")


@asynccontextmanager
async def running(*sessions: MemorySession) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for s in sessions:
            await nursery.start(s.run)
        yield
        for s in sessions:
            await s.aclose()


class Recorder:
    """A listener that remembers every list and which task it ran in."""

    def __init__(self) -> None:
        self.lists: list[tuple[str, ...]] = []
        self.tasks: list[trio.lowlevel.Task] = []

    def __call__(self, children: tuple[str, ...]) -> None:
        self.lists.append(children)
        self.tasks.append(trio.lowlevel.current_task())


def test_memory_session_is_a_session() -> None:
    session: Session = MemorySession(key())
    assert session.connected is True
    assert session.key == key()


async def test_ephemeral_node_with_persistent_parents_vanishes_on_aclose() -> None:
    a = MemorySession(key())
    ns = a.namespace
    async with running(a):
        await a.create_ephemeral(f"{PROVIDERS}/dubbo%3A%2F%2Fh", timeout=T)
        assert ns.children(PROVIDERS) == ("dubbo%3A%2F%2Fh",)
        assert ns.is_ephemeral(f"{PROVIDERS}/dubbo%3A%2F%2Fh")
        assert ns.exists("/dubbo/com.example.Greeter") and not ns.is_ephemeral("/dubbo")
    assert ns.children(PROVIDERS) == ()
    assert ns.exists(PROVIDERS)  # parents are persistent
    with pytest.raises(RegistryUnavailable, match="closed"):
        await a.create_ephemeral(f"{PROVIDERS}/x", timeout=T)


async def test_namespaces_are_per_addr_and_shared_by_sessions_of_one_addr() -> None:
    a, b, other = MemorySession(key()), MemorySession(key()), MemorySession(key("mem-2"))
    assert a.namespace is b.namespace is MemoryRegistry.get("mem-1")
    assert other.namespace is not a.namespace
    async with running(a, b, other):
        await a.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        assert b.namespace.children(PROVIDERS) == ("p1",)
        assert not other.namespace.exists(PROVIDERS)


async def test_watch_gets_every_new_list_on_its_own_sessions_task() -> None:
    watcher, publisher = MemorySession(key()), MemorySession(key())
    seen = Recorder()
    async with running(watcher, publisher):
        assert await watcher.watch_children(PROVIDERS, seen, timeout=T) == ()
        await publisher.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        await watcher.settled()
        await publisher.create_ephemeral(f"{PROVIDERS}/p2", timeout=T)
        await watcher.settled()
        await publisher.delete_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        await watcher.settled()
        assert seen.lists == [("p1",), ("p1", "p2"), ("p2",)]
        # never inside the publisher's call: in the watcher's run task
        assert all(t is not trio.lowlevel.current_task() for t in seen.tasks)
        assert len(set(map(id, seen.tasks))) == 1
        await publisher.aclose()  # its ephemeral goes, the watcher is told
        await watcher.settled()
        assert seen.lists[-1] == ()


async def test_changes_before_the_listener_runs_are_delivered_once_with_the_latest_list() -> None:
    watcher, publisher = MemorySession(key()), MemorySession(key())
    seen = Recorder()
    async with running(watcher, publisher):
        await watcher.watch_children(PROVIDERS, seen, timeout=T)
        for i in range(5):
            await publisher.create_ephemeral(f"{PROVIDERS}/p{i}", timeout=T)
        await watcher.settled()
        assert seen.lists[-1] == tuple(f"p{i}" for i in range(5))
        assert len(seen.lists) <= 5


async def test_unwatch_stops_the_listener() -> None:
    watcher, publisher = MemorySession(key()), MemorySession(key())
    seen = Recorder()
    async with running(watcher, publisher):
        await watcher.watch_children(PROVIDERS, seen, timeout=T)
        await publisher.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        watcher.unwatch(PROVIDERS)  # before its run task delivered the change
        await publisher.create_ephemeral(f"{PROVIDERS}/p2", timeout=T)
        await watcher.settled()
        assert seen.lists == []


async def test_a_failing_listener_does_not_stop_other_deliveries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher, publisher = MemorySession(key()), MemorySession(key())
    seen = Recorder()

    def broken(children: tuple[str, ...]) -> None:
        raise RuntimeError("listener bug")

    async with running(watcher, publisher):
        await watcher.watch_children("/dubbo/a/providers", broken, timeout=T)
        await watcher.watch_children("/dubbo/b/providers", seen, timeout=T)
        await publisher.create_ephemeral("/dubbo/a/providers/x", timeout=T)
        await publisher.create_ephemeral("/dubbo/b/providers/y", timeout=T)
        await watcher.settled()
        assert seen.lists == [("y",)]
    assert "the listener of /dubbo/a/providers failed" in caplog.text


async def test_a_node_left_by_another_session_is_taken_over() -> None:
    old, new = MemorySession(key()), MemorySession(key())
    ns = old.namespace
    path = f"{PROVIDERS}/p1"
    async with running(old, new):
        await old.create_ephemeral(path, timeout=T)
        await new.create_ephemeral(path, timeout=T)
        await old.aclose()  # the node is the new session's now: it stays
        assert ns.children(PROVIDERS) == ("p1",)
        await new.aclose()
        assert ns.children(PROVIDERS) == ()


async def test_delete_of_an_absent_node_is_fine_and_forgets_it() -> None:
    a = MemorySession(key())
    async with running(a):
        await a.delete_ephemeral(f"{PROVIDERS}/nothing", timeout=T)
        await a.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        await a.delete_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        assert a.ephemerals == set()
        a.namespace.expire(a)
        await a.settled()
        assert a.namespace.children(PROVIDERS) == ()  # forgotten: not created again


async def test_expiry_removes_the_ephemerals_then_creates_them_again_and_rereads_watches() -> None:
    a, observer = MemorySession(key()), MemorySession(key())
    ns = a.namespace
    own, others = Recorder(), Recorder()
    async with running(a, observer):
        await a.watch_children(PROVIDERS, own, timeout=T)
        await observer.watch_children(PROVIDERS, others, timeout=T)
        await a.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        await a.settled()
        await observer.settled()
        own.lists.clear()
        others.lists.clear()
        ns.expire(a)
        assert ns.children(PROVIDERS) == ()  # gone at once
        await a.settled()
        assert ns.children(PROVIDERS) == ("p1",)
        assert ns.is_ephemeral(f"{PROVIDERS}/p1")
        await observer.settled()
        # the others saw it go and come back; the expired session's own listener was not
        # told during the outage, only re-read after it
        assert others.lists[-1] == ("p1",)
        assert own.lists == [("p1",)]
    assert ns.children(PROVIDERS) == ()


async def test_an_ephemeral_node_has_no_children() -> None:
    a = MemorySession(key())
    async with running(a):
        await a.create_ephemeral("/dubbo/x", timeout=T)
        with pytest.raises(RegistryUnavailable, match="/dubbo/x is an ephemeral node"):
            await a.create_ephemeral("/dubbo/x/y", timeout=T)
        with pytest.raises(RegistryUnavailable, match="ephemeral"):
            await a.ensure_path("/dubbo/x/y", timeout=T)


async def test_a_node_with_children_is_neither_deleted_nor_replaced() -> None:
    a = MemorySession(key())
    async with running(a):
        await a.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)
        with pytest.raises(RegistryUnavailable, match="has children"):
            await a.delete_ephemeral(PROVIDERS, timeout=T)
        with pytest.raises(RegistryUnavailable, match="has children"):
            await a.create_ephemeral(PROVIDERS, timeout=T)
        assert a.namespace.children(PROVIDERS) == ("p1",)


@pytest.mark.parametrize("path", ["", "dubbo", "/", "/dubbo/", "//x", "/a/../b", "/a/./b", "/a\0b"])
async def test_bad_paths_are_refused(path: str) -> None:
    a = MemorySession(key())
    ops: list[Callable[[], Awaitable[None]]] = [
        lambda: a.create_ephemeral(path, timeout=T),
        lambda: a.ensure_path(path, timeout=T),
        lambda: a.delete_ephemeral(path, timeout=T),
    ]
    for op in ops:
        with pytest.raises(RegistryUnavailable, match="invalid node path"):
            await op()
    assert len(a.namespace) == 0


async def test_a_full_namespace_refuses_new_nodes_and_changes_nothing() -> None:
    ns = MemoryRegistry(max_nodes=5)
    a = MemorySession(key(), namespace=ns)
    async with running(a):
        await a.create_ephemeral(f"{PROVIDERS}/p1", timeout=T)  # 4 nodes
        with pytest.raises(RegistryUnavailable, match="memory registry full"):
            await a.create_ephemeral("/dubbo/other/providers/p", timeout=T)  # 3 more
        assert not ns.exists("/dubbo/other")
        await a.create_ephemeral(f"{PROVIDERS}/p2", timeout=T)  # the 5th fits
        with pytest.raises(RegistryUnavailable, match="memory registry full"):
            await a.create_ephemeral(f"{PROVIDERS}/p3", timeout=T)
        await a.create_ephemeral(f"{PROVIDERS}/p2", timeout=T)  # replacing needs no room
        assert ns.children(PROVIDERS) == ("p1", "p2")


async def test_many_sessions_publishing_and_closing_leave_nothing_behind() -> None:
    ns = MemoryRegistry.get("mem-1")
    watcher = MemorySession(key())
    seen = Recorder()
    sessions = [MemorySession(key()) for _ in range(20)]
    async with running(watcher, *sessions):
        await watcher.watch_children(PROVIDERS, seen, timeout=T)
        async with trio.open_nursery() as nursery:
            for i, s in enumerate(sessions):
                nursery.start_soon(partial(s.create_ephemeral, f"{PROVIDERS}/p{i:02}", timeout=T))
        await watcher.settled()
        assert seen.lists[-1] == tuple(f"p{i:02}" for i in range(20))
        for s in sessions:
            await s.aclose()
        await watcher.settled()
        assert seen.lists[-1] == ()
    assert len(ns) == 3  # /dubbo, the interface, providers: persistent


async def test_run_returns_when_closed_and_runs_once() -> None:
    a = MemorySession(key())
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        with pytest.raises(RuntimeError, match="runs already"):
            await a.run()
        with trio.fail_after(5):
            await a.aclose()
    await a.aclose()  # twice is fine
