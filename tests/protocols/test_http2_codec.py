"""HTTP/2 codec: our client against our server in memory, both against raw h2, hand-made frames
for the abuse cases, and property tests for the header translation."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mesh.protocols.http2 import (
    HOP_BY_HOP,
    PREFACE,
    Data,
    ErrorCode,
    GoAway,
    H2Connection,
    H2ConnectionError,
    H2HeaderError,
    H2Settings,
    InformationalHeaders,
    RemoteSettings,
    RequestHeaders,
    ResponseHeaders,
    StreamReset,
    Trailers,
    WindowOpened,
    request_from_h2,
    request_to_h2,
    response_from_h2,
    response_to_h2,
    trailers_to_h2,
)

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]
POST = [(b":method", b"POST"), *REQ[1:]]
RESP = [(b":status", b"200")]

# -- helpers -------------------------------------------------------------------------------


def pair(
    client: H2Settings | None = None, server: H2Settings | None = None
) -> tuple[H2Connection, H2Connection]:
    """Our client and our server, settings exchanged and acknowledged."""
    c = H2Connection(client_side=True, settings=client or H2Settings())
    s = H2Connection(client_side=False, settings=server or H2Settings())
    c.initiate()
    s.initiate()
    pump(c, s)
    return c, s


def pump(c: H2Connection, s: H2Connection) -> tuple[list, list]:
    """Move bytes both ways until both are quiet; (client events, server events)."""
    cev: list = []
    sev: list = []
    while True:
        to_s = c.data_to_send()
        to_c = s.data_to_send()
        if not to_s and not to_c:
            return cev, sev
        if to_s:
            sev += s.receive(to_s)
        if to_c:
            cev += c.receive(to_c)


def frames(data: bytes) -> list[Frame]:
    """Parse a byte string of frames (a leading client preface is skipped)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    out = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def of(kind: type, data: bytes) -> list:
    return [f for f in frames(data) if isinstance(f, kind)]


class RawClient:
    """A hand-driven HTTP/2 client: hyperframe frames, hpack header blocks."""

    def __init__(self) -> None:
        self.enc = Encoder()

    def preface(self, **setting_values: int) -> bytes:
        f = SettingsFrame(0)
        f.settings = dict(setting_values)
        return PREFACE + f.serialize()

    def headers(
        self, sid: int, headers: list, *, end_stream: bool = False, end_headers: bool = True
    ) -> bytes:
        f = HeadersFrame(sid)
        f.data = self.enc.encode(headers)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f.serialize()

    @staticmethod
    def data(sid: int, payload: bytes, *, end_stream: bool = False) -> bytes:
        f = DataFrame(sid)
        f.data = payload
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    @staticmethod
    def rst(sid: int, code: int = ErrorCode.CANCEL) -> bytes:
        f = RstStreamFrame(sid)
        f.error_code = code
        return f.serialize()


def raw_server(**kw: int) -> tuple[H2Connection, RawClient]:
    """Our server after a raw client's preface, output drained."""
    s = H2Connection(client_side=False, settings=H2Settings(**kw))
    s.initiate()
    raw = RawClient()
    assert s.receive(raw.preface()) == [RemoteSettings(None)]
    s.data_to_send()
    return s, raw


# -- request / response between our two ends ----------------------------------------------


def test_get_and_response_with_body_and_end_stream_folded():
    c, s = pair()
    sid = c.new_stream_id()
    assert sid == 1
    c.send_headers(sid, REQ, end_stream=True)
    _, sev = pump(c, s)
    assert sev == [RequestHeaders(1, REQ, True)]
    assert s.open_inbound_streams == 1 and c.open_outbound_streams == 1
    assert s.last_peer_stream_id == 1
    s.send_headers(1, [*RESP, (b"content-type", b"text/plain")])
    s.send_data(1, b"hello", end_stream=True)
    cev, _ = pump(c, s)
    assert cev == [
        ResponseHeaders(1, [*RESP, (b"content-type", b"text/plain")], False),
        Data(1, b"hello", 5, True),
    ]
    assert not c.stream_open(1) and not s.stream_open(1)
    assert c.open_outbound_streams == 0 and s.open_inbound_streams == 0
    assert c.new_stream_id() == 3


def test_empty_data_end_stream_and_trailers_both_ways():
    c, s = pair()
    c.send_headers(1, POST)
    c.send_data(1, b"body")
    c.send_trailers(1, [(b"x-checksum", b"abc")])
    _, sev = pump(c, s)
    assert sev == [
        RequestHeaders(1, POST, False),
        Data(1, b"body", 4, False),
        Trailers(1, [(b"x-checksum", b"abc")]),
    ]
    s.send_headers(1, [(b":status", b"100")])
    s.send_headers(1, RESP)
    s.end_stream(1)
    cev, _ = pump(c, s)
    assert cev == [
        InformationalHeaders(1, [(b":status", b"100")]),
        ResponseHeaders(1, RESP, False),
        Data(1, b"", 0, True),
    ]
    # a second stream ends with trailers from the server
    c.send_headers(3, REQ, end_stream=True)
    pump(c, s)
    s.send_headers(3, RESP)
    s.send_trailers(3, [(b"grpc-status", b"0")])
    cev, _ = pump(c, s)
    assert cev == [ResponseHeaders(3, RESP, False), Trailers(3, [(b"grpc-status", b"0")])]


def test_large_body_is_split_into_frames_of_the_peers_max_size():
    c, _ = pair()
    c.send_headers(1, POST)
    body = bytes(range(256)) * 200  # 51200 bytes
    c.send_data(1, body, end_stream=True)
    data_frames = of(DataFrame, c.data_to_send())
    assert [len(f.data) for f in data_frames] == [16384, 16384, 16384, 2048]
    assert ["END_STREAM" in f.flags for f in data_frames] == [False, False, False, True]


