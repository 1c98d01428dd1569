"""What is known about one request when it ends: the record every observer gets.

One :class:`RequestRecord` per request, for every protocol (HTTP/1, HTTP/2, gRPC, each RPC
codec), filled as the request goes and handed, once, to the listener's observers
(``proxy/observers.py``). Plain data: no reference to the connection, the stream, the route or
the runtime, so it never takes part in a reference cycle and reference counting frees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..network.tls import TlsInfo


class RequestRecord:
    """One request's facts. Times are ``time.monotonic()`` seconds; the durations count from
    ``start``. Fields only a detailed observer reads (an access log) are filled only when the
    listener has one (``Observers.detailed``): the status, flags, cluster and host always."""

    __slots__ = (
        "start_time",
        "start",
        "request_received_duration",
        "upstream_connect_duration",
        "response_received_duration",
        "duration",
        "bytes_received",
        "bytes_sent",
        "protocol",
        "method",
        "path",
        "authority",
        "response_code",
        "response_flag",
        "route_name",
        "upstream_host",
        "upstream_cluster",
        "downstream_remote_address",
        "downstream_local_address",
        "request_id",
        "user_agent",
        "rpc_service",
        "rpc_method",
        "tls",
        "upstream_transport_failure_reason",
        "rpc_status",
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_sampled",
    )

    def __init__(
        self,
        *,
        start_time: float = 0.0,
        start: float = 0.0,
        request_received_duration: float | None = None,
        upstream_connect_duration: float | None = None,
        response_received_duration: float | None = None,
        duration: float | None = None,
        bytes_received: int = 0,
        bytes_sent: int = 0,
        protocol: str = "",
        method: str = "",
        path: str = "",
        authority: str | None = "",
        response_code: int = 0,
        response_flag: str = "",
        route_name: str | None = None,
        upstream_host: str | None = None,
        upstream_cluster: str | None = None,
        downstream_remote_address: str | None = None,
        downstream_local_address: str | None = None,
        request_id: str | None = None,
        user_agent: str | None = None,
        rpc_service: str | None = None,
        rpc_method: str | None = None,
        tls: TlsInfo | None = None,
    ) -> None:
        #: ``time.time()`` when the request head arrived (0: unknown).
        self.start_time = start_time
        #: ``time.monotonic()`` at the same moment; durations are measured on this clock.
        self.start = start
        #: Seconds from ``start`` to the whole request received.
        self.request_received_duration = request_received_duration
        #: Seconds from ``start`` to an upstream connection (or stream) ready for the request.
        self.upstream_connect_duration = upstream_connect_duration
        #: Seconds from ``start`` to the upstream response head received (its first byte).
        self.response_received_duration = response_received_duration
        #: Seconds from ``start`` to the response fully sent: the request's end.
        self.duration = duration
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        #: ``HTTP/1.1``, ``HTTP/2``, or the RPC codec's name (``bolt``, ``dubbo``).
        self.protocol = protocol
        self.method = method
        #: With the query string.
        self.path = path
        self.authority = authority
        #: 0 if no response was sent. RPC: an HTTP status, as MOSN maps it (200 for a success
        #: response, 500 for an error response, a local reply's own status).
        self.response_code = response_code
        #: Envoy short codes (``UH``, ``UF``, ``UT``...), comma-joined; ``""`` if none.
        self.response_flag = response_flag
        self.route_name = route_name
        self.upstream_host = upstream_host
        self.upstream_cluster = upstream_cluster
        self.downstream_remote_address = downstream_remote_address
        self.downstream_local_address = downstream_local_address
        self.request_id = request_id
        self.user_agent = user_agent
        #: RPC: the request's ``service`` and ``method`` routing headers.
        self.rpc_service = rpc_service
        self.rpc_method = rpc_method
        #: The downstream connection's handshake (``None``: plaintext), a reference taken
        #: only for a detailed observer and read only when it writes a line. It holds the
        #: handshake's SSLObject (its peer certificate is decoded on first use), never the
        #: connection: no cycle.
        self.tls = tls
        #: Why the last try's transport to the upstream failed (a TLS handshake's reason).
        self.upstream_transport_failure_reason: str | None = None
        #: RPC: the protocol's own status of the response sent (the upstream's, or the
        #: codec's status for the proxy's error reply); ``None``: none (a oneway request).
        self.rpc_status: int | None = None
        #: Tracing (``tracing/tracer.py``; ``None`` when off): the trace's id (32 hex), this
        #: hop's span id and its parent's (16 hex; ``None``: the trace starts here), and
        #: whether the trace is sampled (its span exported).
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self.trace_sampled = False

    def add_flag(self, flag: str) -> None:
        """Add an Envoy response flag (``UH``...) to ``response_flag``, once."""
        flags = self.response_flag
        if not flags:
            self.response_flag = flag
        elif flag not in flags.split(","):
            self.response_flag = f"{flags},{flag}"

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"RequestRecord({fields})"
