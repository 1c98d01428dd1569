"""Configuration: frozen attrs classes in MOSN's v2 shape, loaded from YAML or JSON."""

from . import stream_filters as _stream_filters  # noqa: F401 - registers built-in shapes
from .errors import ConfigError
from .filter_configs import TcpProxyConfig, register_filter_config
from .load import Loaded, load_config, parse_config, read_config
from .model import (
    Cluster,
    ClusterManagerConfig,
    ClusterType,
    Host,
    LbType,
    Listener,
    MeshConfig,
    NetworkFilterConfig,
    ServerConfig,
    StreamFilterConfig,
)
from .scalars import Address

__all__ = [
    "Address",
    "Cluster",
    "ClusterManagerConfig",
    "ClusterType",
    "ConfigError",
    "Host",
    "LbType",
    "Listener",
    "Loaded",
    "MeshConfig",
    "NetworkFilterConfig",
    "ServerConfig",
    "StreamFilterConfig",
    "TcpProxyConfig",
    "load_config",
    "parse_config",
    "read_config",
    "register_filter_config",
]
