"""Counters and gauges: plain integer attributes, cheap to bump on the hot path."""

from __future__ import annotations


class Stats:
    """A group of named integers; subclasses list them in ``__slots__``."""

    __slots__ = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class ListenerStats(Stats):
    __slots__ = (
        "downstream_cx_total",
        "downstream_cx_active",
        "downstream_cx_overflow",
        "downstream_cx_idle_timeout",
        "downstream_accept_error",
        "downstream_rq_total",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        # gauge: received bytes buffered now (the listener's buffer budget in use)
        "downstream_cx_rx_bytes_buffered",
        # gauge: response bytes waiting to be written to clients (counted in the same budgets)
        "downstream_cx_tx_bytes_buffered",
        # connections closed because a response owed to a client that was not reading would
        # have taken a budget past its limit
        "downstream_cx_tx_buffer_overflow",
        # responses refused (the RPC codec's overflow error sent instead) because other
        # clients' responses filled the listener's budget
        "downstream_rq_tx_buffer_overflow",
        # times a connection stopped reading because a buffer budget was spent
        "downstream_flow_control_paused_reading_total",
        # HTTP/2 connections closed for a frame flood (Envoy's http2.* counters)
        "http2_outbound_control_flood",
        "http2_inbound_empty_frames_flood",
        "http2_inbound_priority_frames_flood",
        "http2_inbound_window_update_frames_flood",
    )


class ClusterStats(Stats):
    __slots__ = (
        "upstream_cx_total",
        "upstream_cx_active",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_overflow",
        "upstream_cx_none_healthy",
        "upstream_cx_idle_timeout",
        "upstream_rq_total",
        # Requests (each try) outstanding to the cluster, all hosts and protocols: what
        # ``circuit_breakers.max_requests`` bounds; its overflow counts as pending overflow,
        # as Envoy's does.
        "upstream_rq_active",
        "upstream_rq_retry",
        # Retries outstanding (``circuit_breakers.max_retries``) and those refused by it.
        "upstream_rq_retry_active",
        "upstream_rq_retry_overflow",
        "upstream_rq_timeout",
        "upstream_rq_pending_active",
        "upstream_rq_pending_overflow",
        "http2_outbound_control_flood",
        "http2_inbound_empty_frames_flood",
        "http2_inbound_priority_frames_flood",
        "http2_inbound_window_update_frames_flood",
    )
