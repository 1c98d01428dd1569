"""Configuration: frozen attrs classes in MOSN's v2 shape, loaded from YAML or JSON."""

from .errors import ConfigError
from .filter_configs import TcpProxyConfig, register_filter_config
from .load import Loaded, load_config, parse_config, read_config
from .model import (
    Cluster,
    ClusterManagerConfig,
    ClusterType,
    DnsLookupFamily,
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
    "DnsLookupFamily",
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