def test_cookie_crumbs_are_joined_on_receipt():
    c, s = pair()
    c.send_headers(1, [*REQ, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")], True)
    _, sev = pump(c, s)
    req = request_from_h2(sev[0].headers)
    assert req.headers == [(b"x", b"y"), (b"cookie", b"a=1; b=2")]


# -- flow control --------------------------------------------------------------------------


def test_sendable_shrinks_and_window_opened_after_consumed():
    c, s = pair(server=H2Settings(initial_window_size=40000))
    c.send_headers(1, POST)
    assert c.sendable(1) == 40000
    c.send_data(1, b"x" * 30000)
    assert c.sendable(1) == 10000
    with pytest.raises(ValueError):
        c.send_data(1, b"x" * 10001)
    c.send_data(1, b"x" * 10000)
    assert c.sendable(1) == 0
    _, sev = pump(c, s)
    got = [e for e in sev if isinstance(e, Data)]
    assert sum(e.flow_length for e in got) == 40000
    for e in got:
        s.consumed(1, e.flow_length)
    cev, _ = pump(c, s)
    assert WindowOpened(1) in cev
    assert c.sendable(1) == 40000


def test_connection_window_is_raised_at_initiate_and_limits_all_streams():
    s = H2Connection(client_side=False, settings=H2Settings(connection_window_size=200_000))
    s.initiate()
    updates = of(WindowUpdateFrame, s.data_to_send())
    assert [(f.stream_id, f.window_increment) for f in updates] == [(0, 200_000 - 65535)]
    # a client talking to a peer with the default 65535 connection window
    c = H2Connection(client_side=True)
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    raw.initiate_connection()
    raw.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1_000_000})
    c.initiate()
    raw.receive_data(c.data_to_send())
    c.receive(raw.data_to_send())
    c.send_headers(1, POST)
    c.send_headers(3, POST)
    assert c.sendable(1) == 65535
    c.send_data(1, b"x" * 65000)
    assert c.sendable(3) == 535  # the connection window is shared
    raw.receive_data(c.data_to_send())
    raw.increment_flow_control_window(10000)
    assert c.receive(raw.data_to_send()) == [WindowOpened(0)]
    assert c.sendable(3) == 10535


def test_window_updates_are_batched_for_tiny_frames():
    c, s = pair()
    c.send_headers(1, POST)
    sent = 0
    updates = []
    for _ in range(300):
        for _ in range(10):
            c.send_data(1, b"y" * 100)
            sent += 100
        for e in s.receive(c.data_to_send()):
            if isinstance(e, Data):
                s.consumed(e.stream_id, e.flow_length)
        back = s.data_to_send()
        updates += of(WindowUpdateFrame, back)
        c.receive(back)
    # 300 KB in 3000 frames: the stream window (256 KiB) is topped up twice, each time once half
    # of it was owed; the connection window (1 MiB) not yet
    assert sent == 300_000
    assert [(u.stream_id, u.window_increment) for u in updates] == [(1, 131_100)] * 2


def test_remote_initial_window_change_opens_every_stream():
    c, _ = pair()
    c.send_headers(1, POST)
    raw_settings = SettingsFrame(0)
    raw_settings.settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 300_000}
    assert c.receive(raw_settings.serialize()) == [RemoteSettings(None), WindowOpened(0)]
    assert c.sendable(1) == 300_000
    assert of(SettingsFrame, c.data_to_send())[0].flags == {"ACK"}


def test_consumed_after_the_stream_closed_still_returns_connection_credit():
    c, s = pair(server=H2Settings(connection_window_size=65535))
    total = 0
    for sid in range(1, 40, 2):  # 20 streams of 16000 bytes: 320 KB through a 64 KiB window
        c.send_headers(sid, POST)
        assert c.sendable(sid) >= 16000
        c.send_data(sid, b"z" * 16000)
        _, sev = pump(c, s)
        s.reset(sid)  # gone before the app got round to consuming
        pump(c, s)
        for e in sev:
            if isinstance(e, Data):
                s.consumed(e.stream_id, e.flow_length)
                total += e.flow_length
        pump(c, s)
    assert total == 320_000
    assert c.sendable(41) == 0  # not opened
    c.send_headers(41, POST)
    assert c.sendable(41) > 16000


def test_data_on_a_reset_stream_gives_its_connection_credit_back():
    s, raw = raw_server(connection_window_size=65535)
    s.receive(raw.headers(1, POST))
    s.reset(1, ErrorCode.CANCEL)
    s.data_to_send()
    # the client had these in flight: 4 x the connection window on the reset stream
    for _ in range(16):
        assert s.receive(raw.data(1, b"q" * 16000)) == []
        s.data_to_send()
    # and the connection still takes a full window on a new stream
    s.receive(raw.headers(3, POST))
    events = s.receive(b"".join(raw.data(3, b"w" * 16000) for _ in range(3)))
    assert sum(e.flow_length for e in events if isinstance(e, Data)) == 48000


def test_padding_counts_in_flow_length_and_bare_padding_is_given_back():
    # (20 padding-only frames in a row are an empty-frame flood by default: allowed here)
    s, raw = raw_server(
        initial_window_size=1000,
        connection_window_size=65535,
        max_consecutive_inbound_frames_with_empty_payload=100,
    )
    s.receive(raw.headers(1, POST))
    padded = DataFrame(1)
    padded.data = b"abc"
    padded.flags.add("PADDED")
    padded.pad_length = 100
    assert s.receive(padded.serialize()) == [Data(1, b"abc", 104, False)]
    bare = DataFrame(1)  # padding only: no event, the codec gives the credit back itself
    bare.flags.add("PADDED")
    bare.pad_length = 200
    for _ in range(20):  # 4020 flow-controlled bytes through a 1000-byte stream window
        assert s.receive(bare.serialize()) == []
        s.data_to_send()


def test_data_after_end_stream_resets_only_that_stream():
    s, raw = raw_server()
    s.receive(raw.headers(1, REQ, end_stream=True) + raw.headers(3, POST))
    events = s.receive(raw.data(1, b"late") + raw.data(3, b"ok"))
    assert events == [StreamReset(1, ErrorCode.STREAM_CLOSED), Data(3, b"ok", 2, False)]
    assert [f.stream_id for f in of(RstStreamFrame, s.data_to_send())] == [1]


def test_consumed_rejects_unknown_streams_and_settings_are_validated():
    c, _ = pair()
    with pytest.raises(ValueError):
        c.consumed(7, 10)
    with pytest.raises(ValueError):
        c.consumed(1, -1)
    c.consumed(1, 0)  # nothing owed: fine
    for bad in (
        {"initial_window_size": 2**31},
        {"connection_window_size": 1000},
        {"max_frame_size": 1000},
        {"max_header_list_size": 0},
    ):
        with pytest.raises(ValueError):
            H2Settings(**bad)


# -- content-length (RFC 9113 8.1.1: a mismatch is a stream error) ------------------------

CL10 = [*POST, (b"content-length", b"10")]


def _one_reset(data: bytes, sid: int) -> None:
    """Exactly one RST_STREAM(PROTOCOL_ERROR), on ``sid``, and no GOAWAY in ``data``."""
    assert not of(GoAwayFrame, data)
    rsts = of(RstStreamFrame, data)
    assert [(f.stream_id, f.error_code) for f in rsts] == [(sid, ErrorCode.PROTOCOL_ERROR)]


