"""OTLP's ``ExportTraceServiceRequest`` written by hand: the spans of one export batch as the
protobuf bytes the OpenTelemetry SDK's encoder makes for the same spans, at a fraction of its
CPU (the SDK builds a ``ReadableSpan`` and then a protobuf object per span and per attribute,
all of it holding the GIL the proxy's event loop needs).

The wire format (https://protobuf.dev/programming-guides/encoding/): a field is a varint tag
(``number << 3 | wire type``) then a varint, a fixed 8/4-byte little-endian value, or a varint
length and that many bytes (strings, bytes, nested messages). What never changes is encoded
once, when the encoder is made: the resource and the instrumentation scope (taken from the
SDK's own encoding of them), every attribute key, the span kind, status and flags. A span is a
list of byte strings; its length is summed from them; the batch is one ``join``. Attribute
values that repeat from span to span (method, route, cluster, host, status...) are kept encoded
in a small bounded cache.

Field numbers (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto):
``ExportTraceServiceRequest.resource_spans`` 1; ``ResourceSpans``: resource 1, scope_spans 2,
schema_url 3; ``ScopeSpans``: scope 1, spans 2, schema_url 3; ``Span``: trace_id 1, span_id 2,
parent_span_id 4, name 5, kind 6, start_time_unix_nano 7 (fixed64), end_time_unix_nano 8
(fixed64), attributes 9, status 15, flags 16 (fixed32); ``Status.code`` 3; ``KeyValue``: key 1,
value 2; ``AnyValue``: string_value 1, int_value 3.

Pure data: no trio, no SDK import (``span_converter`` in ``export.py`` is the SDK's side).
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

#: One span as queued by the observer (``export.SpanTuple``).
SpanTuple = tuple[Any, ...]

_TIMES = Struct("<BQBQ")  # tag 7 fixed64 start, tag 8 fixed64 end
_U64 = (1 << 64) - 1
_U64_LE = Struct("<Q").pack


def varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**64) as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(varint(n) for n in range(2048))


def _v(n: int) -> bytes:
    return _SMALL[n] if n < 2048 else varint(n)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (already shifted, wire type 2) and ``payload``."""
    return bytes((tag,)) + _v(len(payload)) + payload


def _key_head(key: str) -> bytes:
    """A ``KeyValue``'s key field and its value's tag: all of it but the value's length."""
    return field(0x0A, key.encode()) + b"\x12"


def _str_attr(head: bytes, value: str | None, errors: str) -> bytes:
    """An ``attributes`` field (Span field 9) holding ``KeyValue{key, AnyValue{string}}``;
    ``None``: an empty ``AnyValue``, as the SDK writes it."""
    if value is None:
        kv = head + b"\x00"
    else:
        data = value.encode("utf-8", errors)
        n = len(data)
        if n < 120:
            kv = head + _SMALL[n + 2] + b"\x0a" + _SMALL[n] + data
        else:
            any_value = b"\x0a" + _v(n) + data
            kv = head + _v(len(any_value)) + any_value
    return b"\x4a" + _v(len(kv)) + kv


def _int_attr(head: bytes, value: int) -> bytes:
    """An ``attributes`` field holding ``KeyValue{key, AnyValue{int_value}}`` (int64: a
    negative number is its 64-bit two's complement, as protobuf writes it)."""
    any_value = b"\x18" + varint(value & _U64)
    kv = head + _SMALL[len(any_value)] + any_value
    return b"\x4a" + _v(len(kv)) + kv


_NAME = b"\x2a"  # Span.name: a plain string field, cached like the attributes
_PROTOCOL = _key_head("network.protocol.name")
_RPC_SYSTEM = _key_head("rpc.system")
_RPC_SERVICE = _key_head("rpc.service")
_RPC_METHOD = _key_head("rpc.method")
_HTTP_METHOD = _key_head("http.request.method")
_URL_PATH = _key_head("url.path")
_SERVER_ADDRESS = _key_head("server.address")
_STATUS_CODE = _key_head("http.response.status_code")
_ROUTE = _key_head("route_name")
_CLUSTER = _key_head("upstream_cluster")
_HOST = _key_head("upstream_host")
_FLAGS = _key_head("response_flags")
_PEER_ADDRESS = _key_head("network.peer.address")
_PEER_PORT = _key_head("network.peer.port")

