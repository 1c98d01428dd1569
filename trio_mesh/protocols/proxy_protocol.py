"""The PROXY protocol header (HAProxy's, v1 text and v2 binary) read from a connection's
first bytes, sans-IO: Envoy's ``proxy_protocol`` listener filter parses the same.

`parse_proxy_header` is fed everything read so far and answers `NEED_MORE`, `NOT_PROXY`
(the bytes cannot begin a header: a client that sent none) or a `ProxyHeader`, whose
``length`` bytes are the header; the rest belongs to the connection's protocol. A malformed
header raises `ProxyProtocolError`. Every header is bounded: v1 by its 107 bytes, v2 by
`MAX_V2_BYTES` (its length field allows 64 KiB of TLVs; none this proxy reads is that big).
"""

from __future__ import annotations

import ipaddress
from typing import Final

V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line, CRLF included (the specification's bound).
V1_MAX_BYTES: Final = 107
_V2_HEADER = 16
#: The longest v2 header accepted (16 header bytes, addresses and TLVs).
MAX_V2_BYTES: Final = 4096

_V2_LOCAL = 0x0
_V2_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
# Address block sizes by family: source and destination addresses then ports.
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyProtocolError(Exception):
    """A malformed or unsupported PROXY protocol header: the connection is closed."""


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_MORE: Final = _Marker("NEED_MORE")
NOT_PROXY: Final = _Marker("NOT_PROXY")

Addr = tuple[str, int]


class ProxyHeader:
    """A parsed header. ``source``/``destination``: the addresses it carries, or ``None``
    (v1 ``UNKNOWN``, v2 ``LOCAL`` or a family without addresses): the socket's are kept."""

    __slots__ = ("destination", "length", "source", "version")

    def __init__(self, version: int, length: int, source: Addr | None, destination: Addr | None):
        self.version = version
        self.length = length
        self.source = source
        self.destination = destination

    def __repr__(self) -> str:
        return (
            f"ProxyHeader(v{self.version}, length={self.length}, "
            f"source={self.source!r}, destination={self.destination!r})"
        )


def parse_proxy_header(data: bytes | bytearray) -> ProxyHeader | _Marker:
    """See the module's docstring."""
    if not data:
        return NEED_MORE
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    return NOT_PROXY


def _prefix_state(data: bytes | bytearray, prefix: bytes) -> _Marker | None:
    """``None`` when ``data`` starts with ``prefix``; otherwise NEED_MORE or NOT_PROXY."""
    head = bytes(data[: len(prefix)])
    if head == prefix:
        return None
    return NEED_MORE if prefix.startswith(head) else NOT_PROXY


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | _Marker:
    state = _prefix_state(data, V1_PREFIX)
    if state is not None:
        return state
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX_BYTES} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header: a line ending other than CRLF")
        return NEED_MORE
    line = bytes(data[:end])
    length = end + 2
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header: not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, length, None, None)  # the rest of the line is ignored
    if len(parts) != 6:
        raise ProxyProtocolError("v1 header: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    _, proto, src, dst, sport, dport = parts
    if proto == "TCP4":
        version: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif proto == "TCP6":
        version = ipaddress.IPv6Address
    else:
        raise ProxyProtocolError(f"v1 header: unknown protocol {proto[:8]!r}")
    try:
        src_ip, dst_ip = version(src), version(dst)
    except ValueError:
        raise ProxyProtocolError(f"v1 header: not {proto} addresses") from None
    return ProxyHeader(1, length, (str(src_ip), _v1_port(sport)), (str(dst_ip), _v1_port(dport)))


def _v1_port(text: str) -> int:
    # Digits only, no sign, no leading zero (the specification's form).
    leading_zero = len(text) > 1 and text[0] == "0"
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or leading_zero:
        raise ProxyProtocolError(f"v1 header: bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header: port {port} out of range")
    return port


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | _Marker:
    state = _prefix_state(data, V2_SIGNATURE)
    if state is not None:
        return state
    if len(data) < _V2_HEADER:
        return NEED_MORE
    ver_cmd, fam_proto = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"v2 header: version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"v2 header: command {command}")
    body = int.from_bytes(data[14:16], "big")
    length = _V2_HEADER + body
    if length > MAX_V2_BYTES:
        raise ProxyProtocolError(f"v2 header of {length} bytes, over {MAX_V2_BYTES}")
    family, transport = fam_proto >> 4, fam_proto & 0x0F
    if family > _AF_UNIX or transport > 0x2:
        raise ProxyProtocolError(f"v2 header: family/protocol byte {fam_proto:#04x}")
    needed = _ADDRESS_BYTES.get(family, 0)
    if body < needed:
        # Checked before waiting for the rest: a short block is wrong whatever follows.
        raise ProxyProtocolError(f"v2 header: {body} bytes, the addresses take {needed}")
    if len(data) < length:
        return NEED_MORE
    if command == _V2_LOCAL:
        return ProxyHeader(2, length, None, None)  # a health check of the sender's own
    if family in (_AF_UNSPEC, _AF_UNIX):
        return ProxyHeader(2, length, None, None)  # no IP address to carry
    if transport != _STREAM:
        raise ProxyProtocolError("v2 header: not a stream (TCP) connection")
    _check_tlvs(data, _V2_HEADER + needed, length)
    a = _V2_HEADER
    if family == _AF_INET:
        src = str(ipaddress.IPv4Address(bytes(data[a : a + 4])))
        dst = str(ipaddress.IPv4Address(bytes(data[a + 4 : a + 8])))
        ports = a + 8
    else:
        src = str(ipaddress.IPv6Address(bytes(data[a : a + 16])))
        dst = str(ipaddress.IPv6Address(bytes(data[a + 16 : a + 32])))
        ports = a + 32
    sport = int.from_bytes(data[ports : ports + 2], "big")
    dport = int.from_bytes(data[ports + 2 : ports + 4], "big")
    return ProxyHeader(2, length, (src, sport), (dst, dport))


def _check_tlvs(data: bytes | bytearray, start: int, end: int) -> None:
    """The TLVs after the addresses are skipped, but each must fit in the header."""
    i = start
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError("v2 header: truncated TLV")
        size = int.from_bytes(data[i + 1 : i + 3], "big")
        i += 3 + size
        if i > end:
            raise ProxyProtocolError("v2 header: a TLV runs past the header")
