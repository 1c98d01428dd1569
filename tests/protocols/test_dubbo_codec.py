"""The Dubbo XProtocol codec on frames captured from dubbo-ssl-python, and fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import dubbo_frames_data as captured
from trio_mesh.protocols import xprotocol
from trio_mesh.protocols.xprotocol import ErrorKind, FrameTooLarge, Match, XProtocolError
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.dubbo import DUBBO
from trio_mesh.protocols.xprotocol.hessian2 import Hessian2Reader


def test_registered_and_detected():
    assert xprotocol.get("dubbo") is DUBBO
    assert xprotocol.detect(b"\xda") is xprotocol.NEED_MORE
    assert xprotocol.detect(captured.SAY_HELLO) is DUBBO
    assert DUBBO.match(b"\xda\xbc") is Match.NO and DUBBO.match(b"GET ") is Match.NO


def test_request_headers_from_a_real_consumer():
    frame, used = DUBBO.decode(captured.ADD_WITH_CONTEXT)
    assert used == len(captured.ADD_WITH_CONTEXT)
    assert frame.is_request and not frame.is_oneway and not frame.is_heartbeat
    assert frame.request_id == 1
    h = frame.headers
    assert (h["service"], h["method"], h["interface"]) == (
        "com.example.DemoService",
        "add",
        "com.example.DemoService",
    )
    assert (h["group"], h["version"], h["traceid"]) == ("blue", "1.0.0", "abc-123")
    assert frame.request.argument_count == 4


@pytest.mark.parametrize("raw", captured.ALL_FRAMES)
def test_every_prefix_needs_more_and_ids_rewrite_in_place(raw):
    for n in range(len(raw)):
        assert DUBBO.decode(raw[:n]) is None
    frame, _ = DUBBO.decode(raw + b"\xda")  # a next frame's first byte is left alone
    wire = DUBBO.set_request_id(frame, 2**62 + 5)
    assert wire[:4] == raw[:4] and wire[12:] == raw[12:]
    again, _ = DUBBO.decode(bytes(wire))
    assert again.request_id == 2**62 + 5


def test_heartbeat_and_replies():
    hb, _ = DUBBO.decode(captured.HEARTBEAT)
    assert hb.is_heartbeat and hb.is_request
    reply = DUBBO.heartbeat_reply(hb)
    assert bytes(reply.data) == df.heartbeat_response(hb.request_id)
    assert reply.is_heartbeat and reply.is_response and reply.status == 20
    probe = DUBBO.heartbeat_request(9)
    assert probe.is_heartbeat and probe.is_request and probe.request_id == 9
    req, _ = DUBBO.decode(captured.SAY_HELLO)
    for kind in ErrorKind:
        err = DUBBO.error_reply(req, kind)
        assert err.is_response and err.request_id == req.request_id
        assert err.status == DUBBO.status_for(kind) != 20
        assert isinstance(Hessian2Reader(bytes(err.data[16:])).read(), str)


def test_timeout_attachment_and_size_limit():
    frame, _ = DUBBO.decode(captured.SAY_HELLO)
    assert frame.timeout is None
    with pytest.raises(FrameTooLarge):
        DUBBO.decode(captured.SAY_HELLO[:16], max_frame_size=100)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_after_the_magic(tail):
    try:
        DUBBO.decode(b"\xda\xbb" + tail)
    except XProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(captured.ALL_FRAMES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_mutated_real_frames(raw, edits):
    data = bytearray(raw)
    for pos, byte in edits:
        if pos < len(data):
            data[pos] = byte
    try:
        decoded = DUBBO.decode(bytes(data))
        if decoded is not None:
            dict(decoded[0].headers)
    except XProtocolError:
        pass
