"""Filters: the registries, the network filter chain and the built-in filters (each imported
when a configuration first builds it: ``_BUILTIN`` in ``registry`` and ``stream``)."""

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