@pytest.mark.parametrize(
    ("body", "ends"),
    [
        pytest.param([b"x" * 5, b"y" * 10], b"", id="longer"),
        pytest.param([b"x" * 11], b"", id="longer-in-one-frame"),
        pytest.param([b"x" * 5, b""], b"", id="shorter-end-stream-on-data"),
        pytest.param([b"x" * 5], b"trailers", id="shorter-then-trailers"),
        pytest.param([], b"headers", id="no-body-end-stream-on-headers"),
    ],
)
def test_server_request_body_not_matching_content_length_resets_only_its_stream(
    body: list[bytes], ends: bytes
):
    s, raw = raw_server()
    # a bystander stream, open before and after
    assert s.receive(raw.headers(1, POST)) == [RequestHeaders(1, POST, False)]
    wire = raw.headers(3, CL10, end_stream=ends == b"headers")
    for i, piece in enumerate(body):
        wire += raw.data(3, piece, end_stream=not ends and i == len(body) - 1)
    if ends == b"trailers":
        wire += raw.headers(3, [(b"x-t", b"1")], end_stream=True)
    events = s.receive(wire)
    assert not s.closed
    assert events[-1] == StreamReset(3, ErrorCode.PROTOCOL_ERROR)
    # what arrived within the length was delivered; the offending frame's data was not
    delivered = b"".join(e.data for e in events if isinstance(e, Data))
    assert delivered == (b"x" * 5 if body and body[0] == b"x" * 5 else b"")
    assert not any(isinstance(e, Trailers) for e in events)
    if ends == b"headers":
        assert events == [StreamReset(3, ErrorCode.PROTOCOL_ERROR)]  # the app never saw it
    _one_reset(s.data_to_send(), 3)
    assert not s.stream_open(3)
    # frames the client still had in flight on the reset stream are harmless
    s.receive(raw.data(3, b"late", end_stream=True))
    s.data_to_send()
    # the bystander finishes, and a new stream is served
    assert s.receive(raw.data(1, b"ok", end_stream=True)) == [Data(1, b"ok", 2, True)]
    s.send_headers(1, RESP, end_stream=True)
    assert s.receive(raw.headers(5, REQ, end_stream=True)) == [RequestHeaders(5, REQ, True)]


def test_content_length_kept_exactly_passes_both_ways():
    s, raw = raw_server()
    wire = raw.headers(1, CL10) + raw.data(1, b"x" * 4) + raw.data(1, b"y" * 6)
    wire += raw.headers(1, [(b"x-t", b"1")], end_stream=True)
    wire += raw.headers(3, [*POST, (b"content-length", b"0")], end_stream=True)
    wire += raw.headers(5, CL10) + raw.data(5, b"z" * 10) + raw.data(5, b"", end_stream=True)
    events = s.receive(wire)
    assert not any(isinstance(e, StreamReset) for e in events)
    assert Trailers(1, [(b"x-t", b"1")]) in events
    assert RequestHeaders(3, [*POST, (b"content-length", b"0")], True) in events
    assert Data(5, b"", 0, True) in events
    assert not of(RstStreamFrame, s.data_to_send())


def test_bad_body_length_gives_the_connection_its_credit_back():
    """Each offending DATA frame was counted against the connection window by h2; its bytes
    are never consumed by anyone, so the codec returns them: 20 x 16000 bytes through a
    64 KiB connection window (h2 sends the WINDOW_UPDATE once half a window is owed)."""
    s, raw = raw_server(connection_window_size=65535)
    for sid in range(1, 41, 2):
        s.receive(raw.headers(sid, [*POST, (b"content-length", b"1")]))
        events = s.receive(raw.data(sid, b"q" * 16000))
        assert events == [StreamReset(sid, ErrorCode.PROTOCOL_ERROR)]
        _one_reset(s.data_to_send(), sid)
    # less than half a window is still owed: another half window goes through
    s.receive(raw.headers(41, POST))
    events = s.receive(b"".join(raw.data(41, b"w" * 16000) for _ in range(2)))
    assert sum(e.flow_length for e in events if isinstance(e, Data)) == 32000
    assert not s.closed


def test_a_content_length_among_trailers_is_not_taken_for_the_body_length():
    # h2 reads the trailers' content-length as the expected length: the body is not checked
    # against that (a framing field has no business in trailers, but is no mismatch either)
    s, raw = raw_server()
    wire = raw.headers(1, CL10) + raw.data(1, b"x" * 10)
    wire += raw.headers(1, [(b"content-length", b"99")], end_stream=True)
    events = s.receive(wire)
    assert events[-1] == Trailers(1, [(b"content-length", b"99")])


def _response_stream(c: H2Connection, s: H2Connection, sid: int, method: bytes = b"GET") -> None:
    c.send_headers(sid, [(b":method", method), *REQ[1:]], end_stream=True)
    pump(c, s)


@pytest.mark.parametrize(
    ("body", "ends"),
    [
        pytest.param([b"x" * 5, b"y" * 10], b"", id="longer"),
        pytest.param([b"x" * 5, b""], b"", id="shorter-end-stream-on-data"),
        pytest.param([b"x" * 5], b"trailers", id="shorter-then-trailers"),
        pytest.param([], b"headers", id="no-body-end-stream-on-headers"),
    ],
)
def test_client_response_body_not_matching_content_length_resets_only_its_stream(
    body: list[bytes], ends: bytes
):
    c, s = pair()
    _response_stream(c, s, 1)
    _response_stream(c, s, 3)  # the bystander
    # our server checks no lengths it sends (nor does h2): it plays the broken upstream
    s.send_headers(1, [*RESP, (b"content-length", b"10")], end_stream=ends == b"headers")
    for i, piece in enumerate(body):
        s.send_data(1, piece, end_stream=not ends and i == len(body) - 1)
    if ends == b"trailers":
        s.send_trailers(1, [(b"grpc-status", b"0")])
    s.send_headers(3, RESP)
    cev = c.receive(s.data_to_send())
    assert not c.closed
    assert StreamReset(1, ErrorCode.PROTOCOL_ERROR) in cev
    assert not any(isinstance(e, Trailers) for e in cev)
    delivered = b"".join(e.data for e in cev if isinstance(e, Data) and e.stream_id == 1)
    assert delivered == (b"x" * 5 if body else b"")
    out = c.data_to_send()
    assert not of(GoAwayFrame, out)
    if ends:
        # HEADERS with END_STREAM closed the stream (ours had ended): no RST_STREAM to send
        assert not of(RstStreamFrame, out)
    else:
        _one_reset(out, 1)
    s.receive(out)
    s.send_data(3, b"fine", end_stream=True)
    cev, _ = pump(c, s)
    assert cev == [Data(3, b"fine", 4, True)]
    _response_stream(c, s, 5)  # the connection goes on
    s.send_headers(5, RESP, end_stream=True)
    assert pump(c, s)[0] == [ResponseHeaders(5, RESP, True)]


