"""What the registry service asks of a registry session, whatever the registry is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

#: One session per registry and credentials: ``(type, addr, username, password)``.
SessionKey = tuple[str, str, str, str]

#: Called on the Trio thread with the full new list of a watched path's children.
ChildrenListener = Callable[[tuple[str, ...]], None]


class RegistryUnavailable(Exception):
    """The registry did not answer in time, or refused the credentials or the operation;
    ``str()`` says which (it becomes the API's ``err_msg``)."""


class Session(Protocol):
    """One session to one registry, shared by the publications and subscriptions that name
    it. Every call is bounded by its ``timeout`` and never blocks the event loop."""

    key: SessionKey

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection until ``aclose`` (or cancellation); in the registry's nursery."""
        ...

    @property
    def connected(self) -> bool: ...

    async def create_ephemeral(self, path: str, *, timeout: float) -> None:
        """Create an ephemeral node (parents persistent, with the session's ACL). A node left
        there (by an earlier session of ours) is deleted and created again, as Dubbo does. It
        is remembered and created again after the session expires."""
        ...

    async def delete_ephemeral(self, path: str, *, timeout: float) -> None:
        """Delete the node (absent is fine) and forget it."""
        ...

    async def ensure_path(self, path: str, *, timeout: float) -> None:
        """Create a persistent path (and its parents) unless it exists."""
        ...

    async def watch_children(
        self, path: str, on_change: ChildrenListener, *, timeout: float
    ) -> tuple[str, ...]:
        """Ensure ``path``, read its children and watch them: ``on_change`` gets every new
        list (on the Trio thread), also after the session comes back; never during an outage,
        so what it last said holds until the registry answers again."""
        ...

    def unwatch(self, path: str) -> None:
        """Stop calling the listener of ``path``."""
        ...

    async def aclose(self) -> None:
        """End the session: its ephemeral nodes vanish."""
        ...
