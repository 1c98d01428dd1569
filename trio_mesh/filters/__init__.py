"""Filters: the registry and the built-in network filters."""

from . import echo, tcp_proxy  # noqa: F401 - registration
from .registry import BuildContext, NetworkFilter, build_network_filter, register_network_filter

__all__ = ["BuildContext", "NetworkFilter", "build_network_filter", "register_network_filter"]