def test_client_response_without_content_is_not_a_length_mismatch():
    """204, 304 and the response to HEAD have no content whatever their content-length says,
    with END_STREAM on the head or on an empty DATA frame."""
    c, s = pair()
    sid = 1
    for status in (b"204", b"304", b"200"):
        for empty_data in (False, True):
            method = b"HEAD" if status == b"200" else b"GET"
            _response_stream(c, s, sid, method)
            head = [(b":status", status), (b"content-length", b"1000")]
            s.send_headers(sid, head, end_stream=not empty_data)
            if empty_data:
                s.end_stream(sid)
            cev, _ = pump(c, s)
            assert cev[0] == ResponseHeaders(sid, head, not empty_data), (status, empty_data)
            assert not any(isinstance(e, StreamReset) for e in cev), (status, cev)
            sid += 2
    # a 304 with content after all is malformed
    _response_stream(c, s, sid)
    s.send_headers(sid, [(b":status", b"304"), (b"content-length", b"3")])
    s.send_data(sid, b"abc", end_stream=True)
    cev, _ = pump(c, s)
    assert cev[-1] == StreamReset(sid, ErrorCode.PROTOCOL_ERROR)
    assert not c.closed


# -- resets, GOAWAY, settings, ping ------------------------------------------------------


def test_reset_both_ways_and_sends_after_reset_are_noops():
    c, s = pair()
    c.send_headers(1, POST)
    c.send_headers(3, POST)
    pump(c, s)
    c.reset(1)
    _, sev = pump(c, s)
    assert sev == [StreamReset(1, ErrorCode.CANCEL)]
    s.reset(3, ErrorCode.INTERNAL_ERROR)
    cev, _ = pump(c, s)
    assert cev == [StreamReset(3, ErrorCode.INTERNAL_ERROR)]
    # both sides raced against the resets: nothing is sent, nothing raises
    s.send_headers(1, RESP)
    s.send_data(1, b"late", end_stream=True)
    c.send_data(3, b"late")
    c.send_trailers(3, [(b"a", b"b")])
    c.end_stream(3)
    c.reset(3)
    assert s.data_to_send() == b"" and c.data_to_send() == b""
    assert c.sendable(3) == 0
    with pytest.raises(ValueError):
        s.send_headers(99, RESP)  # never opened: a bug in the caller


def test_rejected_request_head_leaves_hpack_in_step_and_no_stream_behind():
    c, s = pair()
    # h2 finds the bad `te` only after x-custom went into the encoder's dynamic table
    with pytest.raises(ValueError, match="TE"):
        c.send_headers(1, [*REQ, (b"x-custom", b"value1"), (b"te", b"gzip")], end_stream=True)
    assert c.open_outbound_streams == 0 and c.data_to_send() == b""
    c.send_headers(3, [*REQ, (b"x-custom", b"value1")], end_stream=True)
    _, sev = pump(c, s)
    assert sev == [RequestHeaders(3, [*REQ, (b"x-custom", b"value1")], True)]


def test_rejected_response_head_can_be_reset_and_other_streams_decode():
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    c.send_headers(3, REQ, end_stream=True)
    pump(c, s)
    with pytest.raises(ValueError):
        s.send_headers(1, [*RESP, (b"x-a", b"1"), (b":path", b"/late-pseudo")])
    s.reset(1, ErrorCode.INTERNAL_ERROR)
    s.send_headers(3, [*RESP, (b"x-a", b"1")], end_stream=True)
    cev, _ = pump(c, s)
    assert cev == [
        StreamReset(1, ErrorCode.INTERNAL_ERROR),
        ResponseHeaders(3, [*RESP, (b"x-a", b"1")], True),
    ]


