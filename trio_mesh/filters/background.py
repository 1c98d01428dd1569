"""Work no request waits for (a mirror's shadow request), owned by the server's nursery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("trio_mesh.filters")


class Background:
    """A bounded set of fire-and-forget tasks. ``spawn`` never blocks: past ``limit`` tasks
    at once, or before ``run`` started, it refuses (returns False) and the work is dropped,
    so a slow target can never hold up the requests that feed it."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.running = 0
        self.dropped = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> bool:
        if self._nursery is None or self.running >= self.limit:
            self.dropped += 1
            return False
        self.running += 1
        self._nursery.start_soon(self._guard, fn, args, name)
        return True

    async def _guard(self, fn: Callable[..., Awaitable[Any]], args: tuple, name: str) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("background task %s failed", name or fn)
        finally:
            self.running -= 1
