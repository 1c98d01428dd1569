"""Protocol detection from a connection's first bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mesh.protocols import detect as detect_module
from trio_mesh.protocols.detect import (
    MAX_DETECT_BYTES,
    Detection,
    UnknownProtocol,
    detect,
    match_http1,
    match_http2,
    register_protocol,
    registered_protocols,
    unregister_protocol,
)
from trio_mesh.protocols.http2 import PREFACE

H2 = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # preface + empty SETTINGS


def feed(stream: bytes, candidates=None) -> tuple[str, int]:
    """Detect byte by byte: (protocol, bytes it took). UnknownProtocol propagates."""
    for n in range(len(stream) + 1):
        name = detect(stream[:n], candidates)
        if name is not None:
            return name, n
    raise AssertionError("still undecided at the end of the stream")


def match_bolt(prefix: bytes) -> Detection:
    if not prefix:
        return Detection.NEED_MORE
    return Detection.MATCH if prefix[0] in (1, 2) else Detection.NO_MATCH


def match_dubbo(prefix: bytes) -> Detection:
    magic = b"\xda\xbb"
    n = min(len(prefix), 2)
    if prefix[:n] != magic[:n]:
        return Detection.NO_MATCH
    return Detection.MATCH if n == 2 else Detection.NEED_MORE


@pytest.fixture
def rpc() -> Iterator[None]:
    """bolt and dubbo registered as their codecs will do; the registry restored afterwards."""
    saved = list(detect_module._registry)
    register_protocol("bolt", match_bolt)
    register_protocol("dubbo", match_dubbo)
    yield
    detect_module._registry[:] = saved


# -- built-ins -----------------------------------------------------------------------------


def test_builtins_are_registered_http2_first():
    assert registered_protocols()[:2] == ["Http2", "Http1"]
    assert MAX_DETECT_BYTES == len(PREFACE) == 24


@pytest.mark.parametrize(
    ("stream", "protocol", "needed"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "Http1", 4),
        (b"POST /x HTTP/1.1\r\n", "Http1", 5),
        (b"OPTIONS * HTTP/1.1\r\n", "Http1", 8),
        (b"M" * 20 + b" / HTTP/1.1\r\n", "Http1", 21),
        (b"PRI /not-h2 HTTP/1.1\r\n", "Http1", 5),  # differs from the preface at byte 5
        (b"PRI * HTTP/1.1\r\n\r\n", "Http1", 12),  # ... or at byte 12
        (H2, "Http2", 24),
    ],
)
def test_byte_at_a_time(stream: bytes, protocol: str, needed: int):
    assert feed(stream) == (protocol, needed)
    assert detect(stream) == protocol


@pytest.mark.parametrize("n", range(24))
def test_any_proper_prefix_of_the_preface_needs_more(n: int):
    assert detect(PREFACE[:n]) is None


@pytest.mark.parametrize(
    "stream",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"get / HTTP/1.1\r\n",  # methods are case-sensitive
        b" GET / HTTP/1.1\r\n",
        b"GE\tT / HTTP/1.1\r\n",
        b"M" * 21 + b" / HTTP/1.1\r\n",  # a 21-letter method
        b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",  # HTTP/2 frames without the preface
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_unknown_protocols_raise(stream: bytes):
    with pytest.raises(UnknownProtocol) as info:
        feed(stream)
    assert info.value.prefix == stream[: len(info.value.prefix)]


def test_matchers_directly():
    assert match_http2(b"") is Detection.NEED_MORE
    assert match_http2(PREFACE + b"more") is Detection.MATCH
    assert match_http2(b"PRI * HTTP/1.1") is Detection.NO_MATCH
    assert match_http1(b"") is Detection.NEED_MORE
    assert match_http1(b"DELETE") is Detection.NEED_MORE
    assert match_http1(b"DELETE ") is Detection.MATCH
    assert match_http1(b"PRI ") is Detection.MATCH  # detect() holds it back for HTTP/2
    assert detect(b"PRI ") is None
    assert detect(b"PRI * HTTP/2.0") is None


# -- candidates and the registry ----------------------------------------------------------


def test_candidates_limit_the_protocols_asked():
    assert detect(b"PRI ", ["Http1"]) == "Http1"  # HTTP/2 not offered: nothing to wait for
    with pytest.raises(UnknownProtocol):
        detect(b"GET ", ["Http2"])
    with pytest.raises(UnknownProtocol):
        detect(b"GET ", [])
    with pytest.raises(ValueError, match="nope"):
        detect(b"GET ", ["Http1", "nope"])


def test_rpc_protocols_join_through_the_registry(rpc):
    assert registered_protocols()[2:] == ["bolt", "dubbo"]
    assert feed(b"\x01\x01\x00\x01") == ("bolt", 1)
    assert feed(b"\x02\x00") == ("bolt", 1)
    assert feed(b"\xda\xbb\xc2\x00") == ("dubbo", 2)
    assert detect(b"\xda") is None
    assert feed(H2) == ("Http2", 24)
    assert feed(b"GET / HTTP/1.1\r\n") == ("Http1", 4)
    with pytest.raises(UnknownProtocol):
        detect(b"\xda\x00")
    assert detect(b"\x01", ["dubbo", "bolt"]) == "bolt"
    with pytest.raises(UnknownProtocol):
        detect(b"\x01", ["dubbo", "Http1"])


def test_priority_and_need_more_hold_back_lower_protocols(rpc):
    def match_bolt_v2(prefix: bytes) -> Detection:  # overlaps bolt, decides at byte 2
        if len(prefix) < 2:
            return Detection.NEED_MORE if prefix in (b"", b"\x02") else Detection.NO_MATCH
        return Detection.MATCH if prefix[:2] == b"\x02\x02" else Detection.NO_MATCH

    register_protocol("boltv2", match_bolt_v2, priority=5)
    assert registered_protocols() == ["Http2", "boltv2", "Http1", "bolt", "dubbo"]
    assert detect(b"\x02") is None  # boltv2 might still match: bolt waits
    assert detect(b"\x02\x02") == "boltv2"
    assert detect(b"\x02\x01") == "bolt"
    assert detect(b"\x01") == "bolt"  # boltv2 already said no
    # equal priorities: registration order
    register_protocol("first-one", lambda p: Detection.MATCH, priority=-1)
    register_protocol("second-one", lambda p: Detection.MATCH, priority=-1)
    assert detect(b"\xff") == "first-one"
    unregister_protocol("first-one")
    assert detect(b"\xff") == "second-one"


def test_registration_rules(rpc):
    with pytest.raises(ValueError):
        register_protocol("bolt", match_dubbo)  # the name is taken
    register_protocol("bolt", match_bolt, priority=20)  # same matcher: priority update
    assert registered_protocols()[0] == "bolt"
    with pytest.raises(ValueError):
        register_protocol("", match_bolt)
    with pytest.raises(KeyError):
        unregister_protocol("never-registered")


def test_a_matcher_that_never_decides_cannot_stall_a_connection(rpc):
    seen = []

    def undecided(prefix: bytes) -> Detection:
        seen.append(len(prefix))
        return Detection.NEED_MORE

    register_protocol("slow", undecided, priority=100)
    assert detect(b"GET / HTTP/1.1\r\nHost: x\r\n") == "Http1"  # 24+ bytes: NEED_MORE is a no
    assert detect(b"GET / HTTP/1.1") is None  # but before that, it holds HTTP/1 back
    assert max(seen) == MAX_DETECT_BYTES  # and it never sees more


# -- properties ----------------------------------------------------------------------------


def _decision(data: bytes) -> str | None:
    try:
        return detect(data)
    except UnknownProtocol:
        return "<unknown>"


_streams = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda m, rest: m + b" " + rest,
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=22).map(str.encode),
        st.binary(max_size=20),
    ),
    st.builds(lambda n, rest: PREFACE[:n] + rest, st.integers(0, 24), st.binary(max_size=20)),
)


@given(_streams)
def test_decisions_are_final_and_never_wait_past_max_bytes(data: bytes):
    final = _decision(data)
    decided_at = None
    for n in range(len(data) + 1):
        got = _decision(data[:n])
        if got is None:
            assert n < MAX_DETECT_BYTES
            assert decided_at is None
        else:
            if decided_at is None:
                decided_at = n
            assert got == final  # once decided, more bytes never change the answer
    assert decided_at is not None or len(data) < MAX_DETECT_BYTES


@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=20), st.binary(max_size=30))
def test_any_method_token_then_space_is_http1_unless_it_is_the_preface(method: str, rest: bytes):
    data = method.encode() + b" " + rest
    if PREFACE.startswith(data[:24]):
        assert detect(data) == ("Http2" if len(data) >= 24 else None)
    else:
        assert detect(data) == "Http1"
