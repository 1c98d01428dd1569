"""The PROXY protocol header parser: v1 and v2, every prefix of a header waits for more,
malformed and oversized headers raise, and arbitrary bytes never do anything else."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mesh.protocols.proxy_protocol import (
    MAX_V2_BYTES,
    NEED_MORE,
    NOT_PROXY,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)


def v2(
    src: str = "203.0.113.7",
    dst: str = "10.0.0.1",
    sport: int = 40000,
    dport: int = 443,
    *,
    command: int = 1,
    tlvs: bytes = b"",
    version: int = 2,
    fam_proto: int | None = None,
    length: int | None = None,
) -> bytes:
    """A v2 header (``length``: a false length field)."""
    ip = ipaddress.ip_address(src)
    if fam_proto is None:
        fam_proto = 0x11 if ip.version == 4 else 0x21
    addrs = (
        ip.packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
        if fam_proto >> 4 in (1, 2)
        else b""
    )
    body = addrs + tlvs
    size = len(body) if length is None else length
    head = V2_SIGNATURE + bytes([version << 4 | command, fam_proto])
    return head + struct.pack("!H", size) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def parsed(data: bytes) -> ProxyHeader:
    header = parse_proxy_header(data)
    assert isinstance(header, ProxyHeader), header
    return header


# --------------------------------------------------------------------------- v1


def test_v1_tcp4_carries_both_addresses_and_its_length():
    data = b"PROXY TCP4 192.0.2.9 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n"
    header = parsed(data)
    assert header.version == 1
    assert header.source == ("192.0.2.9", 56324)
    assert header.destination == ("10.0.0.1", 443)
    assert data[header.length :] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_addresses_are_normalized():
    header = parsed(b"PROXY TCP6 2001:DB8::0:1 ::1 1 65535\r\n")
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == ("::1", 65535)


def test_v1_unknown_keeps_the_socket_addresses():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        header = parsed(line + b"rest")
        assert header.source is None and header.destination is None
        assert header.length == len(line)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF only
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::2 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 300.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # a non-ASCII digit
        b"PROXY \r\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2",
    ],
)
def test_v1_malformed_raises(line):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_without_crlf_in_107_bytes_raises_and_waits_before():
    line = b"PROXY UNKNOWN " + b"a" * (V1_MAX_BYTES - 14)
    assert len(line) == V1_MAX_BYTES
    assert parse_proxy_header(line[:-1]) is NEED_MORE
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        parse_proxy_header(line)


def test_the_longest_v1_line_is_accepted():
    src = dst = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {src} {dst} 65535 65535\r\n".encode()
    assert len(line) == 104  # the specification's worst case, within 107
    assert parsed(line).source == (src, 65535)


# --------------------------------------------------------------------------- v2


def test_v2_ipv4_with_tlvs_skipped():
    data = v2(tlvs=tlv(0x01, b"h2") + tlv(0x04, b"")) + b"\x16\x03\x01"
    header = parsed(data)
    assert header.version == 2
    assert header.source == ("203.0.113.7", 40000)
    assert header.destination == ("10.0.0.1", 443)
    assert data[header.length :] == b"\x16\x03\x01"


def test_v2_ipv6():
    header = parsed(v2("2001:db8::7", "2001:db8::1", 1, 2))
    assert header.source == ("2001:db8::7", 1)
    assert header.destination == ("2001:db8::1", 2)


def test_v2_local_keeps_the_socket_addresses():
    header = parsed(v2(command=0))
    assert header.source is None and header.length == 16 + 12


def test_v2_unspec_and_unix_families_keep_the_socket_addresses():
    assert parsed(v2(fam_proto=0x00)).source is None
    unix = V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + b"\x00" * 216
    assert parsed(unix).source is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(version=1), "version"),
        (v2(command=2), "command"),
        (v2(fam_proto=0x41), "family"),
        (v2(fam_proto=0x13), "family"),
        (v2(fam_proto=0x12), "stream"),  # UDP
        (v2(length=11), "addresses take 12"),
        (v2(length=MAX_V2_BYTES), "over"),
        (v2(tlvs=b"\x01\x00"), "truncated TLV"),
        (v2(tlvs=b"\x01\x00\x05abc"), "past the header"),
    ],
)
def test_v2_malformed_raises(data, match):
    with pytest.raises(ProxyProtocolError, match=match):
        parse_proxy_header(data)


def test_v2_oversized_length_raises_before_the_body_arrives():
    # A length field of 64 KiB is refused from the 16 header bytes alone: nothing buffered.
    with pytest.raises(ProxyProtocolError, match="over"):
        parse_proxy_header(V2_SIGNATURE + b"\x21\x11\xff\xff")


def test_the_largest_v2_header_is_accepted():
    pad = MAX_V2_BYTES - 16 - 12 - 3
    header = parsed(v2(tlvs=tlv(0xEE, b"x" * pad)))
    assert header.length == MAX_V2_BYTES


# --------------------------------------------------------------------------- no header


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"PRI * HTTP/2.0", b"PROXX", b"\r\n\r\n\x01"]
)
def test_other_protocols_are_not_proxy(data):
    assert parse_proxy_header(data) is NOT_PROXY


# --------------------------------------------------------------------------- properties


headers = st.one_of(
    st.builds(
        lambda a, b, p, q: f"PROXY TCP4 {a} {b} {p} {q}\r\n".encode(),
        st.ip_addresses(v=4),
        st.ip_addresses(v=4),
        st.integers(0, 65535),
        st.integers(0, 65535),
    ),
    st.builds(
        lambda a, b, p, q, t: v2(str(a), str(b), p, q, tlvs=t),
        st.ip_addresses(v=6),
        st.ip_addresses(v=6),
        st.integers(0, 65535),
        st.integers(0, 65535),
        st.lists(st.binary(max_size=40), max_size=4).map(
            lambda vs: b"".join(tlv(0xE0, v) for v in vs)
        ),
    ),
)


@given(headers, st.binary(max_size=50))
def test_every_prefix_waits_and_the_whole_parses(header, rest):
    for i in range(1, len(header)):
        assert parse_proxy_header(header[:i]) is NEED_MORE
    got = parsed(header + rest)
    assert got.length == len(header)
    assert got.source is not None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_have_a_defined_outcome(data):
    try:
        out = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    assert out is NEED_MORE or out is NOT_PROXY or isinstance(out, ProxyHeader)
    if isinstance(out, ProxyHeader):
        assert out.length <= len(data)
    elif out is NEED_MORE:
        assert len(data) < MAX_V2_BYTES


@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_bytes_after_a_signature_never_escape(tail):
    for prefix in (b"PROXY ", V2_SIGNATURE):
        try:
            out = parse_proxy_header(prefix + tail)
        except ProxyProtocolError:
            continue
        assert out is not NOT_PROXY
