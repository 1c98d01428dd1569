"""Counters and gauges: plain integer attributes, cheap to bump on the hot path; latency
histograms: :class:`~trio_mesh.metrics.model.Histogram` attributes (one bisect a record).

A scrape (``trio_mesh.metrics.collect``) reads them: an ``int`` field is a counter unless its
class names it in ``GAUGES``; a ``Histogram`` field is a histogram (milliseconds)."""

from __future__ import annotations

from bisect import bisect_left
from typing import ClassVar

import attrs

from .metrics.model import ENVOY_BUCKETS_MS, Histogram

#: ``ENVOY_BUCKETS_MS`` as floats: a bisect with a float key compares float to float, twice
#: as fast as against the ints among them (the request path records with it).
BOUNDS_MS = tuple(float(b) for b in ENVOY_BUCKETS_MS)


@attrs.define(eq=False)
class Stats:
    """A group of named integers, all starting at 0. Subclasses are slotted attrs classes too
    (``@attrs.define(eq=False)``: compared by identity), one ``int = 0`` field per counter, so
    the type checker knows every counter's name."""

    #: The fields that are gauges (a value now, up and down), not monotonic counters.
    GAUGES: ClassVar[frozenset[str]] = frozenset()

    def as_dict(self) -> dict[str, int]:
        """The integer stats (counters and gauges), by name, in declaration order."""
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if type(v) is int}

    def histograms(self) -> dict[str, Histogram]:
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if type(v) is Histogram}


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
    # connections closed (all causes)
    downstream_cx_destroy: int = 0
    # gauge: requests begun and not ended yet (every protocol)
    downstream_rq_active: int = 0
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
    # connections closed by the proxy_protocol listener filter: a malformed header, none
    # when one is required, or one not received within listener_filters_timeout (Envoy's)
    downstream_cx_proxy_proto_error: int = 0
    # Histograms (ms): a connection's life, from accept to close; a request's, from its
    # head to its end (the response sent, or the request abandoned after an answer).
    downstream_cx_length_ms: Histogram = attrs.field(factory=Histogram)
    downstream_rq_time: Histogram = attrs.field(factory=Histogram)
    #: RPC requests by codec name (``bolt``...): counted by the RPC proxy.
    rpc: dict[str, RpcStats] = attrs.field(factory=dict)

    GAUGES: ClassVar[frozenset[str]] = frozenset(
        {
            "downstream_cx_active",
            "downstream_rq_active",
            "downstream_cx_rx_bytes_buffered",
            "downstream_cx_tx_bytes_buffered",
        }
    )

    def rpc_stats(self, protocol: str) -> RpcStats:
        """The RPC counters of ``protocol`` on this listener (made on first use: per
        connection, not per request)."""
        stats = self.rpc.get(protocol)
        if stats is None:
            stats = self.rpc[protocol] = RpcStats()
        return stats


@attrs.define(eq=False)
class XdsStats(Stats):
    """One xDS type's updates (Envoy's ``cluster_manager.cds.*``, ``listener_manager.lds.*``):
    responses handled, those applied and those rejected (NACKed); ``version_info``: the
    version last applied (``""``: none yet)."""

    update_attempt: int = 0
    update_success: int = 0
    update_rejected: int = 0
    version_info: str = ""


class RpcStats:
    """One RPC protocol's requests on one listener: the total, and a count per status code
    of the protocol (bolt's ``ResponseStatus``, Dubbo's status byte), the proxy's own error
    replies included (their codec status). Named at scrape time (``Codec.status_name``).

    An upstream picks the status codes: past ``MAX_STATUSES`` distinct ones, the others are
    counted together under ``OTHER_STATUS`` (one time series each, not one per code)."""

    __slots__ = ("by_status", "downstream_rq_total")

    MAX_STATUSES = 32
    OTHER_STATUS = -1

    def __init__(self) -> None:
        self.downstream_rq_total = 0
        self.by_status: dict[int, int] = {}

    def count(self, status: int | None) -> None:
        self.downstream_rq_total += 1
        if status is not None:
            by_status = self.by_status
            n = by_status.get(status)
            if n is None:  # a status not seen before (rare): within the bound?
                if len(by_status) >= self.MAX_STATUSES:
                    status = self.OTHER_STATUS
                n = by_status.get(status, 0)
            by_status[status] = n + 1


@attrs.define(eq=False)
class ClusterStats(Stats):
    upstream_cx_total: int = 0
    upstream_cx_active: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_overflow: int = 0
    upstream_cx_none_healthy: int = 0
    upstream_cx_idle_timeout: int = 0
    # Hosts chosen while fewer than half the hosts were usable (Envoy's panic: all offered)
    lb_healthy_panic: int = 0
    # Active health checks (Envoy's health_check.*): started, passed, failed, and of the
    # failures those with no answer (refused, reset, timed out: Envoy's network_failure)
    health_check_attempt: int = 0
    health_check_success: int = 0
    health_check_failure: int = 0
    health_check_network_failure: int = 0
    # connections closed (after they were established)
    upstream_cx_destroy: int = 0
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
    # tries cut by the route's retry policy's per_try_timeout
    upstream_rq_per_try_timeout: int = 0
    upstream_rq_pending_active: int = 0
    upstream_rq_pending_overflow: int = 0
    # responses the upstream gave, by class (RPC: 2xx success, 5xx an error status)
    upstream_rq_1xx: int = 0
    upstream_rq_2xx: int = 0
    upstream_rq_3xx: int = 0
    upstream_rq_4xx: int = 0
    upstream_rq_5xx: int = 0
    # Outlier detection (Envoy's cluster.<name>.outlier_detection.*): hosts ejected now,
    # ejections made (all, and by kind), ejections refused by max_ejection_percent
    outlier_detection_ejections_active: int = 0
    outlier_detection_ejections_enforced_total: int = 0
    outlier_detection_ejections_enforced_consecutive_5xx: int = 0
    outlier_detection_ejections_enforced_consecutive_gateway_failure: int = 0
    outlier_detection_ejections_enforced_consecutive_local_origin_failure: int = 0
    outlier_detection_ejections_overflow: int = 0
    http2_outbound_control_flood: int = 0
    http2_inbound_empty_frames_flood: int = 0
    http2_inbound_priority_frames_flood: int = 0
    http2_inbound_window_update_frames_flood: int = 0
    # Histogram (ms): from a try's start to its upstream response complete (Envoy records it
    # when the upstream response ends too); tries that got no response are not in it.
    upstream_rq_time: Histogram = attrs.field(factory=Histogram)

    GAUGES: ClassVar[frozenset[str]] = frozenset(
        {
            "upstream_cx_active",
            "upstream_rq_active",
            "upstream_rq_pending_active",
            "upstream_rq_retry_active",
            "outlier_detection_ejections_active",
        }
    )

    def upstream_response(self, code: int, ms: float) -> None:
        """A try's upstream response (``code``: its status, RPC mapped as MOSN does) after
        ``ms`` milliseconds."""
        timed = self.upstream_rq_time  # Histogram.record, inlined: a call less per request
        timed.counts[bisect_left(BOUNDS_MS, ms)] += 1
        timed.count += 1
        timed.sum += ms
        klass = code // 100
        if klass == 2:
            self.upstream_rq_2xx += 1
        elif klass == 5:
            self.upstream_rq_5xx += 1
        elif klass == 4:
            self.upstream_rq_4xx += 1
        elif klass == 3:
            self.upstream_rq_3xx += 1
        elif klass == 1:
            self.upstream_rq_1xx += 1
