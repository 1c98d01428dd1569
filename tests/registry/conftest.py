"""Every registry test starts with an empty in-memory registry (it is process-wide)."""

from __future__ import annotations

import pytest

from trio_mesh.registry.memory import MemoryRegistry


@pytest.fixture(autouse=True)
def fresh_memory_registry():
    MemoryRegistry.reset()
    yield
    MemoryRegistry.reset()
