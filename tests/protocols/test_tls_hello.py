"""The ClientHello parser against real ClientHellos (OpenSSL's, through ssl.MemoryBIO) and
fuzzed bytes."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mesh.protocols.tls_hello import (
    MAX_HELLO_BYTES,
    NEED_MORE,
    NOT_TLS,
    ClientHello,
    HelloError,
    parse_client_hello,
)


def client_hello(
    sni: str | None,
    alpn: list[str] | None = None,
    *,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> bytes:
    """The bytes OpenSSL sends first as a client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def reframe(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake message over several records of the given payload sizes."""
    assert hello[0] == 0x16
    body = hello[5:]
    out = bytearray()
    pos = 0
    for size in sizes:
        if pos >= len(body):
            break
        chunk = body[pos : pos + size]
        out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
        pos += len(chunk)
    if pos < len(body):
        chunk = body[pos:]
        out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
    return bytes(out)


label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
hostnames = (
    st.lists(label, min_size=2, max_size=5)
    .map(".".join)
    .filter(
        lambda h: not h.replace(".", "").isdigit()  # ssl sends no SNI for an IP address
    )
)
alpn_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sni=st.none() | hostnames,
    alpn=st.lists(alpn_names, max_size=4, unique=True),
    tls13=st.booleans(),
)
def test_real_client_hellos(sni: str | None, alpn: list[str], tls13: bool) -> None:
    maximum = ssl.TLSVersion.TLSv1_3 if tls13 else ssl.TLSVersion.TLSv1_2
    data = client_hello(sni, alpn, maximum=maximum)
    hello = parse_client_hello(data)
    assert isinstance(hello, ClientHello)
    assert hello.sni == (sni.lower() if sni else None)
    assert hello.alpn == tuple(alpn)
    assert hello.legacy_version == 0x0303
    assert hello.length == len(data)
    if tls13:
        assert 0x0304 in hello.versions
    else:
        assert 0x0304 not in hello.versions
    # Every strict prefix is "read more", never an answer or an error.
    for cut in (0, 1, 2, 4, 5, 6, 9, len(data) // 2, len(data) - 1):
        assert parse_client_hello(data[:cut]) is NEED_MORE
    # What follows the ClientHello (a client that does not wait) is left alone.
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x01x") == hello


@settings(max_examples=60, deadline=None)
@given(sni=hostnames, sizes=st.lists(st.integers(1, 300), min_size=1, max_size=30))
def test_client_hello_over_several_records(sni: str, sizes: list[int]) -> None:
    data = reframe(client_hello(sni, ["h2", "http/1.1"]), sizes)
    hello = parse_client_hello(data)
    assert isinstance(hello, ClientHello)
    assert hello.sni == sni
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.length == len(data)
    for cut in range(0, len(data), max(1, len(data) // 40)):
        assert parse_client_hello(data[:cut]) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n",
        b"\x01\x01\x00",  # bolt
        b"\xda\xbb",  # dubbo
        b"\x16\x01\x00",  # 0x16 but not a TLS record (major version 1)
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert first
    ],
)
def test_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) is NOT_TLS


def test_sslv2_style_hello_is_not_tls() -> None:
    assert parse_client_hello(b"\x80\x2e\x01\x03\x01") is NOT_TLS


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\x16\x03\x01\x00\x00", "0 bytes"),  # an empty record
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),  # ServerHello
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "truncated"),  # empty body
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x00" + b"\x17" * 10, "over"),  # 64 KiB claimed
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(HelloError, match=reason):
        parse_client_hello(data)


def test_a_non_handshake_record_inside_the_hello() -> None:
    data = reframe(client_hello("x.example.test"), [50])
    second = 5 + 50
    broken = data[:second] + b"\x17" + data[second + 1 :]
    with pytest.raises(HelloError, match="non-handshake"):
        parse_client_hello(broken)


def test_trailing_bytes_in_the_last_record() -> None:
    data = client_hello("x.example.test")
    length = int.from_bytes(data[3:5], "big") + 1
    broken = data[:3] + length.to_bytes(2, "big") + data[5:] + b"\x00"
    with pytest.raises(HelloError, match="after the ClientHello"):
        parse_client_hello(broken)


def test_the_byte_budget() -> None:
    """A peer that trickles a ClientHello longer than the budget is cut, both ways."""
    hello = client_hello("x.example.test")
    huge = b"\x16\x03\x01\x40\x00\x01\x00\x50\x00" + b"\x00" * 100
    with pytest.raises(HelloError, match="over"):
        parse_client_hello(huge)
    # Many tiny records that never finish: cut once the raw bytes pass the budget.
    tiny = b"\x16\x03\x01\x00\x01\x01" + b"\x16\x03\x01\x00\x01\x00" * 20000
    with pytest.raises(HelloError):
        parse_client_hello(tiny)
    # A smaller budget refuses a real hello that fits the default one.
    assert isinstance(parse_client_hello(hello), ClientHello)
    with pytest.raises(HelloError):
        parse_client_hello(hello, limit=100)
    assert MAX_HELLO_BYTES >= 16384


def test_duplicate_extension_and_two_host_names() -> None:
    hello = client_hello("dup.example.test")
    parsed = parse_client_hello(hello)
    assert isinstance(parsed, ClientHello)
    # Rebuild the message with the server_name extension twice.
    sni_ext = _extension(0, _sni_payload([b"dup.example.test"]))
    with pytest.raises(HelloError, match="twice"):
        parse_client_hello(_hello_with_extensions([sni_ext, sni_ext]))
    two = _extension(0, _sni_payload([b"a.test", b"b.test"]))
    with pytest.raises(HelloError, match="two host names"):
        parse_client_hello(_hello_with_extensions([two]))
    bad = _extension(0, _sni_payload([b"a b.test"]))
    with pytest.raises(HelloError, match="ASCII"):
        parse_client_hello(_hello_with_extensions([bad]))
    upper = _extension(0, _sni_payload([b"API.Example.TEST"]))
    got = parse_client_hello(_hello_with_extensions([upper]))
    assert isinstance(got, ClientHello) and got.sni == "api.example.test"


def test_hello_without_extensions() -> None:
    got = parse_client_hello(_hello_with_extensions(None))
    assert isinstance(got, ClientHello)
    assert (got.sni, got.alpn, got.versions) == (None, (), ())


def _extension(kind: int, payload: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


def _sni_payload(names: list[bytes]) -> bytes:
    entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n for n in names)
    return len(entries).to_bytes(2, "big") + entries


def _hello_with_extensions(exts: list[bytes] | None) -> bytes:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if exts is not None:
        joined = b"".join(exts)
        body += len(joined).to_bytes(2, "big") + joined
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzzed_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        parse_client_hello(data)
    except HelloError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03"]),
    st.binary(min_size=2, max_size=400),
)
def test_fuzzed_records_never_raise_anything_else(head: bytes, rest: bytes) -> None:
    try:
        parse_client_hello(head + rest)
    except HelloError:
        pass


_REAL = client_hello("fuzz.example.test", ["h2", "http/1.1"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_REAL) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_real_hellos_never_raise_anything_else(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_REAL)
    for pos, value in edits:
        data[pos] = value
    try:
        got = parse_client_hello(bytes(data))
    except HelloError:
        return
    assert got in (NEED_MORE, NOT_TLS) or isinstance(got, ClientHello)
