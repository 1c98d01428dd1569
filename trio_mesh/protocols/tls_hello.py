"""A TLS ClientHello read from a connection's first bytes (Envoy's tls_inspector), sans-IO.

The listener reads the first bytes of a connection before it knows which filter chain serves
it: the server name (SNI) and the ALPN offers of the ClientHello pick the chain and, for a TLS
chain, the certificate. ``parse_client_hello(data)`` answers from the bytes read so far:

- ``NEED_MORE``: a TLS handshake that is not complete yet; read more and ask again;
- ``NOT_TLS``: the connection does not start with a TLS handshake record (plaintext);
- a `ClientHello`;
- `HelloError`: a handshake record that is malformed or larger than the budget.

The ClientHello may span several records (RFC 8446 5.1: handshake messages may be fragmented
over records); a peer that keeps sending without finishing it is cut at ``limit`` bytes of
handshake plus the record headers that carried them, or at 64 records (the caller parses
again after each read: thousands of one-byte records would make that quadratic). Nothing
else is ever raised, whatever the bytes (the tests fuzz it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MAX_HELLO_BYTES",
    "NEED_MORE",
    "NOT_TLS",
    "ClientHello",
    "HelloError",
    "HelloStatus",
    "parse_client_hello",
]

#: The largest ClientHello accepted (Envoy's tls_inspector default max is 16 KiB too; real
#: ones are 200 B to 2 KiB, post-quantum key shares included).
MAX_HELLO_BYTES = 16384

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_RECORD_HEADER = 5
_MAX_RECORD = 16384 + 2048  # RFC 8446 5.2: a ciphertext bound; plaintext is 2^14
_MAX_RECORDS = 64
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43


class HelloStatus(enum.Enum):
    NEED_MORE = "need_more"
    NOT_TLS = "not_tls"


NEED_MORE = HelloStatus.NEED_MORE
NOT_TLS = HelloStatus.NOT_TLS


class HelloError(Exception):
    """A TLS handshake record that is malformed, or a ClientHello over the byte budget."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None  # lower-case host name, as the client sent it (no trailing dot removed)
    alpn: tuple[str, ...]  # the offers, in the client's order
    versions: tuple[int, ...]  # supported_versions (0x0304 = TLS 1.3); () when absent
    legacy_version: int  # the ClientHello's version field (0x0303 for TLS 1.2 and 1.3)
    length: int  # bytes of records that carried it (all of ``data`` it used)


def parse_client_hello(data: bytes, *, limit: int = MAX_HELLO_BYTES) -> ClientHello | HelloStatus:
    """The ClientHello at the start of ``data`` (see the module's docstring)."""
    if not data:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    # The record's major version is 3 for SSL 3.0 up to TLS 1.3: anything else is not TLS
    # (a plaintext protocol whose first byte happens to be 0x16).
    if len(data) >= 2 and data[1] != 3:
        return NOT_TLS
    # What a peer may make us buffer: the budget, plus the headers of up to 64 records.
    raw_limit = limit + 4 + _RECORD_HEADER * _MAX_RECORDS
    body = bytearray()
    pos = 0
    need: int | None = None  # the handshake message's full length, once its header is in
    records = 0
    while need is None or len(body) < need:
        if len(data) - pos < _RECORD_HEADER:
            return _more(data, raw_limit)
        if data[pos] != _HANDSHAKE:
            raise HelloError("a non-handshake record before the ClientHello ended")
        if data[pos + 1] != 3:
            raise HelloError("a record that is not TLS in the ClientHello")
        size = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if size == 0 or size > _MAX_RECORD:
            raise HelloError(f"a handshake record of {size} bytes")
        if len(data) - pos - _RECORD_HEADER < size:
            if need is None:  # refuse a message over the budget before waiting for it
                _message_length(body + data[pos + _RECORD_HEADER :], limit)
            return _more(data, raw_limit)
        body += data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + size]
        pos += _RECORD_HEADER + size
        if need is None:
            need = _message_length(body, limit)
        records += 1
        if records >= _MAX_RECORDS and (need is None or len(body) < need):
            # Each read parses again from the start: a hello in thousands of one-byte
            # records would cost seconds of CPU. Real ones take one record, two at most.
            raise HelloError(f"no ClientHello in {_MAX_RECORDS} records")
    if len(body) != need:
        # RFC 8446 5.1: a record that ends the ClientHello must not carry the next message.
        raise HelloError("bytes after the ClientHello in its last record")
    return _parse_body(bytes(body[4:]), pos)


