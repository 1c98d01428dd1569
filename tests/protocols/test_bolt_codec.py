"""The SOFA bolt codec on real frames captured from anthunder (tests/bolt_frames.py), checked
against anthunder's own decoder and, live, against anthunder's client and listener; plus
hypothesis fuzzing of the decoder."""

from __future__ import annotations

import importlib.util
import socket
import struct
import threading
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import bolt_frames as frames
from tests.anthunder_peers import anthunder_listener as start_anthunder_listener
from trio_mesh.protocols.xprotocol import (
    ErrorKind,
    FrameKind,
    FrameTooLarge,
    Match,
    XProtocolError,
)
from trio_mesh.protocols.xprotocol.bolt import (
    BOLT,
    CODEC_PROTOBUF,
    BoltFrame,
    ResponseStatus,
    encode_header_map,
)

ALL_FRAMES = [
    frames.CLIENT_REQUEST,
    frames.CLIENT_ONEWAY,
    frames.CLIENT_HEARTBEAT,
    frames.SERVER_RESPONSE,
    frames.SERVER_HEARTBEAT_REPLY,
    frames.SERVER_NO_PROCESSOR,
]


def rid(raw: bytes) -> int:
    return struct.unpack(">I", raw[5:9])[0]


def decode_one(raw: bytes, **kw) -> BoltFrame:
    result = BOLT.decode(raw, **kw)
    assert result is not None
    frame, used = result
    assert used == len(raw)
    return frame


# -- decoding the captured frames ----------------------------------------------------------


def test_request():
    f = decode_one(frames.CLIENT_REQUEST)
    assert f.kind is FrameKind.REQUEST
    assert f.is_request and not f.is_oneway and not f.is_response and not f.is_heartbeat
    assert f.request_id == rid(frames.CLIENT_REQUEST)
    assert f.version == 1 and f.cmdcode == 1 and f.codec == CODEC_PROTOBUF
    assert f.timeout == 3.0 and f.timeout_ms == 3000
    assert f.status is None
    assert f.class_name == "com.alipay.sofa.rpc.core.request.SofaRequest"
    assert bytes(f.content) == b"\n\x05hello"
    assert f.service == frames.SERVICE
    assert f.method == "sayHello"
    h = f.headers
    assert h["service"] == frames.SERVICE
    assert h["method"] == "sayHello"
    assert h["sofa_head_target_service"] == frames.SERVICE
    assert h["sofa_head_method_name"] == "sayHello"
    assert h["sofa_head_target_app"] == ""
    assert h["rpc_trace_context.sofaRpcId"] == "1"
    assert "method" not in f.raw_headers
    with pytest.raises(TypeError):
        h["service"] = "other"  # type: ignore[index]


def test_oneway():
    f = decode_one(frames.CLIENT_ONEWAY)
    assert f.kind is FrameKind.ONEWAY
    assert f.is_request and f.is_oneway and not f.is_response
    assert f.timeout is None and f.timeout_ms == -1
    assert f.method == "notify" and f.service == frames.SERVICE
    assert bytes(f.content) == b"\n\x04ping"


def test_heartbeat_request():
    f = decode_one(frames.CLIENT_HEARTBEAT)
    assert f.is_heartbeat and f.is_request and not f.is_oneway
    assert f.cmdcode == 0 and f.timeout is None
    assert f.class_name == "" and dict(f.headers) == {} and f.service == ""


def test_responses():
    f = decode_one(frames.SERVER_RESPONSE)
    assert f.is_response and not f.is_request and not f.is_heartbeat
    assert f.request_id == rid(frames.CLIENT_REQUEST)
    assert f.status == ResponseStatus.SUCCESS and BOLT.is_success(f)
    assert f.timeout is None
    assert f.class_name == "com.alipay.sofa.rpc.core.response.SofaResponse"
    assert bytes(f.content) == b"\n\x05world"
    assert dict(f.headers) == {}

    hb = decode_one(frames.SERVER_HEARTBEAT_REPLY)
    assert hb.is_response and hb.is_heartbeat and hb.status == 0
    assert hb.request_id == rid(frames.CLIENT_HEARTBEAT)

    err = decode_one(frames.SERVER_NO_PROCESSOR)
    assert err.status == ResponseStatus.NO_PROCESSOR and not BOLT.is_success(err)


