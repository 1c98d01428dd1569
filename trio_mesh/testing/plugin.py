"""The pytest plugin (entry point ``pytest11: trio_mesh``): fixtures that start a proxy.

- ``start_trio_mesh``: async, for Trio tests (needs pytest-trio): ``mesh = await
  start_trio_mesh(config)`` -> ``MeshHandle``, stopped when the test ends.
- ``trio_mesh_in_thread``: for tests that are not Trio code: ``mesh =
  trio_mesh_in_thread(config)`` -> ``ThreadedMesh``, stopped (thread joined, sockets closed)
  when the test ends.

This module loads in every pytest run of every project with trio-mesh installed, so it
imports only pytest; the proxy is imported when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .thread import ThreadedMesh

#: pytest-trio's plugin name (its pytest11 entry point; ``-p no:trio`` disables it).
_PYTEST_TRIO = ("trio", "pytest_trio", "pytest_trio.plugin")


def pytest_configure(config: pytest.Config) -> None:
    # The async fixture is an async generator that only pytest-trio can run; without it
    # the same name gives a fixture that says so (instead of pytest's warning about an
    # unawaited coroutine).
    if any(config.pluginmanager.hasplugin(name) for name in _PYTEST_TRIO):
        from . import trio_fixtures as fixtures
    else:
        from . import no_trio_fixtures as fixtures  # type: ignore[no-redef]
    config.pluginmanager.register(fixtures, "trio_mesh.testing.fixtures")


@pytest.fixture
def trio_mesh_in_thread() -> Iterator[Callable[..., ThreadedMesh]]:
    """A factory: ``trio_mesh_in_thread(config, **options)`` starts a proxy in a thread
    of its own (``trio_mesh.testing.mesh_in_thread``); each one started is stopped at
    teardown, and an error it raised while running fails the test there."""
    from .thread import mesh_in_thread

    started: list[ThreadedMesh] = []

    def start(config: Any, **options: Any) -> ThreadedMesh:
        mesh = mesh_in_thread(config, **options)
        started.append(mesh)
        return mesh

    yield start
    errors: list[BaseException] = []
    for mesh in reversed(started):
        try:
            mesh.stop()
        except BaseException as exc:  # stop every one before failing
            errors.append(exc)
    if errors:
        raise errors[0]
