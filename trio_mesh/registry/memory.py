"""An in-process registry (``registry.type: memory``) for embedded use and users' tests.

Each ``addr`` names one process-wide namespace (``MemoryRegistry.get``): a tree of nodes laid
out as in ZooKeeper, persistent parents and ephemeral leaves owned by the session that made
them. Watch listeners are called from their own session's ``run`` task, never inside another
session's call, so a listener sees the tree as it was after the change that woke it (several
changes before it runs are delivered once, with the latest list, as ZooKeeper's one-shot
watches do). Credentials are not checked: there is no ACL.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import trio

from .backend import ChildrenListener, RegistryUnavailable, SessionKey

log = logging.getLogger("trio_mesh.registry")

#: Nodes one namespace holds at most; a bound on what API calls can make this process keep.
MAX_NODES = 100_000
#: Namespaces (distinct ``addr``) at most: they outlive their sessions (as a registry
#: outlives its clients), so without a bound an API client naming a new addr on every call
#: would grow the process without end.
MAX_NAMESPACES = 64


def _parents(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``; raise ``RegistryUnavailable`` for a bad path."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path == "/"
        or "\0" in path
        or any(part in ("", ".", "..") for part in path[1:].split("/"))
    ):
        raise RegistryUnavailable(f"memory registry: invalid node path {path!r}")
    parts = path[1:].split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class MemoryRegistry:
    """One namespace: its nodes, who owns the ephemeral ones, who watches what."""

    _namespaces: ClassVar[dict[str, MemoryRegistry]] = {}

    def __init__(self, *, max_nodes: int = MAX_NODES) -> None:
        self.max_nodes = max_nodes
        #: path -> owning session (ephemeral) or None (persistent); "/" is implicit.
        self._nodes: dict[str, MemorySession | None] = {}
        self._kids: dict[str, set[str]] = {"/": set()}
        self._watchers: dict[str, set[MemorySession]] = {}

    @classmethod
    def get(cls, addr: str) -> MemoryRegistry:
        """The namespace of ``addr`` (made on first use)."""
        ns = cls._namespaces.get(addr)
        if ns is None:
            if len(cls._namespaces) >= MAX_NAMESPACES:
                raise RegistryUnavailable(
                    f"memory registry: {MAX_NAMESPACES} addrs in use already, the most"
                )
            ns = cls._namespaces[addr] = MemoryRegistry()
        return ns

    @classmethod
    def reset(cls) -> None:
        """Forget every namespace (between tests); sessions still open keep their old one."""
        cls._namespaces.clear()

    # -- inspection (tests, embedded use)

    def exists(self, path: str) -> bool:
        return path == "/" or path in self._nodes

    def children(self, path: str) -> tuple[str, ...]:
        """The names under ``path``, sorted; ``()`` when it does not exist."""
        return tuple(sorted(self._kids.get(path, ())))

    def is_ephemeral(self, path: str) -> bool:
        return self._nodes.get(path) is not None

    def __len__(self) -> int:
        return len(self._nodes)

    # -- outage simulation

    def expire(self, session: MemorySession) -> None:
        """Expire ``session`` as ZooKeeper would: its ephemeral nodes vanish now (watchers
        are told); its ``run`` task then creates them again and gives each of its watchers
        the list as it is, as a ZooKeeper client does when its new session starts."""
        if session.closed or session.namespace is not self:
            return
        for path in sorted(session.ephemerals):
            if self._nodes.get(path) is session:
                self._remove(path)
        session._expire()

    # -- operations (MemorySession's)

    def _ensure(self, path: str) -> None:
        parents = _parents(path)
        self._make_parents([*parents, path])

    def _make_parents(self, paths: list[str]) -> None:
        for p in paths:
            if self._nodes.get(p) is not None:
                raise RegistryUnavailable(
                    f"memory registry: {p} is an ephemeral node, which cannot have children"
                )
        missing = [p for p in paths if p not in self._nodes]
        self._reserve(len(missing))
        for p in missing:
            self._add(p, None)

    def _create_ephemeral(self, path: str, owner: MemorySession) -> None:
        parents = _parents(path)
        for p in parents:
            if self._nodes.get(p) is not None:
                raise RegistryUnavailable(
                    f"memory registry: {p} is an ephemeral node, which cannot have children"
                )
        if self._kids.get(path):
            raise RegistryUnavailable(f"memory registry: {path} has children: not replaced")
        missing = [p for p in parents if p not in self._nodes]
        self._reserve(len(missing) + (path not in self._nodes))
        for p in missing:
            self._add(p, None)
        if path in self._nodes:
            # A node left by another session (ours before a restart): Dubbo deletes it and
            # creates its own, so that it vanishes with this session.
            self._nodes[path] = owner
            self._changed(_parent(path))
        else:
            self._add(path, owner)

    def _delete(self, path: str) -> None:
        _parents(path)
        if path not in self._nodes:
            return
        if self._kids.get(path):
            raise RegistryUnavailable(f"memory registry: {path} has children: not deleted")
        self._remove(path)

    def _reserve(self, n: int) -> None:
        if n and len(self._nodes) + n > self.max_nodes:
            raise RegistryUnavailable("memory registry full")

    def _add(self, path: str, owner: MemorySession | None) -> None:
        self._nodes[path] = owner
        self._kids[path] = set()
        parent = _parent(path)
        self._kids[parent].add(path[len(parent.rstrip("/")) + 1 :])
        self._changed(parent)

    def _remove(self, path: str) -> None:
        del self._nodes[path]
        del self._kids[path]
        parent = _parent(path)
        self._kids[parent].discard(path[len(parent.rstrip("/")) + 1 :])
        self._changed(parent)

    def _changed(self, path: str) -> None:
        for session in self._watchers.get(path, ()):
            session._notify(path)

    def _watch(self, path: str, session: MemorySession) -> None:
        self._watchers.setdefault(path, set()).add(session)

    def _unwatch(self, path: str, session: MemorySession) -> None:
        watchers = self._watchers.get(path)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self._watchers[path]


class MemorySession:
    """A ``registry.backend.Session`` on a ``MemoryRegistry`` namespace (``key[1]``: its
    addr). Calls answer at once; watch listeners run in ``run``, which must be started for
    them to be called."""

    def __init__(self, key: SessionKey, *, namespace: MemoryRegistry | None = None) -> None:
        self.key = key
        self.namespace = MemoryRegistry.get(key[1]) if namespace is None else namespace
        #: Ephemeral nodes this session keeps (created again after an expiry).
        self.ephemerals: set[str] = set()
        self._watches: dict[str, ChildrenListener] = {}
        # Watched paths with news for their listener: a set, so bounded by the watches.
        self._pending: dict[str, None] = {}
        self._expired = False
        self._running = False
        self.closed = False
        self._wake = trio.Event()
        self._drained = trio.Event()

    @property
    def connected(self) -> bool:
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("this session runs already")
        self._running = True
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.closed:
                return
            self._process()
            drained, self._drained = self._drained, trio.Event()
            drained.set()

    async def settled(self) -> None:
        """Wait until ``run`` has delivered every change so far (and recreated the nodes of
        an expiry): tests wait on this instead of sleeping. Needs ``run`` to be running."""
        while (self._pending or self._expired) and not self.closed:
            await self._drained.wait()

    async def create_ephemeral(self, path: str, *, timeout: float) -> None:
        await self._enter()
        self.namespace._create_ephemeral(path, self)
        self.ephemerals.add(path)

    async def delete_ephemeral(self, path: str, *, timeout: float) -> None:
        await self._enter()
        self.namespace._delete(path)
        self.ephemerals.discard(path)

    async def ensure_path(self, path: str, *, timeout: float) -> None:
        await self._enter()
        self.namespace._ensure(path)

    async def watch_children(
        self, path: str, on_change: ChildrenListener, *, timeout: float
    ) -> tuple[str, ...]:
        await self._enter()
        self.namespace._ensure(path)
        self._watches[path] = on_change
        self.namespace._watch(path, self)
        return self.namespace.children(path)

    def unwatch(self, path: str) -> None:
        self._watches.pop(path, None)
        self._pending.pop(path, None)
        self.namespace._unwatch(path, self)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for path in list(self._watches):
            self.unwatch(path)
        ns = self.namespace
        for path in sorted(self.ephemerals):
            if ns._nodes.get(path) is self:
                ns._remove(path)
        self.ephemerals.clear()
        self._expired = False
        self._wake.set()
        self._drained.set()
        await trio.lowlevel.checkpoint()

    # -- internals

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise RegistryUnavailable("memory registry: the session is closed")

    def _notify(self, path: str) -> None:
        if path in self._watches:
            self._pending[path] = None
            self._wake.set()

    def _expire(self) -> None:
        self._expired = True
        self._wake.set()

    def _process(self) -> None:
        if self._expired:
            self._expired = False
            for path in sorted(self.ephemerals):
                try:
                    if self.namespace._nodes.get(path) is not self:
                        self.namespace._create_ephemeral(path, self)
                except RegistryUnavailable as exc:
                    log.warning("memory registry: %s not created again: %s", path, exc)
            # Re-read every watch, as a client does when its new session starts.
            self._pending.update(dict.fromkeys(self._watches))
        while self._pending:
            path = next(iter(self._pending))
            del self._pending[path]
            listener = self._watches.get(path)
            if listener is None:
                continue
            try:
                listener(self.namespace.children(path))
            except Exception:  # one listener's bug must not end the session's deliveries
                log.exception("memory registry: the listener of %s failed", path)
