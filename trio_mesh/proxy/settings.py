"""Runtime settings derived from the ``proxy`` filter's configuration."""

from __future__ import annotations

from ..config.filter_configs import ProxyConfig
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
        max_outbound_control_frames=o.max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload=(
            o.max_consecutive_inbound_frames_with_empty_payload
        ),
        max_inbound_priority_frames_per_stream=o.max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent=(
            o.max_inbound_window_update_frames_per_data_frame_sent
        ),
    )