def test_settings_are_advertised_and_acknowledged():
    c = H2Connection(client_side=True)
    c.initiate()
    s = H2Connection(
        client_side=False,
        settings=H2Settings(max_concurrent_streams=2, initial_window_size=70000),
    )
    s.initiate()
    out = s.data_to_send()
    sent = of(SettingsFrame, out)[0].settings
    assert sent[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 2
    assert sent[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 70000
    assert sent[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 64 * 1024
    events = c.receive(out)
    assert RemoteSettings(2) in events
    assert c.remote_max_concurrent_streams == 2
    assert any("ACK" in f.flags for f in of(SettingsFrame, c.data_to_send()))
    c.send_headers(1, REQ)
    c.send_headers(3, REQ)
    with pytest.raises(ValueError):
        c.send_headers(5, REQ)  # the peer's limit


def test_ping_is_answered():
    s, _ = raw_server()
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    assert s.receive(ping.serialize()) == []
    (ack,) = of(PingFrame, s.data_to_send())
    assert ack.flags == {"ACK"} and ack.opaque_data == b"12345678"


def test_graceful_goaway_from_the_server_lets_in_flight_streams_finish():
    c, s = pair()
    c.send_headers(1, POST)
    pump(c, s)
    s.goaway(last_stream_id=1)
    c.send_headers(3, POST)  # crosses the GOAWAY on the wire
    cev, sev = pump(c, s)
    assert cev == [GoAway(ErrorCode.NO_ERROR, 1)]
    assert sev == [StreamReset(3, ErrorCode.REFUSED_STREAM)]  # after our GOAWAY
    assert c.goaway_received and not c.stream_open(3) and c.stream_open(1)
    with pytest.raises(ValueError):
        c.send_headers(c.new_stream_id(), REQ)
    # stream 1 goes on in both directions (h2 alone would refuse every frame now)
    c.send_data(1, b"more", end_stream=True)
    _, sev = pump(c, s)
    assert sev == [Data(1, b"more", 4, True)]
    s.send_headers(1, RESP, end_stream=True)
    cev, _ = pump(c, s)
    assert cev == [ResponseHeaders(1, RESP, True)]
    assert c.open_outbound_streams == 0


def test_goaway_received_drops_our_unprocessed_streams_silently():
    c, s = pair()
    for sid in (1, 3, 5):
        c.send_headers(sid, REQ)
    pump(c, s)
    g = GoAwayFrame(0)
    g.last_stream_id = 3
    g.error_code = ErrorCode.NO_ERROR
    assert c.receive(g.serialize()) == [GoAway(ErrorCode.NO_ERROR, 3)]
    assert c.data_to_send() == b""  # no RST_STREAM for a stream the peer ignores
    assert [c.stream_open(i) for i in (1, 3, 5)] == [True, True, False]
    assert c.open_outbound_streams == 2


def test_unknown_goaway_code_maps_to_internal_error():
    c, _ = pair()
    g = GoAwayFrame(0)
    g.error_code = 0xABC
    assert c.receive(g.serialize()) == [GoAway(ErrorCode.INTERNAL_ERROR, 0)]


# -- against the h2 library as an independent peer --------------------------------------


def test_our_client_against_raw_h2_server():
    c = H2Connection(client_side=True)
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    raw.initiate_connection()
    c.initiate()
    c.send_headers(1, POST)
    c.send_data(1, b"ping", end_stream=True)
    evs = raw.receive_data(c.data_to_send())
    kinds = [type(e) for e in evs]
    assert h2.events.RequestReceived in kinds and h2.events.StreamEnded in kinds
    assert [e.data for e in evs if isinstance(e, h2.events.DataReceived)] == [b"ping"]
    # our SETTINGS and connection window reached it
    assert raw.remote_settings.initial_window_size == 256 * 1024
    assert raw.outbound_flow_control_window == 1024 * 1024
    raw.send_headers(1, [(b":status", b"200"), (b"server", b"raw")])
    raw.send_data(1, b"pong")
    raw.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events = c.receive(raw.data_to_send())
    assert [e for e in events if not isinstance(e, (RemoteSettings, WindowOpened))] == [
        ResponseHeaders(1, [(b":status", b"200"), (b"server", b"raw")], False),
        Data(1, b"pong", 4, False),
        Trailers(1, [(b"grpc-status", b"0")]),
    ]
    # the SETTINGS ACK went back
    raw.receive_data(c.data_to_send())
    assert raw.local_settings.acknowledge() == {}


def test_raw_h2_client_against_our_server():
    s = H2Connection(client_side=False)
    s.initiate()
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    raw.send_headers(1, REQ, end_stream=True)
    raw.send_headers(3, POST)
    raw.send_data(3, b"abc")
    raw.reset_stream(3)
    events = s.receive(raw.data_to_send())
    # stream 3 was opened and reset in the same read: nobody hears of it
    assert [e for e in events if not isinstance(e, (RemoteSettings, WindowOpened))] == [
        RequestHeaders(1, REQ, True),
    ]
    raw.receive_data(s.data_to_send())
    s.send_headers(1, RESP)
    assert s.sendable(1) == 65535  # raw's default stream window
    s.send_data(1, b"x" * 65535)
    raw_events = raw.receive_data(s.data_to_send())
    got = sum(len(e.data) for e in raw_events if isinstance(e, h2.events.DataReceived))
    assert got == 65535
    assert s.sendable(1) == 0
    raw.acknowledge_received_data(65535, 1)
    assert s.receive(raw.data_to_send()) == [WindowOpened(0), WindowOpened(1)]
    assert s.sendable(1) == 65535


def test_response_fields_that_could_smuggle_reset_the_stream_on_the_client():
    c = H2Connection(client_side=True)
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    raw.initiate_connection()
    c.initiate()
    c.send_headers(1, REQ, end_stream=True)
    c.send_headers(3, REQ, end_stream=True)
    raw.receive_data(c.data_to_send())
    raw.send_headers(1, [(b":status", b"200"), (b"location", b"/a\r\nSet-Cookie: x=1")])
    raw.send_headers(3, RESP, end_stream=True)
    events = [
        e
        for e in c.receive(raw.data_to_send())
        if not isinstance(e, (RemoteSettings, WindowOpened))
    ]
    assert events == [StreamReset(1, ErrorCode.PROTOCOL_ERROR), ResponseHeaders(3, RESP, True)]
    assert [f.error_code for f in of(RstStreamFrame, c.data_to_send())] == [1]


# -- abuse ---------------------------------------------------------------------------------


def test_excess_streams_are_refused_and_the_others_continue():
    s, raw = raw_server(max_concurrent_streams=3)
    out = b"".join(raw.headers(sid, POST) for sid in (1, 3, 5, 7, 9))
    events = s.receive(out)
    assert events == [
        RequestHeaders(1, POST, False),
        RequestHeaders(3, POST, False),
        RequestHeaders(5, POST, False),
        StreamReset(7, ErrorCode.REFUSED_STREAM),
        StreamReset(9, ErrorCode.REFUSED_STREAM),
    ]
    rsts = of(RstStreamFrame, s.data_to_send())
    assert [(f.stream_id, f.error_code) for f in rsts] == [(7, 7), (9, 7)]
    # frames the client had in flight on the refused streams, trailers included, are harmless;
    # the HPACK state stayed in step, so stream 1 decodes fine afterwards
    tail = raw.data(7, b"late") + raw.headers(9, [(b"x-trailer", b"1")], end_stream=True)
    tail += raw.data(1, b"body", end_stream=True)
    assert s.receive(tail) == [Data(1, b"body", 4, True)]
    assert s.open_inbound_streams == 3
    # once a stream finishes, a new one is admitted
    s.send_headers(1, RESP, end_stream=True)
    assert s.receive(raw.headers(11, REQ, end_stream=True)) == [RequestHeaders(11, REQ, True)]


def test_oversized_header_list_resets_only_that_stream():
    s, raw = raw_server(max_header_list_size=1000)
    big = [*REQ, (b"x-big", b"v" * 1200)]
    out = raw.headers(1, big) + raw.headers(3, [*REQ, (b"x-big", b"v" * 1200)])
    out += raw.headers(5, REQ, end_stream=True)
    events = s.receive(out)
    assert events == [
        StreamReset(1, ErrorCode.PROTOCOL_ERROR),
        StreamReset(3, ErrorCode.PROTOCOL_ERROR),
        RequestHeaders(5, REQ, True),
    ]
    assert [f.stream_id for f in of(RstStreamFrame, s.data_to_send())] == [1, 3]


def test_header_list_beyond_the_hard_limit_ends_the_connection():
    s, raw = raw_server(max_header_list_size=1000)
    with pytest.raises(H2ConnectionError) as info:
        s.receive(raw.headers(1, [*REQ, (b"x-big", b"v" * 2500)]))
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    (goaway,) = of(GoAwayFrame, s.data_to_send())
    assert goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_hpack_bomb_is_bounded():
    # one 4000-byte header in the dynamic table, then referenced many times by a 1-byte index
    s, raw = raw_server()
    first = raw.headers(1, [*REQ, (b"x-bomb", b"b" * 4000)], end_stream=True)
    assert len(s.receive(first)) == 1
    block = raw.enc.encode(REQ) + bytes([0x80 | 62]) * 5000  # 5000 x "indexed field 62"
    f = HeadersFrame(3)
    f.data = block
    f.flags = {"END_HEADERS", "END_STREAM"}
    with pytest.raises(H2ConnectionError) as info:
        s.receive(f.serialize())
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM


@pytest.mark.parametrize(
    ("value", "name"), [(b"a\r\nb", b"x-evil"), (b"a\nGET / HTTP/1.1", b"x"), (b"ok", b"x y")]
)
def test_fields_that_could_smuggle_into_http1_reset_the_stream(value: bytes, name: bytes):
    s, raw = raw_server()
    out = raw.headers(1, [*REQ, (name, value)]) + raw.headers(3, REQ, end_stream=True)
    assert s.receive(out) == [
        StreamReset(1, ErrorCode.PROTOCOL_ERROR),
        RequestHeaders(3, REQ, True),
    ]


def test_continuation_flood_ends_the_connection():
    s, raw = raw_server()
    out = raw.headers(1, REQ, end_headers=False)
    for _ in range(40):
        out += ContinuationFrame(1).serialize()  # empty, no END_HEADERS
    with pytest.raises(H2ConnectionError) as info:
        s.receive(out)
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert of(GoAwayFrame, s.data_to_send())[0].error_code == ErrorCode.ENHANCE_YOUR_CALM
    with pytest.raises(H2ConnectionError):
        s.receive(b"")  # and stays over


def test_continuation_bytes_are_bounded_before_the_count():
    s, raw = raw_server(max_header_list_size=8000)  # 16000 bytes of header block at most
    s.receive(raw.headers(1, REQ, end_headers=False))
    chunk = ContinuationFrame(1)
    chunk.data = b"\x00" * 6000
    s.receive(chunk.serialize())
    s.receive(chunk.serialize())
    with pytest.raises(H2ConnectionError) as info:
        s.receive(chunk.serialize())
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert s._h2.incoming_buffer._headers_buffer.__len__() <= 3


def test_frame_interleaved_in_a_header_block_is_a_protocol_error():
    s, raw = raw_server()
    with pytest.raises(H2ConnectionError) as info:
        s.receive(raw.headers(1, REQ, end_headers=False) + raw.data(1, b"x"))
    assert info.value.code == ErrorCode.PROTOCOL_ERROR


def test_oversized_frame_is_refused_from_its_header():
    s, _ = raw_server()
    header = (1 << 20).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    with pytest.raises(H2ConnectionError) as info:
        s.receive(header)  # 9 bytes: nothing of the 1 MiB body was needed
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


def test_rapid_reset_gets_goaway_enhance_your_calm():
    s, raw = raw_server(max_premature_resets=10)
    for sid in range(1, 21, 2):  # 10 premature resets: still at the limit
        s.receive(raw.headers(sid, REQ, end_stream=True))
        assert s.receive(raw.rst(sid)) == [StreamReset(sid, ErrorCode.CANCEL)]
    s.receive(raw.headers(21, REQ, end_stream=True))
    with pytest.raises(H2ConnectionError) as info:
        s.receive(raw.rst(21))
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert info.value.events == [StreamReset(21, ErrorCode.CANCEL)]
    (goaway,) = of(GoAwayFrame, s.data_to_send())
    assert goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM and goaway.last_stream_id == 21


def test_rapid_reset_in_one_read_is_never_seen_by_the_app_and_still_counted():
    s, raw = raw_server(max_premature_resets=10)
    out = b"".join(raw.headers(sid, REQ) + raw.rst(sid) for sid in range(1, 21, 2))
    assert s.receive(out) == []
    with pytest.raises(H2ConnectionError) as info:
        s.receive(raw.headers(21, REQ) + raw.rst(21))
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM


def test_resets_after_the_response_began_or_mixed_with_normal_traffic_are_fine():
    s, raw = raw_server(max_premature_resets=10)
    sid = 1
    for _ in range(35):  # answered, then cancelled: not premature
        s.receive(raw.headers(sid, REQ, end_stream=True))
        s.send_headers(sid, RESP)
        s.receive(raw.rst(sid))
        sid += 2
    for _ in range(25):  # premature, but under half of all streams
        s.receive(raw.headers(sid, REQ, end_stream=True))
        s.receive(raw.rst(sid))
        sid += 2
    assert not s.closed


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (DataFrame(1).serialize(), ErrorCode.PROTOCOL_ERROR),  # DATA on an idle stream
        (RawClient().headers(2, REQ), ErrorCode.PROTOCOL_ERROR),  # even id from a client
        (RawClient().headers(1, [(b":path", b"/")]), ErrorCode.PROTOCOL_ERROR),  # no :method
        (RawClient().headers(1, [*REQ, (b"Upper", b"x")]), ErrorCode.PROTOCOL_ERROR),
        (RawClient().headers(1, [*REQ, (b"connection", b"close")]), ErrorCode.PROTOCOL_ERROR),
        (b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", ErrorCode.PROTOCOL_ERROR),
        (b"\x00\x00\x03\x04\x00\x00\x00\x00\x00\x00\x04\x00", ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_protocol_errors_queue_goaway_and_raise(frame: bytes, code: ErrorCode):
    s, _ = raw_server()
    with pytest.raises(H2ConnectionError) as info:
        s.receive(frame)
    assert info.value.code == code
    assert of(GoAwayFrame, s.data_to_send())[0].error_code == code
    assert s.closed and s.sendable(1) == 0


def test_flow_control_violation_is_flow_control_error():
    s, raw = raw_server(initial_window_size=1000)
    s.receive(raw.headers(1, POST))
    with pytest.raises(H2ConnectionError) as info:
        s.receive(raw.data(1, b"x" * 1001))
    assert info.value.code == ErrorCode.FLOW_CONTROL_ERROR


def test_bad_preface():
    s = H2Connection(client_side=False)
    s.initiate()
    s.data_to_send()
    assert s.receive(PREFACE[:10]) == []
    with pytest.raises(H2ConnectionError) as info:
        s.receive(b"GET / HTTP/1.1\r\n")
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
    assert of(GoAwayFrame, s.data_to_send())


def test_events_before_a_connection_error_are_kept():
    c, s = pair()
    c.send_headers(1, REQ, end_stream=True)
    pump(c, s)
    s.send_headers(1, RESP)
    s.send_data(1, b"done", end_stream=True)
    with pytest.raises(H2ConnectionError) as info:
        c.receive(s.data_to_send() + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA, stream 0
    assert info.value.events == [ResponseHeaders(1, RESP, False), Data(1, b"done", 4, True)]


def test_peer_cannot_grow_our_hpack_encoder_table():
    c, s = pair()
    big = SettingsFrame(0)
    big.settings = {h2.settings.SettingCodes.HEADER_TABLE_SIZE: 1 << 30}
    for _ in range(100):
        s.receive(big.serialize())
    assert s._h2.encoder.header_table_size == 4096
    assert len(s._h2.encoder.table_size_changes) <= 1
    small = SettingsFrame(0)
    small.settings = {h2.settings.SettingCodes.HEADER_TABLE_SIZE: 100}
    s.receive(small.serialize())
    assert s._h2.encoder.header_table_size == 100
    # and the client's decoder follows the size updates we send
    c.send_headers(1, REQ, end_stream=True)
    pump(c, s)
    s.send_headers(1, [*RESP, (b"x-long", b"l" * 50)], end_stream=True)
    cev, _ = pump(c, s)
    assert cev == [ResponseHeaders(1, [*RESP, (b"x-long", b"l" * 50)], True)]


def test_memory_for_closed_streams_is_bounded():
    # (4900 refused streams queue as many RST_STREAMs: over the control-frame limit otherwise)
    s, raw = raw_server(max_premature_resets=10**6, max_outbound_control_frames=10**6)
    wire = b"".join(raw.headers(sid, REQ, end_stream=True) for sid in range(1, 10_001, 2))
    wire += b"".join(raw.rst(sid) for sid in range(1, 10_001, 2))
    s.receive(wire)
    s.receive(raw.headers(10_001, REQ, end_stream=True))  # h2 prunes closed streams here
    assert len(s._h2.streams) == 1
    assert len(s._h2._closed_streams) <= 4096  # h2 alone keeps 65536


def test_input_buffer_holds_at_most_one_frame():
    c, s = pair()
    c.send_headers(1, POST)
    c.send_data(1, b"m" * 16000)
    wire = c.data_to_send()
    for i in range(0, len(wire), 1000):
        s.receive(wire[i : i + 1000])
        assert len(s._in) <= 16384 + 9
    assert len(s._in) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_after_the_preface_never_escapes_as_another_exception(junk: bytes):
    s, _ = raw_server()
    try:
        s.receive(junk)
    except H2ConnectionError:
        assert s.closed
        assert of(GoAwayFrame, s.data_to_send())


def _client_wire() -> bytes:
    c = H2Connection(client_side=True)
    c.initiate()
    c.send_headers(1, POST)
    c.send_data(1, b"x" * 100)
    c.send_trailers(1, [(b"t", b"1")])
    c.send_headers(3, REQ, end_stream=True)
    c.reset(3)
    c.send_headers(5, [*REQ, (b"cookie", b"a"), (b"cookie", b"b")], end_stream=True)
    c.goaway()
    return c.data_to_send()


_WIRE = _client_wire()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_WIRE) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    st.sampled_from([1, 9, 10_000]),
)
def test_corrupted_client_bytes_only_ever_raise_h2_connection_error(flips, step):
    wire = bytearray(_WIRE)
    for at, byte in flips:
        wire[at] = byte
    s = H2Connection(client_side=False, settings=H2Settings(max_concurrent_streams=2))
    s.initiate()
    try:
        for i in range(0, len(wire), step):
            s.receive(bytes(wire[i : i + step]))
    except H2ConnectionError:
        assert of(GoAwayFrame, s.data_to_send())


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_any_split_of_the_input_gives_the_same_events(step: int):
    c = H2Connection(client_side=True)
    c.initiate()
    c.send_headers(1, POST)
    c.send_data(1, b"abcdef" * 10)
    c.send_trailers(1, [(b"t", b"1")])
    c.send_headers(3, REQ, end_stream=True)
    wire = c.data_to_send()
    s = H2Connection(client_side=False)
    s.initiate()
    events = []
    for i in range(0, len(wire), step):
        events += s.receive(wire[i : i + step])
    assert [e for e in events if not isinstance(e, (RemoteSettings, WindowOpened))] == [
        RequestHeaders(1, POST, False),
        Data(1, b"abcdef" * 10, 60, False),
        Trailers(1, [(b"t", b"1")]),
        RequestHeaders(3, REQ, True),
    ]


# -- header translation --------------------------------------------------------------------


def test_request_to_h2_orders_pseudo_headers_and_drops_hop_by_hop():
    got = request_to_h2(
        b"GET",
        b"/p?q=1",
        None,
        [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"TE", b"trailers"),
            (b"Upgrade", b"h2c"),
            (b"HTTP2-Settings", b"AAA"),
            (b"Accept", b"*/*"),
        ],
    )
    assert got == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"example.com"),
        (b":path", b"/p?q=1"),
        (b"te", b"trailers"),
        (b"accept", b"*/*"),
    ]
    assert request_to_h2(b"GET", b"/", b"given", [(b"host", b"other"), (b"te", b"gzip")]) == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"given"),
        (b":path", b"/"),
    ]
    assert request_to_h2(b"CONNECT", b"db:5432", None, [(b"x", b"1")]) == [
        (b":method", b"CONNECT"),
        (b":authority", b"db:5432"),
        (b"x", b"1"),
    ]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(b":scheme", b"http"), (b":path", b"/")], "missing :method"),
        ([(b":method", b"GET"), (b":path", b"/")], "missing :scheme"),
        ([(b":method", b"GET"), (b":scheme", b"http")], "missing :path"),
        ([(b":method", b"GET"), (b":method", b"GET"), (b":scheme", b"h"), (b":path", b"/")], "dup"),
        ([(b":method", b"GET"), (b":scheme", b"h"), (b":path", b"x")], "bad :path"),
        ([(b":method", b"GET"), (b"a", b"b"), (b":scheme", b"h"), (b":path", b"/")], "after"),
        ([(b":method", b"GET"), (b":status", b"200")], "unknown"),
        ([(b":method", b"CONNECT")], "CONNECT without"),
        ([(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")], "CONNECT with"),
    ],
)
def test_request_from_h2_rejects_bad_pseudo_headers(headers, reason):
    with pytest.raises(H2HeaderError, match=reason):
        request_from_h2(headers)


def test_trailers_to_h2_drops_what_http2_forbids():
    h1 = [
        (b"X-Checksum", b"abc"),
        (b"connection", b"x-named"),
        (b"x-named", b"1"),
        (b"keep-alive", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"close"),
        (b"grpc-status", b"0"),
    ]
    assert trailers_to_h2(h1) == [(b"x-checksum", b"abc"), (b"grpc-status", b"0")]
    assert trailers_to_h2([(b"keep-alive", b"5")]) == []


def test_request_from_h2_connect_and_options_star():
    req = request_from_h2([(b":method", b"CONNECT"), (b":authority", b"db:5432")])
    assert (req.method, req.authority, req.path, req.scheme) == (b"CONNECT", b"db:5432", b"", b"")
    req = request_from_h2([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*")])
    assert req.path == b"*" and req.authority is None


def test_response_helpers():
    assert response_to_h2(
        204, [(b"Connection", b"close"), (b"Set-Cookie", b"a=1"), (b"TE", b"trailers")]
    ) == [(b":status", b"204"), (b"set-cookie", b"a=1")]
    with pytest.raises(ValueError):
        response_to_h2(101, [])
    assert response_from_h2([(b":status", b"404"), (b"x", b"y")]) == (404, [(b"x", b"y")])
    for bad in (
        [],
        [(b"x", b"y")],
        [(b":status", b"20")],
        [(b":status", b"abc")],
        [(b":status", b"099")],
        [(b":status", b"200"), (b":path", b"/")],
    ):
        with pytest.raises(H2HeaderError):
            response_from_h2(bad)


_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
_names = _token.map(str.encode).filter(lambda n: n.lower() not in HOP_BY_HOP | {b"te", b"host"})
_values = st.binary(max_size=20).filter(lambda v: not set(v) & set(b"\r\n\x00,"))
_header_lists = st.lists(st.tuples(_names, _values), max_size=8)


@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
    # request_from_h2 refuses whitespace and control bytes in :path and :authority (they
    # would break the HTTP/1 request line), and userinfo ("@") in :authority: the round
    # trip is over what it accepts.
    path=st.binary(max_size=30).map(lambda p: b"/" + bytes(b for b in p if 0x20 < b != 0x7F)),
    authority=st.none()
    | st.binary(min_size=1, max_size=20).filter(
        lambda a: all(0x20 < b != 0x7F and b != 0x40 for b in a)
    ),
    headers=_header_lists,
    scheme=st.sampled_from([b"http", b"https"]),
)
def test_request_round_trip(method, path, authority, headers, scheme):
    h2_headers = request_to_h2(method, path, authority, headers, scheme)
    assert all(not n.startswith(b":") for n, _ in h2_headers[4 if authority else 3 :])
    req = request_from_h2(h2_headers)
    assert (req.method, req.scheme, req.authority, req.path) == (method, scheme, authority, path)
    expected = [(n.lower(), v) for n, v in headers if n.lower() != b"cookie"]
    cookies = [v for n, v in headers if n.lower() == b"cookie"]
    assert [h for h in req.headers if h[0] != b"cookie"] == expected
    if cookies:
        assert (b"cookie", b"; ".join(cookies)) in req.headers


@given(
    status=st.integers(min_value=100, max_value=999).filter(lambda s: s != 101),
    headers=_header_lists,
)
def test_response_round_trip(status, headers):
    assert response_from_h2(response_to_h2(status, headers)) == (
        status,
        [(n.lower(), v) for n, v in headers],
    )


@given(
    hop=st.lists(
        st.sampled_from(sorted(HOP_BY_HOP)).map(lambda n: n.title()), min_size=1, max_size=4
    ),
    headers=_header_lists,
)
def test_hop_by_hop_never_crosses(hop, headers):
    mixed = [*headers, *((n, b"x") for n in hop)]
    for out in (request_to_h2(b"GET", b"/", b"a", mixed), response_to_h2(200, mixed)):
        assert not {n for n, _ in out} & HOP_BY_HOP
        assert all(n == n.lower() for n, _ in out)


@pytest.mark.parametrize(
    ("pseudo", "value"),
    [
        (b":method", b"GET /admin"),
        (b":path", b"/a b"),
        (b":path", b"/a\tb"),
        (b":path", b"/a\x7f"),
        (b":authority", b"a b"),
    ],
)
def test_request_from_h2_refuses_what_would_break_an_http1_request_line(pseudo, value):
    headers = {b":method": b"GET", b":scheme": b"http", b":authority": b"h", b":path": b"/"}
    headers[pseudo] = value
    with pytest.raises(H2HeaderError):
        request_from_h2(list(headers.items()))


def test_request_from_h2_content_length_must_be_one_number():
    base = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/")]
    same = request_from_h2([*base, (b"content-length", b"5"), (b"content-length", b"5")])
    assert same.headers == [(b"content-length", b"5")]
    for bad in ([b"5", b"6"], [b"+5"], [b"5, 5"]):
        with pytest.raises(H2HeaderError):
            request_from_h2([*base, *[(b"content-length", v) for v in bad]])


_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]


def test_host_is_the_authority_never_a_field():
    """RFC 9113 8.3.1: host stands in for a missing :authority, repeats it harmlessly, and
    makes the request malformed when it names another authority; never a field of its own."""
    req = request_from_h2([*_GET, (b"host", b"a.example"), (b"x", b"1")])
    assert (req.authority, req.headers) == (b"a.example", [(b"x", b"1")])
    req = request_from_h2([*_GET, (b":authority", b"a.example"), (b"host", b"A.example")])
    assert (req.authority, req.headers) == (b"a.example", [])
    for bad, reason in (
        ([(b":authority", b"a.example"), (b"host", b"b.example")], "differs"),
        ([(b"host", b"a"), (b"host", b"a")], "more than one host"),
        ([(b":authority", b"u:p@a.example")], "bad :authority"),
        ([(b"host", b"u@a.example")], "bad :authority"),
    ):
        with pytest.raises(H2HeaderError, match=reason):
            request_from_h2(sorted(_GET + bad, key=lambda h: not h[0].startswith(b":")))


def test_forwarded_trailers_lose_fields_not_allowed_there():
    server = H2Connection(client_side=False)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [*_GET, (b":authority", b"a")], end_stream=True)
    server.receive(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    server.send_trailers(1, [(b"host", b"evil"), (b"Content-Type", b"x"), (b"grpc-status", b"0")])
    events = client.receive_data(server.data_to_send())
    (trailers,) = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers.headers == [(b"grpc-status", b"0")]