@pytest.mark.parametrize("raw", ALL_FRAMES)
def test_every_prefix_needs_more(raw):
    for n in range(len(raw)):
        assert BOLT.decode(raw[:n]) is None
    assert BOLT.decode(raw)[1] == len(raw)


def test_stream_of_frames_any_buffer_type():
    stream = b"".join(ALL_FRAMES)
    for buf in (stream, bytearray(stream), memoryview(stream)):
        offset, seen = 0, []
        while offset < len(buf):
            result = BOLT.decode(buf[offset:])
            assert result is not None
            frame, used = result
            seen.append(bytes(BOLT.encode(frame)))
            offset += used
        assert seen == ALL_FRAMES


def test_frame_owns_its_bytes():
    buf = bytearray(frames.CLIENT_REQUEST + frames.CLIENT_ONEWAY)
    frame, used = BOLT.decode(buf)
    del buf[:used]  # the proxy reuses its receive buffer
    buf[:] = b"\x00" * len(buf)
    assert BOLT.encode(frame) == frames.CLIENT_REQUEST
    assert frame.method == "sayHello"


# -- size limit ------------------------------------------------------------------------------


def test_size_limit_raises_before_the_body_is_buffered():
    raw = frames.CLIENT_REQUEST
    assert BOLT.decode(raw, max_frame_size=len(raw)) is not None
    with pytest.raises(FrameTooLarge) as info:
        BOLT.decode(raw[:22], max_frame_size=len(raw) - 1)  # only the fixed header so far
    assert info.value.size == len(raw) and info.value.limit == len(raw) - 1
    assert isinstance(info.value, XProtocolError) and info.value.protocol == "bolt"


def test_huge_declared_frame():
    # a response header declaring a 4 GiB content: refused from its 20 header bytes
    head = struct.pack(">BBHBIBHHHI", 1, 0, 2, 1, 7, 1, 0, 0, 0, 0xFFFFFFFF)
    with pytest.raises(FrameTooLarge):
        BOLT.decode(head)


# -- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ALL_FRAMES)
def test_set_request_id_rewrites_only_the_id(raw):
    f = decode_one(raw)
    out = BOLT.set_request_id(f, 0xDEADBEEF)
    assert out is f.data and BOLT.encode(f) is out
    assert f.request_id == 0xDEADBEEF == BOLT.get_request_id(f)
    assert out[:5] == raw[:5] and out[9:] == raw[9:] and out[5:9] == b"\xde\xad\xbe\xef"
    again = decode_one(bytes(out))
    assert again.request_id == 0xDEADBEEF
    assert dict(again.headers) == dict(decode_one(raw).headers)
    BOLT.set_request_id(f, rid(raw))
    assert f.data == raw


def test_set_request_id_range():
    f = decode_one(frames.CLIENT_REQUEST)
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            BOLT.set_request_id(f, bad)
    BOLT.set_request_id(f, 0)
    BOLT.set_request_id(f, 2**32 - 1)
    assert BOLT.request_id_bits == 32


# -- heartbeats and error replies ----------------------------------------------------------


def test_heartbeat_reply_is_what_anthunder_sends():
    reply = BOLT.heartbeat_reply(decode_one(frames.CLIENT_HEARTBEAT))
    assert bytes(BOLT.encode(reply)) == frames.SERVER_HEARTBEAT_REPLY
    with pytest.raises(ValueError):
        BOLT.heartbeat_reply(decode_one(frames.CLIENT_REQUEST))


def test_build_heartbeat_request():
    hb = BOLT.heartbeat_request(42)
    assert hb.is_heartbeat and hb.is_request and hb.request_id == 42
    assert hb.cmdcode == 0 and hb.class_name == "" and len(hb.data) == 22
    assert hb.timeout is None  # -1 as MOSN and SOFA bolt send it
    reply = BOLT.heartbeat_reply(hb)
    assert reply.is_heartbeat and reply.is_response and reply.request_id == 42


