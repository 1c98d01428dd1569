"""Local replies: what the proxy answers itself, one typed value for every protocol.

A `Reply` carries the HTTP status, Envoy's response flag, the gRPC status, the RPC error kind
and the body. The table at the end is the one place where a reply kind gets its value in each
protocol: HTTP/1 and HTTP/2 (the status and body; ``h1_keep``/``h1_close``, the encoded HTTP/1
bytes), gRPC (``grpc_status``; ``grpc_headers``, the trailers-only block) and the RPC codecs
(``rpc_error``, which each codec maps to its own status). The replies that never change
are built once, at import, with their usual HTTP/1 bytes and gRPC trailers-only headers already
encoded: answering one costs no encoding.
"""

from __future__ import annotations

import logging

from ..filters.stream import LocalReply, http_status_to_rpc_error
from ..network.connect import ConnectError, TlsConnectError
from ..protocols.http1 import encode_response_head
from ..protocols.xprotocol import ErrorKind
from . import grpc

log = logging.getLogger("trio_mesh.proxy")

Header = tuple[bytes, bytes]


class Flag:
    """Envoy's response flags (the access log's ``%response_flag%``), short codes."""

    NONE = ""
    NO_ROUTE = "NR"  # no route matched
    NO_CLUSTER = "NC"  # the route's cluster does not exist
    NO_HEALTHY_UPSTREAM = "UH"
    CONNECT_FAILURE = "UF"  # connecting upstream failed
    OVERFLOW = "UO"  # a circuit breaker or pool limit refused the request
    UPSTREAM_TERMINATION = "UC"  # the upstream connection closed before/while answering
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    UPSTREAM_TIMEOUT = "UT"
    UPSTREAM_RESET = "UR"  # the upstream reset its stream mid-response
    RETRY_OVERFLOW = "URX"  # retries exhausted or refused by circuit_breakers.max_retries
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    DOWNSTREAM_TERMINATION = "DC"  # the client went away mid-request
    DOWNSTREAM_RESET = "DR"  # the client reset its stream
    FILTER_FAILED = "FF"  # a stream filter failed (or answered) mid-response


class Cause:
    """What failed, as a retry policy's ``retry_on`` sees it (decided once per reply kind)."""

    STATUS = 0  # a status the upstream answered with: ``5xx``, ``retriable_status_codes``...
    CONNECT = 1  # ``connect-failure``
    RESET = 2  # ``reset``: closed, reset, a bad response or a per-try timeout (as Envoy)
    REFUSED = 3  # the proxy's own refusal (no route, no host, overflow...): never retried


# The gRPC status of a proxy failure, by its flag (Envoy's way: the call fails with a gRPC
# status, not with an HTTP one); other replies map their HTTP status as Envoy does.
_GRPC_OF_FLAG = {
    Flag.UPSTREAM_TIMEOUT: grpc.DEADLINE_EXCEEDED,
    Flag.NO_ROUTE: grpc.UNIMPLEMENTED,
    Flag.NO_HEALTHY_UPSTREAM: grpc.UNAVAILABLE,
    Flag.CONNECT_FAILURE: grpc.UNAVAILABLE,
    Flag.OVERFLOW: grpc.UNAVAILABLE,
    Flag.UPSTREAM_TERMINATION: grpc.UNAVAILABLE,
    Flag.NO_CLUSTER: grpc.UNAVAILABLE,
    Flag.UPSTREAM_PROTOCOL_ERROR: grpc.UNAVAILABLE,
    Flag.FILTER_FAILED: grpc.INTERNAL,
}
_CAUSE_OF_FLAG = {
    Flag.CONNECT_FAILURE: Cause.CONNECT,
    Flag.UPSTREAM_TERMINATION: Cause.RESET,
    Flag.UPSTREAM_PROTOCOL_ERROR: Cause.RESET,
    Flag.UPSTREAM_TIMEOUT: Cause.RESET,
}
_PLAIN = (b"content-type", b"text/plain")
_CLOSE = (b"connection", b"close")