def _message_length(body: bytes | bytearray, limit: int) -> int | None:
    """The handshake message's whole length once its 4-byte header is in."""
    if len(body) < 4:
        return None
    if body[0] != _CLIENT_HELLO:
        raise HelloError(f"handshake message {body[0]} is not a ClientHello")
    size = int.from_bytes(body[1:4], "big")
    if size > limit:
        raise HelloError(f"ClientHello of {size} bytes, over {limit}")
    return 4 + size


def _more(data: bytes, raw_limit: int) -> HelloStatus:
    if len(data) >= raw_limit:
        raise HelloError(f"no complete ClientHello in {len(data)} bytes")
    return NEED_MORE


def _parse_body(b: bytes, length: int) -> ClientHello:
    # Plain indexing, not a reader object per field: this runs once per TLS connection.
    n = len(b)
    if n < 35:
        raise HelloError("ClientHello truncated")
    legacy_version = b[0] << 8 | b[1]
    p = 34  # after the version and the 32-byte random
    if b[p] > 32:
        raise HelloError("session id over 32 bytes")
    p += 1 + b[p]
    if p + 2 > n:
        raise HelloError("ClientHello truncated")
    suites = b[p] << 8 | b[p + 1]
    if suites == 0 or suites % 2:
        raise HelloError("bad cipher suite list")
    p += 2 + suites
    if p + 1 > n:
        raise HelloError("ClientHello truncated")
    if b[p] == 0:
        raise HelloError("no compression method")
    p += 1 + b[p]
    if p > n:
        raise HelloError("ClientHello truncated")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if p < n:  # extensions may be absent altogether (pre-TLS 1.2 clients)
        if p + 2 > n:
            raise HelloError("ClientHello truncated")
        end = p + 2 + (b[p] << 8 | b[p + 1])
        if end > n:
            raise HelloError("ClientHello truncated")
        if end < n:
            raise HelloError("bytes after the extensions")
        p += 2
        seen: set[int] = set()
        while p < end:
            if p + 4 > end:
                raise HelloError("ClientHello truncated")
            kind = b[p] << 8 | b[p + 1]
            size = b[p + 2] << 8 | b[p + 3]
            p += 4
            if p + size > end:
                raise HelloError("ClientHello truncated")
            if kind in seen:
                raise HelloError(f"extension {kind} twice")  # RFC 8446 4.2
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                sni = _server_name(b[p : p + size])
            elif kind == _EXT_ALPN:
                alpn = _alpn(b[p : p + size])
            elif kind == _EXT_SUPPORTED_VERSIONS:
                versions = _versions(b[p : p + size])
            p += size
    return ClientHello(sni, alpn, versions, legacy_version, length)


def _server_name(d: bytes) -> str:
    if len(d) < 2 or (d[0] << 8 | d[1]) != len(d) - 2:
        raise HelloError("bad server_name extension")
    host: str | None = None
    p, n = 2, len(d)
    while p < n:
        if p + 3 > n:
            raise HelloError("bad server_name extension")
        kind, size = d[p], d[p + 1] << 8 | d[p + 2]
        p += 3
        if p + size > n:
            raise HelloError("bad server_name extension")
        name = d[p : p + size]
        p += size
        if kind != 0:
            continue  # only host_name (0) is defined; others are skipped, as OpenSSL does
        if host is not None:
            raise HelloError("two host names in server_name")  # RFC 6066 3
        if not name or not name.isascii() or any(c <= 0x20 or c == 0x7F for c in name):
            raise HelloError("server name is not an ASCII host name")
        host = name.decode("ascii").lower()
    if host is None:
        raise HelloError("server_name without a host name")
    return host


def _alpn(d: bytes) -> tuple[str, ...]:
    if len(d) < 3 or (d[0] << 8 | d[1]) != len(d) - 2:
        raise HelloError("bad ALPN extension")
    out = []
    p, n = 2, len(d)
    while p < n:
        size = d[p]
        p += 1
        if size == 0 or p + size > n:
            raise HelloError("bad ALPN protocol name")
        out.append(d[p : p + size].decode("latin-1"))
        p += size
    return tuple(out)


def _versions(d: bytes) -> tuple[int, ...]:
    if len(d) < 3 or d[0] != len(d) - 1 or d[0] % 2:
        raise HelloError("bad supported_versions extension")
    return tuple(d[i] << 8 | d[i + 1] for i in range(1, len(d), 2))
