"""Runtime settings derived from the ``proxy`` filter's configuration."""

from __future__ import annotations

from ..config.filters import ProxyConfig
from ..protocols.http2 import H2Settings


def h2_settings(config: ProxyConfig) -> H2Settings:
    """What trio-mesh advertises and enforces on its HTTP/2 connections, both directions."""
    o = config.http2
    return H2Settings(
        max_concurrent_streams=o.max_concurrent_streams,
        initial_window_size=o.initial_stream_window_size,
        connection_window_size=o.initial_connection_window_size,
        max_header_list_size=o.max_header_list_size,
        max_premature_resets=o.max_premature_resets,
    )