class Reply:
    """One local reply. ``headers``: extra response headers (a stream filter's); ``close``:
    close the downstream connection after it; ``grpc_message``: the gRPC message when not the
    body's text. ``h1_keep``/``h1_close``: the HTTP/1.1 bytes of a plain reply (a GET, no
    extra headers, no route mutation) on a connection that goes on or closes; ``None`` when
    the reply is not a constant (encoded when answered)."""

    __slots__ = (
        "body",
        "by_filter",
        "cause",
        "close",
        "flag",
        "grpc_headers",
        "grpc_message",
        "grpc_status",
        "h1_close",
        "h1_keep",
        "headers",
        "rpc_error",
        "status",
        "transport_failure",
    )

    def __init__(
        self,
        status: int,
        flag: str,
        body: bytes,
        *,
        grpc_status: int | None = None,
        grpc_message: str | None = None,
        rpc_error: ErrorKind | None = None,
        headers: list[Header] | None = None,
        close: bool = False,
        by_filter: bool = False,
    ) -> None:
        self.status = status
        self.flag = flag
        self.body = body
        if grpc_status is None:
            grpc_status = _GRPC_OF_FLAG.get(flag)
            if grpc_status is None:
                grpc_status = grpc.of_http_status(status)
        self.grpc_status = grpc_status
        self.grpc_message = grpc_message
        self.rpc_error = rpc_error if rpc_error is not None else _rpc_error_of(status)
        self.headers = headers
        self.close = close
        #: A stream filter's answer (an RPC reply then carries its message).
        self.by_filter = by_filter
        self.cause = _CAUSE_OF_FLAG.get(flag, Cause.STATUS if not flag else Cause.REFUSED)
        self.h1_keep: bytes | None = None
        self.h1_close: bytes | None = None
        self.grpc_headers: tuple[Header, ...] | None = None
        #: Why the transport to the upstream failed (``TLS error: ...``), for the access
        #: log's ``%upstream_transport_failure_reason%``; ``None``: not a transport failure.
        self.transport_failure: str | None = None

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.flag!r}, {self.body!r})"

    @classmethod
    def from_filter(cls, reply: LocalReply) -> Reply:
        """A stream filter's answer (its headers go in every protocol's reply, gRPC too)."""
        return cls(
            reply.status,
            reply.flag,
            reply.body,
            grpc_status=reply.grpc_status,
            grpc_message=reply.grpc_message,
            rpc_error=_rpc_error_kind(http_status_to_rpc_error(reply)),
            headers=reply.http_headers(),
            close=reply.close,
            by_filter=True,
        )

    def grpc_trailers_only(self, extra: list[Header] | None = None) -> list[Header]:
        """The whole reply as one gRPC trailers-only HEADERS block (sent with END_STREAM)."""
        if self.grpc_headers is not None and not extra:
            return list(self.grpc_headers)
        message = self.grpc_message
        if not message:
            message = self.body.decode("utf-8", "replace").strip() or f"HTTP {self.status}"
        out = grpc.trailers_only(self.grpc_status, message)
        if extra:
            out.extend(h for h in extra if h[0] not in _TRAILERS_ONLY_NAMES)
        return out


# What a gRPC trailers-only reply sets itself (a filter reply's headers do not repeat them).
_TRAILERS_ONLY_NAMES = frozenset({b":status", b"content-type", b"grpc-status", b"grpc-message"})


def _rpc_error_of(status: int) -> ErrorKind:
    return _rpc_error_kind(http_status_to_rpc_error(LocalReply(status)))


def _rpc_error_kind(name: str) -> ErrorKind:
    try:
        return ErrorKind[name]
    except KeyError:
        log.error("stream filter reply: no RPC error kind %r, answering INTERNAL", name)
        return ErrorKind.INTERNAL