EXPECTED_STATUS = {
    ErrorKind.NO_ROUTE: ResponseStatus.NO_PROCESSOR,
    ErrorKind.NO_HEALTHY_HOST: ResponseStatus.NO_PROCESSOR,
    ErrorKind.UPSTREAM_FAILURE: ResponseStatus.NO_PROCESSOR,
    ErrorKind.UPSTREAM_RESET: ResponseStatus.NO_PROCESSOR,
    ErrorKind.TIMEOUT: ResponseStatus.TIMEOUT,
    ErrorKind.OVERFLOW: ResponseStatus.SERVER_THREADPOOL_BUSY,
    ErrorKind.CODEC_ERROR: ResponseStatus.CODEC_EXCEPTION,
    ErrorKind.INTERNAL: ResponseStatus.UNKNOWN,
}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_reply(kind):
    req = decode_one(frames.CLIENT_REQUEST)
    reply = BOLT.error_reply(req, kind, "ignored")
    assert reply.is_response and not reply.is_heartbeat
    assert reply.request_id == req.request_id
    assert reply.status == EXPECTED_STATUS[kind] == BOLT.status_for(kind)
    assert reply.codec == req.codec
    assert not BOLT.is_success(reply)
    again = decode_one(bytes(BOLT.encode(reply)))
    assert again.status == reply.status


def test_error_reply_needs_a_request():
    with pytest.raises(ValueError):
        BOLT.error_reply(decode_one(frames.SERVER_RESPONSE), ErrorKind.TIMEOUT)


def test_error_reply_matches_anthunders_fail_response_header():
    # anthunder's NO_PROCESSOR reply to a request; ours to the same id differs only in the
    # class name it carries (MOSN's hijack replies carry none)
    theirs = decode_one(frames.SERVER_NO_PROCESSOR)
    req = BOLT.build_request(theirs.request_id, codec=theirs.codec)
    ours = BOLT.error_reply(req, ErrorKind.NO_ROUTE)
    assert bytes(ours.data[:12]) == frames.SERVER_NO_PROCESSOR[:12]


# -- building frames, bolt v2 --------------------------------------------------------------


def test_build_request_matches_anthunder_bytes():
    f = decode_one(frames.CLIENT_REQUEST)
    rebuilt = BOLT.build_request(
        f.request_id, f.raw_headers, bytes(f.content), codec=f.codec, timeout_ms=f.timeout_ms
    )
    assert bytes(rebuilt.data) == frames.CLIENT_REQUEST
    oneway = decode_one(frames.CLIENT_ONEWAY)
    rebuilt = BOLT.build_request(
        oneway.request_id,
        oneway.raw_headers,
        bytes(oneway.content),
        codec=oneway.codec,
        oneway=True,
    )
    assert bytes(rebuilt.data) == frames.CLIENT_ONEWAY


def test_absent_header_entries_are_left_out():
    absent = b"\xff\xff\xff\xff"
    hmap = (
        encode_header_map({"a": "1"})
        + absent
        + b"\x00\x00\x00\x01x"
        + (b"\x00\x00\x00\x01y" + absent)
    )
    head = struct.pack(">BBHBIBiHHI", 1, 1, 1, 1, 9, 1, 0, 0, len(hmap), 0)
    f = decode_one(head + hmap)
    assert dict(f.headers) == {"a": "1"}


@pytest.mark.parametrize("crc", [False, True])
def test_bolt_v2(crc):
    src = decode_one(frames.CLIENT_REQUEST)
    ver1, switch = (2, 1) if crc else (1, 0)
    req = BOLT.build_request(
        5, src.raw_headers, b"body", version=2, ver1=ver1, switch=switch, timeout_ms=1500
    )
    raw = bytes(req.data)
    assert raw[0] == 2 and raw[1] == ver1 and raw[11] == switch
    assert len(raw) == 24 + 44 + len(encode_header_map(src.raw_headers)) + 4 + (4 if crc else 0)
    assert BOLT.match(raw) is Match.YES
    f = decode_one(raw)
    assert f.version == 2 and f.crc is crc and f.request_id == 5 and f.timeout == 1.5
    assert f.service == frames.SERVICE and f.method == "sayHello" and bytes(f.content) == b"body"
    for n in range(len(raw)):
        assert BOLT.decode(raw[:n]) is None
    BOLT.set_request_id(f, 77)
    assert struct.unpack(">I", f.data[6:10])[0] == 77
    assert decode_one(bytes(f.data)).request_id == 77  # CRC recomputed
    reply = BOLT.error_reply(f, ErrorKind.TIMEOUT)
    assert reply.version == 2 and reply.ver1 == ver1 and len(reply.data) == 22 + (4 if crc else 0)
    assert decode_one(bytes(reply.data)).status == ResponseStatus.TIMEOUT
    hb = BOLT.heartbeat_reply(BOLT.build_request(8, cmdcode=0, class_name="", version=2))
    assert hb.version == 2 and hb.is_heartbeat
    if crc:
        bad = bytearray(raw)
        bad[-1] ^= 0xFF
        with pytest.raises(XProtocolError, match="CRC"):
            BOLT.decode(bytes(bad))


