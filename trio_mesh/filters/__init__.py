"""Filters: the registries, the network filter chain and the built-in filters."""

from . import (  # noqa: F401 - registration
    echo,
    fault,
    gzip,
    header_mutation,
    ip_access,
    mirror,
    payload_limit,
    tcp_proxy,
)
from . import flowcontrol as _flowcontrol  # noqa: F401 - registration
from .network import ConnectionFilter, RejectConnection
from .registry import (
    BuildContext,
    ConnectionAcceptor,
    NetworkFilter,
    build_network_filter,
    register_network_filter,
)
from .stream import (
    Headers,
    LocalReply,
    RequestContext,
    StreamFilter,
    register_stream_filter,
)

__all__ = [
    "BuildContext",
    "ConnectionAcceptor",
    "ConnectionFilter",
    "Headers",
    "LocalReply",
    "NetworkFilter",
    "RejectConnection",
    "RequestContext",
    "StreamFilter",
    "build_network_filter",
    "register_network_filter",
    "register_stream_filter",
]
