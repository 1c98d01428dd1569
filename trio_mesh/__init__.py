"""trio-mesh: a service-mesh data-plane proxy on Trio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, Loaded, MeshConfig, load_config, parse_config, read_config
    from .errors import StartupError
    from .server import Server

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Loaded",
    "MeshConfig",
    "Server",
    "StartupError",
    "__version__",
    "load_config",
    "parse_config",
    "read_config",
]

# Imported on first use: importing any submodule runs this file first, and the config layer
# (attrs, cattrs) or the server (trio) is not what every submodule needs.
_LAZY = {
    "ConfigError": ".config",
    "MeshConfig": ".config",
    "load_config": ".config",
    "parse_config": ".config",
    "read_config": ".config",
    "Loaded": ".config",
    "StartupError": ".errors",
    "Server": ".server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
