"""The fields a trailer section may carry when the proxy forwards one (both codecs).

RFC 9110 6.5.1: a sender must not put in trailers what frames, routes, modifies or
authenticates the request, controls the response or says how to process the content, and a
recipient must not act on them there. A lenient peer could still take them for the message's
own, so they are dropped on the way through (as nghttp2 and Envoy refuse them).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NOT_IN_TRAILERS", "trailer_fields"]

Header = tuple[bytes, bytes]

NOT_IN_TRAILERS: frozenset[bytes] = frozenset(
    (
        # framing, and the connection's own fields
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"http2-settings",
        # routing
        b"host",
        # request modifiers: controls and conditionals
        b"cache-control",
        b"expect",
        b"max-forwards",
        b"pragma",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        # authentication
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        # response control data
        b"age",
        b"date",
        b"expires",
        b"location",
        b"retry-after",
        b"vary",
        # how to process the content
        b"content-encoding",
        b"content-type",
        b"content-range",
    )
)


def trailer_fields(fields: Iterable[Header]) -> list[Header]:
    """``fields`` without those of NOT_IN_TRAILERS (names compared lower-cased) and without
    pseudo-header fields."""
    out: list[Header] = []
    for name, value in fields:
        if name in NOT_IN_TRAILERS or name[:1] == b":":
            continue
        if not name.islower() and name.lower() in NOT_IN_TRAILERS:  # lower() allocates
            continue
        out.append((name, value))
    return out
