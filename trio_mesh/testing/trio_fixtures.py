"""``start_trio_mesh`` where pytest-trio runs (registered by ``plugin.pytest_configure``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from .handle import MeshHandle


@pytest.fixture
async def start_trio_mesh() -> AsyncIterator[Callable[..., Awaitable[MeshHandle]]]:
    """A factory: ``await start_trio_mesh(config, **options)`` starts a proxy in this
    fixture's nursery (``trio_mesh.testing.start_mesh``); all of them stop when the test
    ends. A proxy failing while it runs fails the test (pytest-trio cancels it)."""
    from .handle import start_mesh

    async with trio.open_nursery() as nursery:

        async def start(config: Any, **options: Any) -> MeshHandle:
            return await start_mesh(nursery, config, **options)

        yield start
        nursery.cancel_scope.cancel()