def _constant(
    status: int, flag: str, grpc_status: int | None, rpc_error: ErrorKind, body: bytes
) -> Reply:
    reply = Reply(status, flag, body, grpc_status=grpc_status, rpc_error=rpc_error)
    reply.h1_keep = encode_response_head(status, None, [_PLAIN], length=len(body)) + body
    reply.h1_close = encode_response_head(status, None, [_PLAIN, _CLOSE], length=len(body)) + body
    reply.grpc_headers = tuple(reply.grpc_trailers_only())
    return reply


_RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "

# The table: every reply the proxy makes itself, in each protocol (Envoy's wording and codes):
# _constant(HTTP status, response flag, gRPC status, RPC error kind, body).
NO_ROUTE = _constant(404, Flag.NO_ROUTE, grpc.UNIMPLEMENTED,
                     ErrorKind.NO_ROUTE, b"route not found\n")  # fmt: skip
NO_CLUSTER = _constant(503, Flag.NO_CLUSTER, grpc.UNAVAILABLE,
                       ErrorKind.NO_ROUTE, b"cluster not found\n")  # fmt: skip
NO_HEALTHY_UPSTREAM = _constant(503, Flag.NO_HEALTHY_UPSTREAM, grpc.UNAVAILABLE,
                                ErrorKind.NO_HEALTHY_HOST, b"no healthy upstream\n")  # fmt: skip
OVERFLOW = _constant(503, Flag.OVERFLOW, grpc.UNAVAILABLE,
                     ErrorKind.OVERFLOW, b"upstream connection overflow\n")  # fmt: skip
CONNECT_FAILURE = _constant(503, Flag.CONNECT_FAILURE, grpc.UNAVAILABLE,
                            ErrorKind.UPSTREAM_FAILURE,
                            _RESET_BEFORE_HEADERS + b"connection failure\n")  # fmt: skip
UPSTREAM_RESET = _constant(502, Flag.UPSTREAM_TERMINATION, grpc.UNAVAILABLE,
                           ErrorKind.UPSTREAM_RESET,
                           _RESET_BEFORE_HEADERS + b"connection termination\n")  # fmt: skip
BAD_RESPONSE = _constant(502, Flag.UPSTREAM_PROTOCOL_ERROR, grpc.UNAVAILABLE,
                         ErrorKind.UPSTREAM_FAILURE,
                         b"upstream sent an invalid response\n")  # fmt: skip
TIMEOUT = _constant(504, Flag.UPSTREAM_TIMEOUT, grpc.DEADLINE_EXCEEDED,
                    ErrorKind.TIMEOUT, b"upstream request timeout\n")  # fmt: skip
CONNECT_REFUSED = _constant(405, Flag.NONE, grpc.INTERNAL,
                            ErrorKind.CODEC_ERROR, b"CONNECT is not supported\n")  # fmt: skip
INTERNAL = _constant(500, Flag.NONE, grpc.INTERNAL, ErrorKind.INTERNAL,
                     b"internal error\n")  # fmt: skip

# A TLS handshake that failed upstream: Envoy's wording with OpenSSL's reason, one reply per
# reason (made once: upstreams fail the same way many times; a few reasons exist at all).
_TLS_FAILURES: dict[str, Reply] = {}
_TLS_FAILURES_MAX = 64


def connect_failure(exc: ConnectError) -> Reply:
    """The reply to a failed connect: ``CONNECT_FAILURE``, with the TLS reason after it when
    the handshake was what failed."""
    if not isinstance(exc, TlsConnectError):
        return CONNECT_FAILURE
    reply = _TLS_FAILURES.get(exc.reason)
    if reply is None:
        reason = exc.reason.encode("ascii", "replace").replace(b"\n", b" ")
        reply = _constant(503, Flag.CONNECT_FAILURE, grpc.UNAVAILABLE,
                          ErrorKind.UPSTREAM_FAILURE,
                          _RESET_BEFORE_HEADERS + b"connection failure, transport failure"
                          b" reason: TLS error: " + reason + b"\n")  # fmt: skip
        reply.transport_failure = "TLS error: " + reason.decode("ascii")
        if len(_TLS_FAILURES) < _TLS_FAILURES_MAX:
            _TLS_FAILURES[exc.reason] = reply
    return reply
