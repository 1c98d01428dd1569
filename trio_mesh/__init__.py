"""trio-mesh: a service-mesh data-plane proxy on Trio."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConfigError, MeshConfig, load_config

if TYPE_CHECKING:
    from .server import Server

__version__ = "0.1.0"

__all__ = ["ConfigError", "MeshConfig", "Server", "__version__", "load_config"]


# Server pulls in trio; config-only users need not pay for it
def __getattr__(name: str) -> type[Server]:
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(name)
