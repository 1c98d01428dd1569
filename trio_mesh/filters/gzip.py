"""The `gzip` stream filter: compresses responses for clients that accept gzip.

The decision is made on the response head: the request's Accept-Encoding takes gzip (q-values
read: ``gzip;q=0`` refuses it, ``*`` stands for it when it is not named), the response is not
encoded already, its status carries a body, its media type is configured, it says it is at
least ``content_length`` bytes long (or does not say), and nothing forbids it (``Cache-Control:
no-transform``, a ``Content-Range``). Then Content-Length goes (the proxy frames the body
chunked for HTTP/1.1, close-delimited for HTTP/1.0, by DATA frames for HTTP/2), Content-Encoding
becomes ``gzip`` and a strong ETag turns weak (the bytes changed). Vary gains Accept-Encoding
on every response that could be compressed, compressed for this client or not.

The body is compressed as it streams, one zlib stream per response. Every piece is flushed
(Z_SYNC_FLUSH) before it goes on, as Envoy's compressor does: nothing the upstream sent waits
in the compressor for more input, so event streams and long polls stay live. That costs a few
bytes per piece and some ratio on small pieces; the pieces are the proxy's reads (up to
64 KiB), so on bulk bodies the loss is small.

HEAD requests, gRPC (it compresses its own messages) and the RPC protocols get no filter.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

from ..config.stream_filters.gzip import GzipConfig
from .stream import Headers, RequestContext, StreamFilter, register_stream_filter

__all__ = ["GzipFilter", "accepts_gzip"]

_NO_BODY = frozenset({204, 304})
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def _qvalue(params: str) -> float:
    """The ``q`` of one Accept-Encoding element (1 when absent; a malformed one counts as 0:
    identity is always safe to send)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else 0.0
    return 1.0


def accepts_gzip(values: list[str]) -> bool:
    """Whether the Accept-Encoding field values take gzip (RFC 9110 12.5.3): named (or as
    ``x-gzip``) with q above 0, or else covered by ``*`` with q above 0; and not ranked below
    an explicitly listed ``identity``."""
    gzip_q = star_q = identity_q = None
    for value in values:
        for element in value.split(","):
            coding, _, params = element.partition(";")
            coding = coding.strip().lower()
            if not coding:
                continue
            q = _qvalue(params) if params else 1.0
            if coding in ("gzip", "x-gzip"):
                gzip_q = q if gzip_q is None else max(gzip_q, q)
            elif coding == "*":
                star_q = q if star_q is None else max(star_q, q)
            elif coding == "identity":
                identity_q = q if identity_q is None else max(identity_q, q)
    best = gzip_q if gzip_q is not None else star_q
    if best is None or best <= 0:
        return False
    return identity_q is None or best >= identity_q


def _media_type(value: str) -> str:
    return value.partition(";")[0].strip().lower()


def _has_token(values: list[str], token: str) -> bool:
    return any(t.strip().lower() == token for v in values for t in v.split(","))


class _Factory:
    """Per configuration: the media types as a set, the level; per request: a filter, or
    none where compression can never apply."""

    __slots__ = ("content_types", "level", "min_length")

    def __init__(self, config: GzipConfig) -> None:
        self.level = config.level
        self.min_length = config.content_length
        self.content_types = frozenset(config.content_types)

    def __call__(self, context: RequestContext) -> GzipFilter | None:
        if context.is_rpc or context.grpc or context.method == "HEAD":
            return None
        return GzipFilter(self, context)


class GzipFilter(StreamFilter):
    __slots__ = ("_shared", "_z", "accepted")

    def __init__(self, factory: _Factory, context: RequestContext) -> None:
        self._shared = factory
        self.context = context
        self.accepted = False
        self._z: Any = None  # the response's compressor, once it is being compressed

    @classmethod
    def factory(cls, config: Any, build: Any) -> Callable[[RequestContext], StreamFilter | None]:
        return _Factory(config if config is not None else GzipConfig())

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> None:
        values = headers.get_all("accept-encoding")
        self.accepted = bool(values) and accepts_gzip(values)

    async def on_response_headers(self, headers: Headers, end_stream: bool) -> None:
        if end_stream or not self._compressible(headers):
            return
        # A response that is compressed for some clients says so to caches even when this
        # client gets it as it is (RFC 9110 12.5.5; nginx's gzip_vary), so that a cache never
        # serves one form to a client that asked for the other.
        vary = headers.get_all("vary")
        if not vary:
            headers.set("vary", "accept-encoding")
        elif not _has_token(vary, "accept-encoding") and not _has_token(vary, "*"):
            headers.set("vary", ", ".join([*vary, "accept-encoding"]))
        if not self.accepted:
            return
        # wbits 31: a gzip header and trailer around the deflate stream
        self._z = zlib.compressobj(self._shared.level, zlib.DEFLATED, 31)
        headers.remove("content-length")
        headers.set("content-encoding", "gzip")
        etag = headers.get("etag")
        if etag is not None and not etag.startswith("W/"):
            headers.set("etag", "W/" + etag)  # no longer byte-for-byte the upstream's

    def _compressible(self, headers: Headers) -> bool:
        status = headers.status or 0
        if status < 200 or status in _NO_BODY or status == 206:
            return False
        encoding = headers.get_all("content-encoding")
        if encoding and not all(v.strip().lower() in ("", "identity") for v in encoding):
            return False  # already encoded (or encoded in a way we cannot stack on)
        if headers.get("content-range") is not None:
            return False  # byte ranges refer to the identity body
        if _has_token(headers.get_all("cache-control"), "no-transform"):
            return False
        content_type = headers.get("content-type")
        if content_type is not None:
            media = _media_type(content_type)
            if media.startswith("application/grpc") or media not in self._shared.content_types:
                return False
        length = headers.get("content-length")
        if length is not None:
            length = length.strip()
            if length.isdigit() and int(length) < self._shared.min_length:
                return False
        return True

    async def on_response_data(self, data: bytes, last: bool) -> bytes | None:
        z = self._z
        if z is None:
            return None
        out = z.compress(data) if data else b""
        if last:
            self._z = None
            return out + z.flush()
        if data:
            out += z.flush(zlib.Z_SYNC_FLUSH)
        return out


register_stream_filter("gzip", GzipFilter, GzipConfig)
