"""Go-away frames of the RPC codecs: Dubbo's READONLY event and MOSN's bolt GoAway decode as
control frames (``goaway``), never as garbage or as requests to route."""

from __future__ import annotations

import pytest

from trio_mesh.protocols.xprotocol import ErrorKind, XProtocolError
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltGoAwayFrame
from trio_mesh.protocols.xprotocol.dubbo import DUBBO, DubboReadonlyFrame
from trio_mesh.protocols.xprotocol.hessian2 import encode_string


def test_dubbo_readonly_event_as_dubbo_writes_it():
    # Dubbo's provider: a oneway event request (flag 0xa2), data the hessian2 string "R"
    wire = bytes.fromhex("dabba2000000000000000007000000020152")
    frame, used = DUBBO.decode(wire)
    assert used == len(wire)
    assert isinstance(frame, DubboReadonlyFrame) and frame.goaway
    assert frame.is_request and frame.is_oneway and not frame.is_heartbeat
    assert frame.request_id == 7


def test_dubbo_goaway_request_round_trips_and_is_readonly():
    frame = DUBBO.goaway_request()
    assert frame.goaway
    again, _ = DUBBO.decode(bytes(DUBBO.encode(frame)))
    assert again.goaway and again.is_oneway
    assert df.decode_event_body(bytes(frame.data[df.HEADER_LENGTH :])) == "R"


def test_dubbo_two_way_readonly_event_and_a_longer_encoding_are_readonly_too():
    flag = df.FLAG_REQUEST | df.FLAG_TWO_WAY | df.FLAG_EVENT | df.SERIALIZATION_HESSIAN2
    frame, _ = DUBBO.decode(df.encode_frame(flag, 0, 1, encode_string("R")))
    assert frame.goaway
    # "R" as a chunked string ('S' tag, length 1): another valid hessian2 encoding
    frame, _ = DUBBO.decode(df.encode_frame(flag, 0, 1, b"S\x00\x01R"))
    assert frame.goaway


@pytest.mark.parametrize(
    "wire",
    [
        df.heartbeat_request(3),  # a heartbeat is not a go-away
        df.heartbeat_response(3),
        # the string "R" in a response event, not a request
        df.encode_frame(df.FLAG_EVENT | df.SERIALIZATION_HESSIAN2, 20, 1, encode_string("R")),
        # another event's data
        df.encode_frame(
            df.FLAG_REQUEST | df.FLAG_EVENT | df.SERIALIZATION_HESSIAN2, 0, 1, encode_string("X")
        ),
    ],
)
def test_other_dubbo_events_are_not_readonly(wire):
    frame, _ = DUBBO.decode(wire)
    assert not frame.goaway


def test_dubbo_invocations_and_responses_are_not_goaway():
    frame, _ = DUBBO.decode(df.value_response(1, encode_string("R")))
    assert not frame.goaway
    assert not DUBBO.error_reply(DUBBO.heartbeat_request(1), ErrorKind.INTERNAL).goaway


def test_a_truncated_readonly_event_body_is_a_codec_error():
    flag = df.FLAG_REQUEST | df.FLAG_EVENT | df.SERIALIZATION_HESSIAN2
    with pytest.raises(XProtocolError):
        DUBBO.decode(df.encode_frame(flag, 0, 1, b"S\x00\x05R"))  # says 5 chars, has 1


def test_bolt_goaway_as_mosn_writes_it():
    # MOSN: proto 1, type request, cmdcode 100, ver 1, id 0, hessian2, timeout 0, no class,
    # headers or content
    wire = bytes.fromhex("01010064010000000001000000000000000000000000")
    frame, used = BOLT.decode(wire)
    assert used == 22
    assert isinstance(frame, BoltGoAwayFrame) and frame.goaway
    assert frame.is_request and not frame.is_heartbeat
    assert bytes(BOLT.goaway_frame().data) == wire


def test_bolt_requests_heartbeats_and_responses_are_not_goaway():
    assert not BOLT.decode(bytes(BOLT.heartbeat_request(1).data))[0].goaway
    assert not BOLT.decode(bytes(BOLT.build_request(1, {"service": "s"}, b"x").data))[0].goaway
    assert not BOLT.decode(bytes(BOLT.build_response(1, 0, content=b"x").data))[0].goaway


def test_bolt_sends_no_goaway_to_its_clients():
    # SOFA bolt's and anthunder's clients do not know cmdcode 100
    assert BOLT.goaway_request() is None