# -- matching and malformed input ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", Match.NEED_MORE),
        (b"\x01", Match.NEED_MORE),
        (b"\x01\x01", Match.YES),
        (b"\x01\x00", Match.YES),
        (b"\x01\x02", Match.YES),
        (b"\x01\x07", Match.NO),
        (b"\x02", Match.NEED_MORE),
        (b"\x02\x01", Match.NEED_MORE),
        (b"\x02\x01\x01", Match.YES),
        (b"\x02\x09", Match.NO),
        (b"GET / HTTP/1.1", Match.NO),
        (b"\xda\xbb", Match.NO),
        (frames.CLIENT_REQUEST, Match.YES),
    ],
)
def test_match(data, expected):
    assert BOLT.match(data) is expected


def _request(cmd=1, ptype=1, hmap=b"", cls=b""):
    return struct.pack(">BBHBIBiHHI", 1, ptype, cmd, 1, 1, 1, 0, len(cls), len(hmap), 0) + (
        cls + hmap
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"\x03" + bytes(30),  # unknown protocol code
        b"G",
        b"\x01\x05" + bytes(30),  # unknown type
        _request(cmd=2),  # a request with the response command code
        _request(cmd=101),  # control codes other than GoAway (100): not supported
        struct.pack(">BBHBIBHHHI", 1, 0, 1, 1, 1, 1, 0, 0, 0, 0),  # response with cmdcode 1
        _request(hmap=b"\x00\x00\x00"),  # truncated key length
        _request(hmap=b"\x00\x00\x00\x05ab"),  # key longer than the map
        _request(hmap=b"\x00\x00\x00\x01a"),  # key without value
        _request(hmap=b"\x00\x00\x00\x01a\x00\x00\x00\x09b"),  # value longer than the map
        _request(hmap=b"\x00\x00\x00\x01\xff\x00\x00\x00\x00"),  # not UTF-8
    ],
)
def test_malformed(raw):
    with pytest.raises(XProtocolError):
        BOLT.decode(raw)


# -- fuzzing ---------------------------------------------------------------------------------


def _exercise(data: bytes, limit: int) -> None:
    """Decode ``data`` as a stream; only XProtocolError may escape, and every frame stays
    within ``limit``."""
    offset = 0
    for _ in range(len(data) + 1):  # each frame consumes at least 20 bytes
        try:
            result = BOLT.decode(data[offset:], max_frame_size=limit)
        except XProtocolError:
            return
        if result is None:
            return
        frame, used = result
        assert 20 <= used <= min(limit, len(data) - offset)
        assert len(frame.data) == used
        offset += used
        try:
            frame.headers  # noqa: B018  (lazy for responses)
        except XProtocolError:
            pass
        frame.class_name  # noqa: B018
        bytes(frame.content)
        BOLT.set_request_id(frame, 123)
        if frame.is_request:
            if frame.is_heartbeat:
                BOLT.heartbeat_reply(frame)
            BOLT.error_reply(frame, ErrorKind.TIMEOUT)
    raise AssertionError("decode did not advance")


def _mutate(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for kind, pos, value in edits:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] = value
        elif kind == 1:
            b.insert(pos, value)
        elif kind == 2:
            del b[pos]
        else:
            del b[pos:]
    return bytes(b)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=1024))
def test_fuzz_random_bytes(data, limit):
    _exercise(data, limit)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_after_magic(tail):
    for head in (b"\x01\x00", b"\x01\x01", b"\x01\x02", b"\x02\x01\x00", b"\x02\x02\x01"):
        _exercise(head + tail, 4096)


