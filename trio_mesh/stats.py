"""Counters and gauges: plain integer attributes, cheap to bump on the hot path."""

from __future__ import annotations

import attrs


@attrs.define(eq=False)
class Stats:
    """A group of named integers, all starting at 0. Subclasses are slotted attrs classes too
    (``@attrs.define(eq=False)``: compared by identity), one ``int = 0`` field per counter, so
    the type checker knows every counter's name."""

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self, recurse=False)


@attrs.define(eq=False)
class ListenerStats(Stats):
    downstream_cx_total: int = 0
    downstream_cx_active: int = 0
    downstream_cx_overflow: int = 0
    downstream_cx_idle_timeout: int = 0
    downstream_accept_error: int = 0
    downstream_rq_total: int = 0
    downstream_rq_1xx: int = 0
    downstream_rq_2xx: int = 0
    downstream_rq_3xx: int = 0
    downstream_rq_4xx: int = 0
    downstream_rq_5xx: int = 0
    # gauge: received bytes buffered now (the listener's buffer budget in use)
    downstream_cx_rx_bytes_buffered: int = 0
    # gauge: response bytes waiting to be written to clients (counted in the same budgets)
    downstream_cx_tx_bytes_buffered: int = 0
    # connections closed because a response owed to a client that was not reading would
    # have taken a budget past its limit
    downstream_cx_tx_buffer_overflow: int = 0
    # responses refused (the RPC codec's overflow error sent instead) because other
    # clients' responses filled the listener's budget
    downstream_rq_tx_buffer_overflow: int = 0
    # times a connection stopped reading because a buffer budget was spent
    downstream_flow_control_paused_reading_total: int = 0
    # HTTP/2 connections closed for a frame flood (Envoy's http2.* counters)
    http2_outbound_control_flood: int = 0
    http2_inbound_empty_frames_flood: int = 0
    http2_inbound_priority_frames_flood: int = 0
    http2_inbound_window_update_frames_flood: int = 0
    # Downstream TLS (Envoy's listener ssl.* counters): handshakes done, and those that
    # failed (a bad ClientHello, a plaintext client on a TLS-only chain, OpenSSL's refusal)
    ssl_handshake: int = 0
    ssl_connection_error: int = 0
    # of the failures: a required client certificate missing, or not verified
    ssl_fail_verify_no_cert: int = 0
    ssl_fail_verify_error: int = 0
    # handshakes (the ClientHello wait included) over tls_handshake_timeout, and those
    # aborted to make room under max_concurrent_handshakes
    ssl_handshake_timeout: int = 0
    ssl_handshake_evicted: int = 0
    # connections no filter chain matched (closed; Envoy's no_filter_chain_match)
    no_filter_chain_match: int = 0


@attrs.define(eq=False)
class ClusterStats(Stats):
    upstream_cx_total: int = 0
    upstream_cx_active: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_overflow: int = 0
    upstream_cx_none_healthy: int = 0
    upstream_cx_idle_timeout: int = 0
    # Upstream TLS (Envoy's cluster ssl.* counters): handshakes done, those that failed
    # (each also an upstream_cx_connect_fail), and of those, the upstream's certificate
    # refused (another CA, a name that does not match, expired)
    ssl_handshake: int = 0
    ssl_connection_error: int = 0
    ssl_fail_verify_error: int = 0
    upstream_rq_total: int = 0
    # Requests (each try) outstanding to the cluster, all hosts and protocols: what
    # ``circuit_breakers.max_requests`` bounds; its overflow counts as pending overflow,
    # as Envoy's does.
    upstream_rq_active: int = 0
    upstream_rq_retry: int = 0
    # Retries outstanding (``circuit_breakers.max_retries``) and those refused by it.
    upstream_rq_retry_active: int = 0
    upstream_rq_retry_overflow: int = 0
    upstream_rq_timeout: int = 0
    upstream_rq_pending_active: int = 0
    upstream_rq_pending_overflow: int = 0
    http2_outbound_control_flood: int = 0
    http2_inbound_empty_frames_flood: int = 0
    http2_inbound_priority_frames_flood: int = 0
    http2_inbound_window_update_frames_flood: int = 0
