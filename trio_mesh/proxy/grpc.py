"""gRPC over HTTP/2 as the proxy sees it: the deadline a client sends, and the status a
proxy answers with when it fails a call itself (as Envoy does: HTTP 200 and a trailers-only
response carrying ``grpc-status`` and ``grpc-message``)."""

from __future__ import annotations

import re

# grpc-status codes used by the proxy's own replies
OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

# Envoy's mapping of an HTTP status to a gRPC status (grpc/common.cc, httpToGrpcStatus).
_FROM_HTTP = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"application/grpc")
    return False


def grpc_timeout(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The ``grpc-timeout`` header in seconds; ``None`` if absent or malformed."""
    for name, value in headers:
        if name == b"grpc-timeout":
            m = _TIMEOUT.fullmatch(value.strip())
            return int(m.group(1)) * _UNITS[m.group(2)] if m else None
    return None


def of_http_status(http_status: int) -> int:
    """The grpc-status for an HTTP status (Envoy's mapping; the proxy's own failures have
    theirs in ``proxy/replies.py``)."""
    return _FROM_HTTP.get(http_status, UNKNOWN)


def encode_message(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (printable ASCII other than % stays)."""
    out = bytearray()
    for b in message.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def trailers_only(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """A whole gRPC response in one HEADERS frame (send it with END_STREAM)."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", encode_message(message)),
    ]