@FUZZ
@given(
    st.sampled_from(ALL_FRAMES),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(min_value=0, max_value=1024),
)
def test_fuzz_mutated_real_frames(raw, edits, limit):
    _exercise(_mutate(raw, edits), limit)


@FUZZ
@given(
    st.lists(st.sampled_from(ALL_FRAMES), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_fuzz_mutated_streams(parts, edits):
    _exercise(_mutate(b"".join(parts), edits), 1 << 20)


@FUZZ
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_fuzz_header_map_roundtrip_and_crc(key, value):
    k = key.decode("utf-8", "replace")
    v = value.decode("utf-8", "replace")
    req = BOLT.build_request(1, {k: v}, version=2, ver1=2, switch=1)
    f = decode_one(bytes(req.data))
    assert f.raw_headers == {k: v}
    (crc,) = struct.unpack(">I", f.data[-4:])
    assert crc == zlib.crc32(bytes(f.data[:-4]))


# -- anthunder's own decoder and live peers ------------------------------------------------

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)


def _anthunder_response(raw: bytes):
    from anthunder.protocol import BoltResponse

    head = BoltResponse.bolt_header_from_stream(raw)
    return BoltResponse.bolt_content_from_stream(raw[BoltResponse.bolt_header_size() :], head)


def _anthunder_request(raw: bytes):
    from anthunder.protocol import BoltRequest

    head = BoltRequest.bolt_header_from_stream(raw)
    return BoltRequest.bolt_content_from_stream(raw[BoltRequest.bolt_header_size() :], head)


@needs_anthunder
@pytest.mark.parametrize("kind", list(ErrorKind))
def test_anthunder_decodes_our_error_replies(kind):
    req = decode_one(frames.CLIENT_REQUEST)
    pkg = _anthunder_response(bytes(BOLT.error_reply(req, kind).data))
    assert pkg.respstatus == EXPECTED_STATUS[kind]
    assert pkg.request_id == req.request_id
    assert pkg.cmdcode == 2 and pkg.ptype == 0


@needs_anthunder
def test_anthunder_decodes_our_heartbeats_and_rewritten_frames():
    hb = _anthunder_request(bytes(BOLT.heartbeat_request(1234).data))
    assert hb.cmdcode == 0 and hb.ptype == 1 and hb.request_id == 1234
    reply = _anthunder_response(bytes(BOLT.heartbeat_reply(BOLT.heartbeat_request(9)).data))
    assert reply.cmdcode == 0 and reply.request_id == 9 and reply.respstatus == 0

    req = decode_one(frames.CLIENT_REQUEST)
    BOLT.set_request_id(req, 0x12345)
    pkg = _anthunder_request(bytes(req.data))
    assert pkg.request_id == 0x12345
    assert pkg.header["sofa_head_method_name"] == "sayHello" and pkg.content == b"\n\x05hello"
    resp = decode_one(frames.SERVER_RESPONSE)
    BOLT.set_request_id(resp, 0x80000001)  # anthunder reads ids as signed
    assert _anthunder_response(bytes(resp.data)).request_id & 0xFFFFFFFF == 0x80000001


def _read_frame(sock: socket.socket) -> BoltFrame:
    buf = b""
    while True:
        result = BOLT.decode(buf)
        if result is not None:
            return result[0]
        chunk = sock.recv(65536)
        assert chunk, "peer closed"
        buf += chunk


@pytest.fixture(scope="module")
def anthunder_listener():
    with start_anthunder_listener() as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        yield sock
        sock.close()


@needs_anthunder
def test_live_anthunder_listener(anthunder_listener):
    sock = anthunder_listener
    req = decode_one(frames.CLIENT_REQUEST)
    for new_id in (7, 0x7FFFFFF0, 0x80000005):
        sock.sendall(BOLT.set_request_id(req, new_id))
        resp = _read_frame(sock)
        assert resp.is_response and resp.request_id == new_id
        assert resp.status == 0 and bytes(resp.content) == b"\n\x05world:\n\x05hello"
    sock.sendall(BOLT.heartbeat_request(99).data)
    hb = _read_frame(sock)
    assert hb.is_heartbeat and hb.is_response and hb.request_id == 99 and hb.status == 0
    missing = BOLT.build_request(
        5, {"service": "no.such.Service", "sofa_head_method_name": "x"}, b"", codec=11
    )
    sock.sendall(missing.data)
    err = _read_frame(sock)
    assert err.request_id == 5 and err.status == ResponseStatus.NO_PROCESSOR


@needs_anthunder
def test_live_anthunder_client_gets_our_error_reply():
    from anthunder import SERVICE_MAP, Client
    from anthunder.exceptions import ServerError
    from mytracer import SpanContext

    service = "com.alipay.test.ErrorService:1.0"
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    seen = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            frame = _read_frame(conn)
            seen.append(frame)
            conn.sendall(BOLT.error_reply(frame, ErrorKind.TIMEOUT).data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    SERVICE_MAP[service] = ("127.0.0.1", srv.getsockname()[1])
    try:
        with pytest.raises(ServerError, match="TIMEOUT"):
            Client("trio-mesh-test").invoke_sync(
                service, "call", b"x", spanctx=SpanContext(), timeout_ms=3000
            )
    finally:
        thread.join(5)
        srv.close()
    assert seen[0].service == service and seen[0].method == "call"


# -- the request header view: checked at decode, decoded when read ------------------------

_KEYS = ["service", "sofa_head_target_service", "sofa_head_method_name", "method", "x", "ü"]
_entry_part = st.one_of(st.none(), st.sampled_from(_KEYS), st.sampled_from(["", "S", "T", "é"]))


def _raw_map(entries: list[tuple[str | None, str | None]]) -> bytes:
    """A header map as written, absent (None) keys and values and repeated keys included."""
    out = b""
    for key, value in entries:
        for part in (key, value):
            if part is None:
                out += b"\xff\xff\xff\xff"
            else:
                data = part.encode()
                out += struct.pack(">I", len(data)) + data
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_entry_part, _entry_part), max_size=6))
def test_request_header_view_reads_service_as_the_whole_map_says(entries):
    hmap = _raw_map(entries)
    raw = struct.pack(">BBHBIBiHHI", 1, 1, 1, 1, 9, 1, 0, 0, len(hmap), 0) + hmap
    whole = decode_one(raw)._decode_headers()  # the view as decoded whole
    assert decode_one(raw).headers.get("service") == whole.get("service")
    assert decode_one(raw).headers.get("service", "-") == whole.get("service", "-")
    assert decode_one(raw).service == whole.get("service", "")
    f = decode_one(raw)
    assert list(f.headers.items()) == list(whole.items())  # order and values
    assert f.headers == whole and len(f.headers) == len(whole)
    assert f.headers.get("service") == whole.get("service")
    assert f.method == whole.get("method", "")
    assert ("service" in f.headers) == ("service" in whole)


