"""Running trio-mesh inside tests: the pytest plugin's fixtures (``plugin``) and what they
hand out, usable without pytest too.

- ``await start_mesh(nursery, config)`` -> ``MeshHandle``: a proxy in a Trio nursery.
- ``mesh_in_thread(config)`` -> ``ThreadedMesh``: a proxy in a thread of its own, with its
  own ``trio.run``, for code that is not Trio; ``stop()`` it (the fixture does).

``config`` is a dict (a parsed YAML/JSON document), a ``MeshConfig`` or a file path.
docs/testing.md shows complete tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handle import MeshHandle, as_config, start_mesh
    from .thread import ThreadedMesh, mesh_in_thread

__all__ = ["MeshHandle", "ThreadedMesh", "as_config", "mesh_in_thread", "start_mesh"]

# Imported on first use: the pytest plugin (``trio_mesh.testing.plugin``) loads in every
# pytest run of every project that has trio-mesh installed, and imports this file first.
_LAZY = {
    "MeshHandle": ".handle",
    "as_config": ".handle",
    "start_mesh": ".handle",
    "ThreadedMesh": ".thread",
    "mesh_in_thread": ".thread",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