_KIND_SERVER = b"\x30\x02"  # Span.kind = SPAN_KIND_SERVER
# Span.status (field 15): UNSET is an empty Status, ERROR is code 2; then Span.flags (field 16,
# fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (0x100), plus IS_REMOTE (0x200) when the parent
# came from the caller (the SDK's encoder sets both the same way).
_TAIL = {
    (False, False): b"\x7a\x00\x85\x01\x00\x01\x00\x00",
    (False, True): b"\x7a\x00\x85\x01\x00\x03\x00\x00",
    (True, False): b"\x7a\x02\x18\x02\x85\x01\x00\x01\x00\x00",
    (True, True): b"\x7a\x02\x18\x02\x85\x01\x00\x03\x00\x00",
}

#: Encoded segments longer than this are made each time, never cached (the memory bound).
CACHE_SEGMENT_MAX = 1024
#: Entries in the cache of encoded segments; full, it starts over.
CACHE_ENTRIES = 1024


class SpanEncoder:
    """Encodes batches of queued spans into one ``ExportTraceServiceRequest`` each.
    ``resource`` and ``scope``: the serialized ``Resource`` and ``InstrumentationScope``
    messages (the SDK's encoding of its own objects, made once); the schema URLs likewise.

    A span's fields that repeat from request to request are encoded in segments kept in a
    bounded cache, keyed by the values they are made of: everything but the ids, times, path
    and peer (name, kind, method, route, cluster, host, status, flags...); the path; the peer.
    Only ids and times are encoded for every span."""

    __slots__ = ("_cache", "_rs_tail", "_resource", "_scope_head", "_scope_tail")

    def __init__(
        self, resource: bytes, scope: bytes, resource_schema: str = "", scope_schema: str = ""
    ) -> None:
        self._resource = field(0x0A, resource)  # ResourceSpans.resource
        self._scope_head = field(0x0A, scope)  # ScopeSpans.scope
        self._scope_tail = field(0x1A, scope_schema.encode()) if scope_schema else b""
        self._rs_tail = field(0x1A, resource_schema.encode()) if resource_schema else b""
        self._cache: dict[tuple[Any, ...], Any] = {}

    def encode(self, spans: Sequence[SpanTuple]) -> bytes:
        """The serialized ``ExportTraceServiceRequest`` of ``spans`` (one resource, one
        scope)."""
        parts: list[bytes] = [self._scope_head]
        span = self._span
        for queued in spans:
            try:
                body = span(queued, "strict")
            except UnicodeEncodeError:  # a lone surrogate: sent as "?", never a lost batch
                body = span(queued, "replace")
            parts.append(b"\x12" + _v(sum(map(len, body))))  # ScopeSpans.spans
            parts += body
        if self._scope_tail:
            parts.append(self._scope_tail)
        size = sum(map(len, parts))
        resource_spans = [self._resource, b"\x12", _v(size), *parts, self._rs_tail]
        size = sum(map(len, resource_spans))
        return b"".join([b"\x0a", _v(size), *resource_spans])

    def _span(self, span: SpanTuple, errors: str) -> list[bytes]:
        """One ``Span`` message's bytes, in parts: as ``export.span_converter`` maps a queued
        span and the SDK encodes it (same fields, attributes in the same order)."""
        (trace, span_id, parent, start, duration, protocol, method, path, authority, status,
         flags, route, cluster, host, peer, service, rpc_method) = span  # fmt: skip
        cache = self._cache
        if parent:
            ids = b"\x0a\x10%b\x12\x08%b\x22\x08%b" % (
                bytes.fromhex(trace),
                bytes.fromhex(span_id),
                bytes.fromhex(parent),
            )
        else:
            ids = b"\x0a\x10%b\x12\x08%b" % (bytes.fromhex(trace), bytes.fromhex(span_id))
        start_ns = int(start * 1e9)
        end_ns = start_ns + int((duration or 0.0) * 1e9)
        key: tuple[Any, ...] = (
            protocol, method, route, service, rpc_method, authority, status, cluster, host, flags
        )  # fmt: skip
        if (fixed := cache.get(key)) is None:
            fixed = self._fixed(*key, errors=errors)
            self._store(key, fixed, sum(map(len, fixed)))
        if start_ns and end_ns:
            times = _TIMES.pack(0x39, start_ns & _U64, 0x41, end_ns & _U64)
        else:  # protobuf leaves a zero out
            times = (b"\x39" + _U64_LE(start_ns & _U64) if start_ns else b"") + (
                b"\x41" + _U64_LE(end_ns & _U64) if end_ns else b""
            )
        # the name and kind (fields 5, 6), the times (7, 8), the attributes (9)
        out = [ids, fixed[0], times, fixed[1]]
        if service is None and rpc_method is None:
            key = (path,)
            if (seg := cache.get(key)) is None:
                seg = _str_attr(_URL_PATH, path.partition("?")[0], errors)
                self._store(key, seg, len(seg))
            out.append(seg)
        out.append(fixed[2])
        if peer:
            key = (peer, None)
            if (seg := cache.get(key)) is None:
                seg = self._peer(peer, errors)
                self._store(key, seg, len(seg))
            out.append(seg)
        out.append(fixed[4] if parent else fixed[3])  # status, flags
        return out

    def _store(self, key: tuple[Any, ...], segment: Any, size: int) -> None:
        if size <= CACHE_SEGMENT_MAX:
            cache = self._cache
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = segment

    @staticmethod
    def _fixed(
        protocol: str | None,
        method: str | None,
        route: str | None,
        service: str | None,
        rpc_method: str | None,
        authority: str | None,
        status: int,
        cluster: str | None,
        host: str | None,
        flags: str | None,
        *,
        errors: str,
    ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """What a span's route-level values make: its name and kind; the attributes before
        the path; those after it up to the peer's; the status and flags without a parent,
        and with one."""
        rpc = service is not None or rpc_method is not None
        if rpc:
            name = f"{service or '-'}/{rpc_method or '-'}"
        else:
            name = f"{method} {route}" if route else method or "request"
        before = [_str_attr(_PROTOCOL, protocol, errors)]
        if rpc:
            before.append(_str_attr(_RPC_SYSTEM, protocol, errors))
            if service:
                before.append(_str_attr(_RPC_SERVICE, service, errors))
            if rpc_method:
                before.append(_str_attr(_RPC_METHOD, rpc_method, errors))
        else:
            before.append(_str_attr(_HTTP_METHOD, method, errors))
        after = []
        if not rpc and authority:
            after.append(_str_attr(_SERVER_ADDRESS, authority, errors))
        if status:
            after.append(_int_attr(_STATUS_CODE, status))
        if route:
            after.append(_str_attr(_ROUTE, route, errors))
        if cluster:
            after.append(_str_attr(_CLUSTER, cluster, errors))
        if host:
            after.append(_str_attr(_HOST, host, errors))
        if flags:
            after.append(_str_attr(_FLAGS, flags, errors))
        error = status >= 500 or not status
        return (
            field(0x2A, name.encode("utf-8", errors)) + _KIND_SERVER,
            b"".join(before),
            b"".join(after),
            _TAIL[error, False],
            _TAIL[error, True],
        )

    @staticmethod
    def _peer(peer: str, errors: str) -> bytes:
        address, _, port = peer.rpartition(":")
        encoded = _str_attr(_PEER_ADDRESS, address.strip("[]"), errors)
        if port.isascii() and port.isdigit():
            encoded += _int_attr(_PEER_PORT, int(port))
        return encoded


__all__ = ["SpanEncoder", "field", "varint"]