def test_routing_reads_service_without_decoding_the_map(monkeypatch):
    """What routing reads (``service``) costs no decode of the whole map; anything else
    decodes it once."""
    from trio_mesh.protocols.xprotocol import bolt

    calls = []
    parse = bolt._parse_header_map
    monkeypatch.setattr(bolt, "_parse_header_map", lambda *a: calls.append(1) or parse(*a))
    f = decode_one(frames.CLIENT_REQUEST)
    assert f.headers.get("service") == frames.SERVICE and f.service == frames.SERVICE
    assert calls == []
    assert f.headers["method"] == "sayHello" and f.method == "sayHello"
    assert dict(f.headers)["sofa_head_target_app"] == ""
    assert calls == [1]
    with pytest.raises(TypeError):
        f.headers["service"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    "hmap",
    [
        b"\x00\x00\x00\x07service\x00\x00\x00\x02\xc3(",  # an invalid UTF-8 value
        b"\x00\x00\x00\x02\xff\xfe\x00\x00\x00\x01a",  # an invalid UTF-8 key
        b"\x00\x00\x00\x07service\x00\x00\x00\x09abc",  # value longer than the map
    ],
)
def test_a_bad_header_map_still_fails_the_decode(hmap):
    with pytest.raises(XProtocolError):
        BOLT.decode(_request(hmap=hmap))
