"""trio-mesh: a service-mesh data-plane proxy on Trio."""

from .config import ConfigError, MeshConfig, load_config

__version__ = "0.1.0"

__all__ = ["ConfigError", "MeshConfig", "Server", "__version__", "load_config"]


def __getattr__(name: str):  # Server pulls in trio; config-only users need not pay for it
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(name)
