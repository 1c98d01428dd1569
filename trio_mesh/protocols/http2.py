"""HTTP/2 codec on h2: a strict, sans-IO connection for both sides of the proxy (h2c, prior
knowledge).

The Trio runtime feeds `receive()` with socket bytes, acts on the events, and writes
`data_to_send()` back. Everything below is plain Python: no trio, no sockets.

What this wrapper fixes or bounds in h2 4.1 (each one is tested in
tests/protocols/test_http2_codec.py):

- h2 drops every event of a `receive_data` call that raises. We split the input into frames
  ourselves and hand h2 one frame per call, so an error costs only its own frame's events (the
  ones decoded earlier ride on `H2ConnectionError.events`).
- h2's connection state machine goes CLOSED on sending or receiving GOAWAY and then refuses every
  frame (python-hyper/h2#1181), so a graceful shutdown cannot finish in-flight streams. GOAWAY is
  therefore never shown to h2: we parse the peer's and build our own.
- h2 treats a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS as a connection error, and also counts
  trailers on an already-reset stream as a new stream. We keep h2's own limit off and refuse the
  excess stream with RST_STREAM(REFUSED_STREAM) ourselves, after h2 decoded its header block (the
  HPACK state stays in step).
- h2 buffers a whole frame before checking its length (up to 16 MiB) and allows 64 CONTINUATION
  frames of any size: we check the length from the 9-byte header and bound each header block's
  frame count and bytes.
- h2 does not reject NUL, CR or LF in field values nor non-token field names: that would let an
  HTTP/2 client smuggle a request line into an HTTP/1 upstream. Such a stream is reset.
- hpack aborts an oversized header list half-way through, which desynchronises the HPACK state.
  We let the decoder go to twice the advertised limit, reset the stream between the two, and only
  GOAWAY above that.
- h2 follows the peer's SETTINGS_HEADER_TABLE_SIZE upwards without bound (our encoder would keep
  that much of our own headers): capped at 4096 bytes.
- h2 remembers how 65536 closed streams ended (several MB per long-lived connection): 4096 here.
- h2 validates outgoing headers while HPACK-encoding them: a bad field desynchronises the encoder
  from the peer's decoder and leaves a half-opened stream. `_send_head` undoes both.
- h2 4.1 requires :scheme and :path on every request, so a standard CONNECT (RFC 9113 §8.5) is
  refused both ways: inbound as a connection PROTOCOL_ERROR, outbound as ValueError.
- DATA on closed streams: h2 already returns the connection-window credit itself (tested).
- h2 makes a body that does not match its content-length a connection error
  (InvalidBodyLengthError), and checks nothing when HEADERS (trailers, or a head with
  END_STREAM) end the stream. RFC 9113 8.1.1 makes both a stream error: that stream is reset
  with PROTOCOL_ERROR, the offending frame's connection credit given back. 204 and 304
  responses have no content whatever their content-length says.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.settings import SettingCodes, Settings
from h2.stream import StreamClosedBy, StreamState
from hyperframe.exceptions import HyperframeError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from .trailers import trailer_fields

__all__ = [
    "HOP_BY_HOP",
    "PREFACE",
    "Data",
    "ErrorCode",
    "Event",
    "FLOODS",
    "GoAway",
    "H2Connection",
    "H2ConnectionError",
    "H2HeaderError",
    "H2Request",
    "H2Settings",
    "Header",
    "InformationalHeaders",
    "RemoteSettings",
    "RequestHeaders",
    "ResponseHeaders",
    "StreamReset",
    "Trailers",
    "WindowOpened",
    "request_from_h2",
    "request_to_h2",
    "response_from_h2",
    "response_to_h2",
    "trailers_to_h2",
]

Header = tuple[bytes, bytes]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    SETTINGS_TIMEOUT = 4
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    CONNECT_ERROR = 10
    ENHANCE_YOUR_CALM = 11
    INADEQUATE_SECURITY = 12
    HTTP_1_1_REQUIRED = 13


def _error_code(value: int) -> ErrorCode:
    # RFC 9113 §7: an unknown code may be treated as INTERNAL_ERROR
    try:
        return ErrorCode(int(value))
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


_MAX_WINDOW = 2**31 - 1


@dataclass(frozen=True, slots=True)
class H2Settings:
    """What a connection advertises, and the abuse limits it enforces."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS: streams the peer may have open at once.
    max_concurrent_streams: int = 100
    #: SETTINGS_INITIAL_WINDOW_SIZE: per-stream receive window.
    initial_window_size: int = 256 * 1024
    #: Connection receive window (raised from 65535 by a WINDOW_UPDATE at `initiate()`).
    connection_window_size: int = 1024 * 1024
    #: SETTINGS_MAX_FRAME_SIZE: largest frame payload accepted.
    max_frame_size: int = 16384
    #: SETTINGS_MAX_HEADER_LIST_SIZE, enforced on every inbound header block.
    max_header_list_size: int = 64 * 1024
    #: Rapid reset (CVE-2023-44487): peer resets of streams not yet answered before GOAWAY.
    max_premature_resets: int = 100
    # Envoy's frame-flood limits (its ``http2_protocol_options`` names and defaults); over one,
    # GOAWAY ENHANCE_YOUR_CALM. CVE-2019-9512/9513/9515/9518 and kin.
    #: PING and SETTINGS ACKs and RST_STREAMs queued and not yet taken by the socket.
    max_outbound_control_frames: int = 1000
    #: Consecutive DATA, HEADERS or CONTINUATION frames with an empty payload and no
    #: END_STREAM (and unknown frame types, which carry nothing we act on either).
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    #: PRIORITY frames, times (1 + streams opened on the connection).
    max_inbound_priority_frames_per_stream: int = 100
    #: WINDOW_UPDATE frames per DATA frame sent (Envoy's formula, see ``_check_flood``).
    max_inbound_window_update_frames_per_data_frame_sent: int = 10

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 0:
            raise ValueError("max_concurrent_streams must be >= 0")
        if not 0 <= self.initial_window_size <= _MAX_WINDOW:
            raise ValueError(f"initial_window_size must be 0..{_MAX_WINDOW}")
        if not 65535 <= self.connection_window_size <= _MAX_WINDOW:
            raise ValueError(f"connection_window_size must be 65535..{_MAX_WINDOW}")
        if not 16384 <= self.max_frame_size <= 2**24 - 1:
            raise ValueError("max_frame_size must be 16384..16777215")
        if self.max_header_list_size < 1:
            raise ValueError("max_header_list_size must be >= 1")
        if self.max_premature_resets < 0:
            raise ValueError("max_premature_resets must be >= 0")
        if self.max_outbound_control_frames < 1:
            raise ValueError("max_outbound_control_frames must be >= 1")
        if self.max_consecutive_inbound_frames_with_empty_payload < 0:
            raise ValueError("max_consecutive_inbound_frames_with_empty_payload must be >= 0")
        if self.max_inbound_priority_frames_per_stream < 0:
            raise ValueError("max_inbound_priority_frames_per_stream must be >= 0")
        if self.max_inbound_window_update_frames_per_data_frame_sent < 1:
            raise ValueError("max_inbound_window_update_frames_per_data_frame_sent must be >= 1")


class H2ConnectionError(Exception):
    """The connection is over; a GOAWAY with `code` is already queued in `data_to_send()`.

    `events`: what the input decoded into before the error (streams that completed in the same
    read are in there). `flood`: which frame-flood limit was hit (one of `FLOODS`), if any.
    """

    def __init__(self, code: ErrorCode, reason: str, flood: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.flood = flood
        self.events: list[Event] = []

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}"


class H2HeaderError(Exception):
    """A header list that cannot become an HTTP request or response."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """Server side: the request head of a new stream."""

    stream_id: int
    headers: list[Header]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ResponseHeaders:
    """Client side: the final response head (status >= 200)."""

    stream_id: int
    headers: list[Header]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class InformationalHeaders:
    """Client side: a 1xx response head."""

    stream_id: int
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class Trailers:
    """Trailers; they always end the stream."""

    stream_id: int
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class Data:
    """Body bytes. `flow_length` (padding included) goes back through `consumed()`."""

    stream_id: int
    data: bytes = field(repr=False)
    flow_length: int
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: the peer sent RST_STREAM, or the codec reset it (refused, bad head)."""

    stream_id: int
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More can be sent on `stream_id`; 0 means on every stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """The peer's SETTINGS changed; `max_concurrent_streams` is None when that one did not."""

    max_concurrent_streams: int | None


@dataclass(frozen=True, slots=True)
class GoAway:
    """The peer sent GOAWAY: open no new streams. Ours above `last_stream_id` were not processed
    (safe to retry); the codec has already dropped them (no further events for them)."""

    code: ErrorCode
    last_stream_id: int


Event = (
    RequestHeaders
    | ResponseHeaders
    | InformationalHeaders
    | Trailers
    | Data
    | StreamReset
    | WindowOpened
    | RemoteSettings
    | GoAway
)

# -- the connection --------------------------------------------------------------------------

_DATA = 0x0
_HEADERS = 0x1
_PRIORITY = 0x2
_SETTINGS = 0x4
_ACK = 0x1
_PUSH_PROMISE = 0x5
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20

#: The frame-flood limits, by the name of the counter (Envoy's ``http2.*`` stats) that
#: `H2ConnectionError.flood` carries.
OUTBOUND_CONTROL_FLOOD = "outbound_control_flood"
INBOUND_EMPTY_FRAMES_FLOOD = "inbound_empty_frames_flood"
INBOUND_PRIORITY_FRAMES_FLOOD = "inbound_priority_frames_flood"
INBOUND_WINDOW_UPDATE_FRAMES_FLOOD = "inbound_window_update_frames_flood"
FLOODS = (
    OUTBOUND_CONTROL_FLOOD,
    INBOUND_EMPTY_FRAMES_FLOOD,
    INBOUND_PRIORITY_FRAMES_FLOOD,
    INBOUND_WINDOW_UPDATE_FRAMES_FLOOD,
)

# CONTINUATION frames allowed after one HEADERS: real encoders need one or two, the byte bound
# does the rest; this one stops floods of empty frames (CVE-2024-27316)
_MAX_CONTINUATIONS = 32
# our HPACK encoder's dynamic table, whatever larger size the peer allows
_MAX_ENCODER_TABLE = 4096
# RFC 9113 §8.2.1 / §5.1 of RFC 9110: lowercase token names (pseudo-headers: h2 checks the set);
# values without control characters but HTAB (h2 checks surrounding whitespace)
_FIELD_NAME = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB, and DEL: as llhttp
_RESET_BY = (StreamClosedBy.SEND_RST_STREAM, StreamClosedBy.RECV_RST_STREAM)
_NO_CONTENT_STATUSES = frozenset({b"204", b"304"})
_SENDING_STATES = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


class _H2(h2.connection.H2Connection):  # type: ignore[misc]  # h2 4.1 ships no types
    if TYPE_CHECKING:
        # What this module reads of h2's API, typed as h2 4.1 defines it.
        open_inbound_streams: int
        open_outbound_streams: int
        highest_inbound_stream_id: int
        highest_outbound_stream_id: int
        outbound_flow_control_window: int

        def data_to_send(self, amount: int | None = None) -> bytes: ...
        def get_next_available_stream_id(self) -> int: ...

    # h2 keeps how each closed stream ended to tell late frames from protocol errors; its 65536
    # entries are several MB per long-lived connection, and a few thousand cover frames in flight
    MAX_CLOSED_STREAMS = 4096

    #: (stream id, flow-controlled length) of the DATA frame that broke its stream's
    #: content-length, for the codec to reset that stream; None otherwise.
    bad_body_length: tuple[int, int] | None = None

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Any]]:
        # h2 raises InvalidBodyLengthError (a ProtocolError) out of receive_data, which makes
        # it a connection error (GOAWAY). RFC 9113 8.1.1 makes it a stream error: caught here,
        # before receive_data sees it. By then h2 has counted the frame against the connection
        # and stream windows and left the stream open; its data is not delivered.
        try:
            result: tuple[list[Frame], list[Any]] = super()._receive_data_frame(frame)
            return result  # (frames to send, events)
        except h2.exceptions.InvalidBodyLengthError:
            self.bad_body_length = (frame.stream_id, frame.flow_controlled_length)
            return [], []  # the connection state machine's RECV_DATA yields no events


class H2Connection:
    """One HTTP/2 connection, server side (`client_side=False`) or client side.

    Call `initiate()` first, then `receive()` with every chunk read and send `data_to_send()`
    after each call that may queue frames. Sending on a stream that was reset (by either side) or
    after a connection error is a no-op: the events say so, and a stream task may not have seen
    them yet. Other misuse raises ValueError; after a ValueError from `send_headers` or
    `send_trailers` nothing was sent, and an existing stream can only be `reset()`.
    """

    def __init__(self, *, client_side: bool, settings: H2Settings = H2Settings()) -> None:
        self._client = client_side
        self._settings = settings
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            # Outbound header lists are checked by _check_outbound before anything is
            # encoded (h2 checks while encoding, which costs a dynamic-table snapshot per
            # header block to undo, and is a fifth of the proxy's per-request time).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
        )
        self._h2 = h2conn = _H2(config=config)
        local = {
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        }
        if client_side:
            local[SettingCodes.ENABLE_PUSH] = 0
        # initial values are current at once (not pending an ACK): h2 enforces them from the start
        h2conn.local_settings = Settings(client=client_side, initial_values=local)
        h2conn.max_inbound_frame_size = settings.max_frame_size
        # between the advertised and this hard limit a list costs one stream, not the connection
        self._hard_header_list = 2 * settings.max_header_list_size
        h2conn.decoder.max_header_list_size = self._hard_header_list
        self._in = bytearray()
        self._out = bytearray()
        self._preface = b"" if client_side else PREFACE
        # RFC 9113 3.4: the peer's first frame is a SETTINGS frame (not an ACK).
        self._first_frame = True
        self._initiated = False
        self._error: H2ConnectionError | None = None
        # header block in progress (HEADERS without END_HEADERS): its stream, frames and bytes
        self._block_sid = 0
        self._block_frames = 0
        self._block_bytes = 0
        self._refuse_sid = 0
        self._goaway_sent: int | None = None
        self._goaway_received = False
        # server side: peer streams whose response has not started (rapid-reset accounting)
        self._unanswered: set[int] = set()
        self._peer_streams = 0
        self._premature_resets = 0
        # streams opened in the current receive() call (to drop open-and-reset pairs whole)
        self._batch_opened: set[int] = set()
        self._batch_dropped: set[int] = set()
        # frame-flood accounting (Envoy's ProtocolConstraints)
        self._empty_frames = 0  # consecutive, see H2Settings
        self._priority_frames = 0
        self._window_updates = 0
        self._data_frames_sent = 0
        self._own_streams = 0  # client side: streams we opened
        self._control_queued = 0  # control frames not yet taken by data_to_send()
        self._control_in_flight = 0  # taken, not yet reported written (output_written())

    # -- connection ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface (client), our SETTINGS and the connection WINDOW_UPDATE."""
        if self._initiated:
            return
        self._initiated = True
        self._h2.initiate_connection()
        # the limit is on the wire now; h2's own check would turn an excess stream into a
        # connection error (and counts trailers on a reset stream as a new one): ours refuses
        del self._h2.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        extra = self._settings.connection_window_size - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes read from the peer; the events they complete.

        Raises H2ConnectionError for a connection error (GOAWAY queued), again on later calls.
        """
        if self._error is not None:
            raise self._again()
        if not self._initiated:
            self.initiate()
        self._in += data
        events: list[Event] = []
        try:
            self._drain(events)
        except H2ConnectionError as exc:
            exc.events = self._finish(events)
            raise
        return self._finish(events)

    @property
    def pending_output(self) -> int:
        """Bytes queued for the peer and not yet taken by ``data_to_send``."""
        return len(self._out) + len(self._h2._data_to_send)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer (b"" if nothing). Call `output_written()` once the
        socket took it: until then its control frames count against the flood limit."""
        self._control_in_flight += self._control_queued
        self._control_queued = 0
        if not self._out:
            return self._h2.data_to_send()
        self._flush_h2()
        out = bytes(self._out)
        self._out.clear()
        return out

    def output_written(self) -> None:
        """Everything `data_to_send()` returned so far is in the socket's hands."""
        self._control_in_flight = 0

    def goaway(
        self, code: ErrorCode = ErrorCode.NO_ERROR, last_stream_id: int | None = None
    ) -> None:
        """Queue GOAWAY. Peer streams up to `last_stream_id` (default: the last one seen) go on;
        later ones are refused. It may be sent again with a lower id."""
        if last_stream_id is None:
            last_stream_id = self._h2.highest_inbound_stream_id
        self._flush_h2()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = int(code)
        self._out += frame.serialize()
        if self._goaway_sent is None or last_stream_id < self._goaway_sent:
            self._goaway_sent = last_stream_id

    # -- streams ---------------------------------------------------------------------------

    def new_stream_id(self) -> int:
        """Client side: the id for the next `send_headers` that opens a stream."""
        if not self._client:
            raise ValueError("only the client side opens streams")
        return self._h2.get_next_available_stream_id()

    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool = False) -> None:
        """Request head (client, opens the stream) or response head (server, 1xx allowed)."""
        if self._gone(stream_id):
            return
        opens = self._client and stream_id not in self._h2.streams
        if opens and self._goaway_received:
            raise ValueError("the peer sent GOAWAY: no new streams")
        self._send_head(stream_id, headers, end_stream)
        if opens:
            self._own_streams += 1
        self._unanswered.discard(stream_id)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue body bytes, split into frames the peer accepts. The caller keeps
        len(data) <= sendable(stream_id) (ValueError otherwise)."""
        if self._gone(stream_id):
            return
        size = len(data)
        if size > self.sendable(stream_id):
            raise ValueError(
                f"stream {stream_id}: {size} bytes exceed the window ({self.sendable(stream_id)})"
            )
        send = self._h2.send_data
        try:
            if size == 0:
                if end_stream:
                    send(stream_id, b"", end_stream=True)
                    self._data_frames_sent += 1
                return
            step = self._h2.max_outbound_frame_size
            view = memoryview(data)
            for start in range(0, size, step):
                last = start + step >= size
                send(stream_id, view[start : start + step], end_stream=end_stream and last)
                self._data_frames_sent += 1
        except h2.exceptions.ProtocolError as exc:
            raise ValueError(f"stream {stream_id}: {exc}") from exc

    def sendable(self, stream_id: int) -> int:
        """Bytes `send_data` may take now: the smaller of the stream and connection windows;
        0 if the stream cannot send."""
        if self._error is not None:
            return 0
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream.state_machine.state not in _SENDING_STATES:
            return 0
        window: int = min(
            self._h2.outbound_flow_control_window, stream.outbound_flow_control_window
        )
        return max(0, window)  # a lowered INITIAL_WINDOW_SIZE can make it negative

    def send_trailers(self, stream_id: int, headers: list[Header]) -> None:
        """Trailers, minus the fields RFC 9110 6.5.1 keeps out of them; they end the stream
        (an empty DATA frame does when no field is left)."""
        if self._gone(stream_id):
            return
        headers = trailer_fields(headers)
        if headers:
            self._send_head(stream_id, headers, True)
        else:
            self.end_stream(stream_id)

    def end_stream(self, stream_id: int) -> None:
        """End the stream with an empty DATA frame."""
        if self._gone(stream_id):
            return
        try:
            self._h2.end_stream(stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise ValueError(f"stream {stream_id}: {exc}") from exc
        self._data_frames_sent += 1

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """RST_STREAM; a no-op if the stream is already closed."""
        if self._error is not None:
            return
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream.closed:
            return
        self._h2.reset_stream(stream_id, int(code))
        self._control_queued += 1  # checked against the limit on the next frame read
        self._unanswered.discard(stream_id)

    def consumed(self, stream_id: int, n: int) -> None:
        """Give back `n` flow-controlled bytes of `stream_id` (a Data event's flow_length).

        Works after the stream closed (connection credit only). WINDOW_UPDATEs are batched by h2:
        one goes out once half of a window is owed (or the window is empty), so many tiny frames do
        not cost a WINDOW_UPDATE each.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if n == 0 or self._error is not None:
            return
        if stream_id <= 0 or (
            stream_id not in self._h2.streams and stream_id > self._highest_id(stream_id)
        ):
            # h2 would take the connection credit and then raise, losing its WINDOW_UPDATE
            raise ValueError(f"unknown stream {stream_id}")
        self._h2.acknowledge_received_data(n, stream_id)

    def stream_open(self, stream_id: int) -> bool:
        """Whether the stream is open or half-closed."""
        stream = self._h2.streams.get(stream_id)
        return self._error is None and stream is not None and stream.open

    def stream_ended_locally(self, stream_id: int) -> bool:
        """Server side: whether we sent END_STREAM on a stream the peer has not ended
        (half-closed local): the response is complete, the request is not."""
        if self._client:
            return False  # a client leaving early abandons the response: that is CANCEL
        stream = self._h2.streams.get(stream_id)
        return stream is not None and stream.state_machine.state == _HALF_CLOSED_LOCAL

    @property
    def open_inbound_streams(self) -> int:
        return self._h2.open_inbound_streams

    @property
    def open_outbound_streams(self) -> int:
        return self._h2.open_outbound_streams

    @property
    def remote_max_concurrent_streams(self) -> int:
        """The peer's limit on streams we open (2**32 + 1 while it has set none)."""
        n: int = self._h2.remote_settings.max_concurrent_streams
        return n

    @property
    def last_peer_stream_id(self) -> int:
        """The highest stream id the peer opened (for GOAWAY)."""
        return self._h2.highest_inbound_stream_id

    @property
    def goaway_received(self) -> bool:
        """The peer sent GOAWAY: no new streams on this connection."""
        return self._goaway_received

    @property
    def closed(self) -> bool:
        """A connection error happened (H2ConnectionError was raised)."""
        return self._error is not None

    # -- receiving -------------------------------------------------------------------------

    def _drain(self, events: list[Event]) -> None:
        buf = self._in
        pos = 0
        try:
            if self._preface:
                pos = self._check_preface(buf)
            end = len(buf)
            max_frame = self._settings.max_frame_size
            while end - pos >= 9:
                length = int.from_bytes(buf[pos : pos + 3], "big")
                if length > max_frame:
                    # checked on the header: h2 would buffer the whole frame first
                    self._fail(ErrorCode.FRAME_SIZE_ERROR, f"{length}-byte frame")
                stop = pos + 9 + length
                if stop > end:
                    break
                frame = bytes(buf[pos:stop])
                pos = stop
                self._frame(frame, events)
        finally:
            del buf[:pos]

    def _check_preface(self, buf: bytearray) -> int:
        want = self._preface
        n = min(len(want), len(buf))
        if buf[:n] != want[:n]:
            self._fail(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
        self._preface = want[n:]
        if not self._preface:
            self._h2.receive_data(PREFACE)  # h2's frame buffer expects (and strips) it
        return n

    def _frame(self, frame: bytes, events: list[Event]) -> None:
        ftype = frame[3]
        flags = frame[4]
        if self._first_frame:
            if ftype != _SETTINGS or flags & _ACK:
                self._fail(ErrorCode.PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self._first_frame = False
        sid = int.from_bytes(frame[5:9], "big") & 0x7FFF_FFFF
        if ftype == _DATA or ftype == _HEADERS or ftype == _CONTINUATION:
            if (flags & _END_STREAM and ftype != _CONTINUATION) or _has_payload(
                frame, ftype, flags
            ):
                self._empty_frames = 0
            else:
                self._empty_frames += 1
                self._check_empty()
        elif ftype == _PRIORITY:
            self._priority_frames += 1
            limit = self._settings.max_inbound_priority_frames_per_stream
            if self._priority_frames > limit * (1 + self._opened_streams()):
                self._flood(INBOUND_PRIORITY_FRAMES_FLOOD, "too many PRIORITY frames")
        elif ftype == _WINDOW_UPDATE:
            self._window_updates += 1
            per_data = self._settings.max_inbound_window_update_frames_per_data_frame_sent
            # Envoy's allowance: a few, two per stream, and `per_data` per DATA frame sent
            if self._window_updates > 5 + 2 * (
                self._opened_streams() + per_data * self._data_frames_sent
            ):
                self._flood(INBOUND_WINDOW_UPDATE_FRAMES_FLOOD, "too many WINDOW_UPDATE frames")
        elif ftype > _CONTINUATION:
            # an unknown (extension) type: ignored, so it costs us work and tells us nothing
            self._empty_frames += 1
            self._check_empty()
        if self._block_sid:
            if ftype != _CONTINUATION or sid != self._block_sid:
                self._fail(ErrorCode.PROTOCOL_ERROR, "frame interleaved in a header block")
            self._block_frames += 1
            self._block_bytes += len(frame) - 9
            if self._block_frames > _MAX_CONTINUATIONS:
                self._fail(ErrorCode.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
            if self._block_bytes > self._hard_header_list:
                self._fail(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
            if flags & _END_HEADERS:
                self._block_sid = 0
        elif ftype == _HEADERS or ftype == _PUSH_PROMISE:
            if len(frame) - 9 > self._hard_header_list:
                self._fail(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
            if sid and not flags & _END_HEADERS:
                self._block_sid = sid
                self._block_frames = 0
                self._block_bytes = len(frame) - 9
            if ftype == _HEADERS and not self._client:
                self._admit(sid)
        elif ftype == _GOAWAY:
            self._receive_goaway(frame, events)
            return
        self._feed(frame, events)

    def _admit(self, sid: int) -> None:
        """Server side, before h2 sees a HEADERS frame: refuse it if it opens one stream too many
        (or arrives after our GOAWAY). h2 still decodes it, then we reset it."""
        h2conn = self._h2
        if sid in h2conn.streams or sid <= h2conn.highest_inbound_stream_id or not sid & 1:
            return  # not a new peer stream: h2 deals with it
        if self._goaway_sent is not None and sid > self._goaway_sent:
            self._refuse_sid = sid
        elif h2conn.open_inbound_streams >= self._settings.max_concurrent_streams:
            self._refuse_sid = sid

    def _check_empty(self) -> None:
        if self._empty_frames > self._settings.max_consecutive_inbound_frames_with_empty_payload:
            self._flood(INBOUND_EMPTY_FRAMES_FLOOD, "too many frames with an empty payload")

    def _count_control(self) -> None:
        self._control_queued += 1
        if (
            self._control_queued + self._control_in_flight
            > self._settings.max_outbound_control_frames
        ):
            self._flood(OUTBOUND_CONTROL_FLOOD, "too many control frames queued")

    def _opened_streams(self) -> int:
        """Streams opened on the connection, by either side (counted, not taken from the
        highest id: a peer picks its ids)."""
        return self._peer_streams + self._own_streams

    def _flood(self, flood: str, reason: str) -> None:
        self.goaway(ErrorCode.ENHANCE_YOUR_CALM)
        error = self._died(ErrorCode.ENHANCE_YOUR_CALM, reason)
        error.flood = flood
        raise error

    def _feed(self, frame: bytes, events: list[Event]) -> None:
        pending = self._h2._data_to_send
        before = len(pending)
        try:
            h2_events = self._h2.receive_data(frame)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY already
            raise self._died(_error_code(exc.error_code), str(exc) or type(exc).__name__) from exc
        except (HyperframeError, ValueError, LookupError, TypeError, AssertionError) as exc:
            # not expected from h2, but a peer must not be able to crash the connection task
            self._fail(ErrorCode.INTERNAL_ERROR, f"h2: {type(exc).__name__}: {exc}")
        if len(pending) != before:
            # h2 answered the frame itself (a PING or SETTINGS ACK, RST_STREAM on a closed
            # stream): a peer that sends these without reading grows our output
            self._count_control()
        bad = self._h2.bad_body_length
        if bad is not None:
            # a DATA frame beyond the stream's content-length, or ending it short (RFC 9113
            # 8.1.1: malformed, a stream error): only that stream is reset, and the frame's
            # flow-controlled bytes, which nobody will consume, go back to the connection
            self._h2.bad_body_length = None
            sid, flow_length = bad
            self._codec_reset(sid, ErrorCode.PROTOCOL_ERROR, events)
            if flow_length:
                self._h2.acknowledge_received_data(flow_length, sid)
            return
        self._translate(h2_events, events)

    def _translate(self, h2_events: list[h2.events.Event], out: list[Event]) -> None:
        folded: set[int] = set()  # h2's StreamEnded events already folded into their parent
        for ev in h2_events:
            kind = type(ev)
            if kind is h2.events.DataReceived:
                ended = ev.stream_ended is not None
                if ended:
                    folded.add(id(ev.stream_ended))
                if not ev.data and not ended:
                    # an empty DATA frame tells the app nothing; give back any padding here
                    if ev.flow_controlled_length:
                        self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                out.append(Data(ev.stream_id, ev.data, ev.flow_controlled_length, ended))
            elif kind is h2.events.RequestReceived:
                if ev.stream_ended is not None:
                    folded.add(id(ev.stream_ended))
                self._on_request(ev, out)
            elif kind is h2.events.ResponseReceived or kind is h2.events.TrailersReceived:
                ended = ev.stream_ended is not None
                if ended:
                    folded.add(id(ev.stream_ended))
                sid = ev.stream_id
                if self._check_head(sid, ev.headers, out):
                    if kind is h2.events.TrailersReceived:
                        # h2 took a content-length among the trailers (a framing field that
                        # has no business there) as the expected length: no check then
                        odd = any(n == b"content-length" for n, _ in ev.headers)
                        if odd or self._length_kept(sid, out):
                            out.append(Trailers(sid, ev.headers))
                    else:
                        # h2 checked that :status is there, first (the only response pseudo)
                        if ev.headers[0][1] in _NO_CONTENT_STATUSES:
                            self._no_content(sid)
                        if not ended or self._length_kept(sid, out):
                            out.append(ResponseHeaders(sid, ev.headers, ended))
            elif kind is h2.events.InformationalResponseReceived:
                if self._check_head(ev.stream_id, ev.headers, out):
                    out.append(InformationalHeaders(ev.stream_id, ev.headers))
            elif kind is h2.events.StreamEnded:
                if id(ev) not in folded:  # h2 4.1 always has a parent; keep the contract anyway
                    out.append(Data(ev.stream_id, b"", 0, True))
            elif kind is h2.events.StreamReset:
                self._on_reset(ev, out)
            elif kind is h2.events.WindowUpdated:
                out.append(WindowOpened(ev.stream_id))
            elif kind is h2.events.RemoteSettingsChanged:
                self._on_settings(ev, out)
            # PING is answered by h2 and SETTINGS are ACKed by it; PRIORITY, ALTSVC and unknown
            # frames mean nothing to a proxy

    def _on_request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = ev.stream_id
        if sid == self._refuse_sid:
            self._refuse_sid = 0
            self._codec_reset(sid, ErrorCode.REFUSED_STREAM, out)
            return
        if not self._check_head(sid, ev.headers, out):
            return
        if ev.stream_ended is not None and not self._length_kept(sid, out):
            return
        self._peer_streams += 1
        self._unanswered.add(sid)
        self._batch_opened.add(sid)
        out.append(RequestHeaders(sid, ev.headers, ev.stream_ended is not None))

    def _check_head(self, sid: int, headers: list[Header], out: list[Event]) -> bool:
        """Field syntax and list size (h2 checks neither); a bad head resets its stream."""
        size = 0
        name_ok = _FIELD_NAME.fullmatch
        bad_value = _BAD_VALUE.search
        for name, value in headers:
            size += len(name) + len(value) + 32
            if not name_ok(name) or bad_value(value):
                self._codec_reset(sid, ErrorCode.PROTOCOL_ERROR, out)
                return False
        if size > self._settings.max_header_list_size:
            self._codec_reset(sid, ErrorCode.PROTOCOL_ERROR, out)
            return False
        return True

    def _length_kept(self, sid: int, out: list[Event]) -> bool:
        """A HEADERS frame (a head or trailers) ended the stream: its DATA add up to its
        content-length (h2 checks only when DATA ends a stream). A stream error otherwise."""
        stream = self._h2.streams.get(sid)
        if stream is None:
            return True
        expected = stream._expected_content_length
        if expected is None or expected == stream._actual_content_length:
            return True
        self._codec_reset(sid, ErrorCode.PROTOCOL_ERROR, out)
        return False

    def _no_content(self, sid: int) -> None:
        """A 204 or 304 response has no content whatever its content-length says (RFC 9110
        6.4.1), as h2 already assumes for the response to a HEAD request."""
        stream = self._h2.streams.get(sid)
        if stream is not None:
            stream._expected_content_length = 0

    def _codec_reset(self, sid: int, code: ErrorCode, out: list[Event]) -> None:
        stream = self._h2.streams.get(sid)
        if stream is not None and not stream.closed:
            self._h2.reset_stream(sid, int(code))
            self._count_control()
        self._unanswered.discard(sid)
        out.append(StreamReset(sid, code))

    def _on_reset(self, ev: h2.events.StreamReset, out: list[Event]) -> None:
        sid = ev.stream_id
        if ev.remote_reset and sid in self._unanswered:
            self._premature_resets += 1
            if sid in self._batch_opened:
                self._batch_dropped.add(sid)
        self._unanswered.discard(sid)
        out.append(StreamReset(sid, _error_code(ev.error_code)))
        premature = self._premature_resets
        if premature > self._settings.max_premature_resets and 2 * premature >= self._peer_streams:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"rapid reset: {premature} of {self._peer_streams} streams reset before a response",
            )

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged, out: list[Event]) -> None:
        changed = ev.changed_settings
        mcs = changed.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        out.append(RemoteSettings(None if mcs is None else mcs.new_value))
        iws = changed.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if iws is not None and iws.new_value > (iws.original_value or 0):
            out.append(WindowOpened(0))
        table = changed.get(SettingCodes.HEADER_TABLE_SIZE)
        if table is not None:
            encoder = self._h2.encoder
            size = min(table.new_value, _MAX_ENCODER_TABLE)
            encoder.header_table_size = size
            # RFC 7541 §4.2: signal the smallest size since the last block, then the final one;
            # h2 appends one entry per SETTINGS frame, which a SETTINGS flood would grow
            changes = encoder.table_size_changes
            if len(changes) > 1:
                low = min(changes)
                encoder.table_size_changes = [low, size] if low < size else [size]

    def _receive_goaway(self, frame: bytes, out: list[Event]) -> None:
        view = memoryview(frame)
        try:
            parsed, _ = Frame.parse_frame_header(view[:9])
            parsed.parse_body(view[9:])
        except InvalidFrameError:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "malformed GOAWAY")
        except HyperframeError:
            self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        assert isinstance(parsed, GoAwayFrame)  # the caller dispatched on the frame type
        last = parsed.last_stream_id
        self._goaway_received = True
        # ours above `last` were never processed and the peer ignores frames on them: close
        # them in h2 without sending anything
        doomed = [
            sid
            for sid, stream in self._h2.streams.items()
            if sid > last and (sid & 1) == self._client and not stream.closed
        ]
        if doomed:
            self._flush_h2()
            for sid in doomed:
                self._h2.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            self._h2.data_to_send()  # the RST_STREAMs: dropped
        out.append(GoAway(_error_code(parsed.error_code), last))

    def _finish(self, events: list[Event]) -> list[Event]:
        """Drop streams opened and reset by the peer within one read: nobody needs to hear of
        them (the rapid-reset pattern); their flow-control credit goes straight back."""
        dropped = self._batch_dropped
        self._batch_opened.clear()
        if not dropped:
            return events
        kept: list[Event] = []
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            if sid in dropped:
                if type(ev) is Data and ev.flow_length:
                    self._h2.acknowledge_received_data(ev.flow_length, sid)
                continue
            kept.append(ev)
        dropped.clear()
        return kept

    # -- helpers ---------------------------------------------------------------------------

    def _send_head(self, sid: int, headers: list[Header], end_stream: bool) -> None:
        """h2's send_headers, after our own check of the list: h2 (with its outbound checks
        on) would find a bad field only while HPACK-encoding, leaving the encoder's dynamic
        table holding entries the peer never got. Nothing is encoded for a refused list."""
        try:
            _check_outbound(headers)
        except ValueError as exc:
            raise ValueError(f"stream {sid}: {exc}") from None
        try:
            self._h2.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:  # state errors: nothing was encoded
            raise ValueError(f"stream {sid}: {exc}") from exc

    def _highest_id(self, sid: int) -> int:
        ours = (sid & 1) == self._client
        return self._h2.highest_outbound_stream_id if ours else self._h2.highest_inbound_stream_id

    def _gone(self, sid: int) -> bool:
        """Reset (by either side) or the connection failed: sends become no-ops."""
        if self._error is not None:
            return True
        return self._h2._stream_closed_by(sid) in _RESET_BY

    def _flush_h2(self) -> None:
        # keep frame order when we queue frames h2 does not know about
        self._out += self._h2.data_to_send()

    def _fail(self, code: ErrorCode, reason: str) -> NoReturn:
        """A connection error found here (not by h2): queue GOAWAY and raise."""
        self.goaway(code)
        raise self._died(code, reason)

    def _died(self, code: ErrorCode, reason: str) -> H2ConnectionError:
        self._error = H2ConnectionError(code, reason)
        self._block_sid = 0
        return self._error

    def _again(self) -> H2ConnectionError:
        assert self._error is not None
        return H2ConnectionError(self._error.code, self._error.reason)


def _has_payload(frame: bytes, ftype: int, flags: int) -> bool:
    """Whether a DATA, HEADERS or CONTINUATION frame carries anything beyond padding and
    priority fields."""
    n = len(frame) - 9
    if n and flags & _PADDED and ftype != _CONTINUATION:
        n -= frame[9] + 1
    if ftype == _HEADERS and flags & _PRIORITY_FLAG:
        n -= 5
    return n > 0


# -- header translation ----------------------------------------------------------------------

#: Connection-specific fields, never forwarded into or out of HTTP/2 (RFC 9113 §8.2.2). `te` is
#: handled apart: only `te: trailers` crosses.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)


@dataclass(frozen=True, slots=True)
class H2Request:
    """An HTTP/2 request head: pseudo-headers apart, regular headers in order."""

    method: bytes
    scheme: bytes
    authority: bytes | None
    path: bytes
    headers: list[Header]


#: What Connection can never take off (the nomination is ignored, as Envoy does): framing, and
#: the Host that becomes :authority.
_NOT_NOMINABLE = frozenset((b"content-length", b"transfer-encoding", b"host"))


def _regular(headers: list[Header], *, keep_te: bool) -> list[Header]:
    """Lowercased names, minus hop-by-hop fields, those Connection names (but never framing or
    Host), and pseudo-headers."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    named -= _NOT_NOMINABLE
    out: list[Header] = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named or lname.startswith(b":"):
            continue
        if lname == b"te" and not (keep_te and value.strip().lower() == b"trailers"):
            continue
        out.append((lname, value))
    return out


def request_to_h2(
    method: bytes,
    target: bytes,
    authority: bytes | None,
    headers: list[Header],
    scheme: bytes = b"http",
) -> list[Header]:
    """An HTTP/1 request head as an HTTP/2 header list: pseudo-headers first, `host` folded into
    `:authority` (an explicit `authority` wins), hop-by-hop fields dropped, names lowercased.
    CONNECT gets only :method and :authority (the target if no authority is given)."""
    regular = _regular(headers, keep_te=True)
    if authority is None:
        for name, value in regular:
            if name == b"host":
                authority = value
                break
    regular = [(n, v) for n, v in regular if n != b"host"]
    if method == b"CONNECT":
        return [(b":method", method), (b":authority", authority or target), *regular]
    out: list[Header] = [(b":method", method), (b":scheme", scheme)]
    if authority is not None:
        out.append((b":authority", authority))
    out.append((b":path", target))
    out.extend(regular)
    return out


_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def _check_outbound(headers: list[Header]) -> None:
    """What RFC 9113 8.2 allows in a header block we send: lowercase token names, pseudo-
    headers first, no connection-specific fields, ``te`` only as ``trailers``, no control
    characters but HTAB in values. ValueError otherwise."""
    regular = False
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name[:64]!r}")
        if name[0] == 0x3A:  # ":"
            if regular:
                raise ValueError(f"pseudo-header {name!r} after regular headers")
        else:
            regular = True
            if name in _CONNECTION_SPECIFIC:
                raise ValueError(f"connection-specific header {name!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise ValueError("TE header other than trailers")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value in header {name!r}")


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_VISIBLE = re.compile(rb"[\x00-\x20\x7f]")


_SPLIT_SPECIAL = frozenset((b"cookie", b"host", b"x-forwarded-client-cert"))


def request_from_h2(headers: list[Header], *, drop_xfcc: bool = False) -> H2Request:
    """Split an HTTP/2 request header list; `cookie` crumbs are joined with b"; ".
    Raises H2HeaderError on missing, duplicate, unknown or misplaced pseudo-headers.
    ``drop_xfcc``: leave out x-forwarded-client-cert (the client may not set it)."""
    pseudo: dict[bytes, bytes] = {}
    regular: list[Header] = []
    cookies: list[bytes] = []
    cookie_at = -1
    host: bytes | None = None
    for name, value in headers:
        if name.startswith(b":"):
            if regular or cookies:
                raise H2HeaderError(f"pseudo-header {name!r} after regular headers")
            if name not in _REQUEST_PSEUDO:
                raise H2HeaderError(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise H2HeaderError(f"duplicate {name!r}")
            pseudo[name] = value
        elif name in _SPLIT_SPECIAL:  # one set lookup for the usual field, not one per name
            if name == b"cookie":
                if cookie_at < 0:
                    cookie_at = len(regular)
                cookies.append(value)
            elif name == b"host":
                # never forwarded as a field of its own: it is the authority (RFC 9113 8.3.1)
                if host is not None:
                    raise H2HeaderError("more than one host")
                host = value
            elif not drop_xfcc:
                regular.append((name, value))
        else:
            regular.append((name, value))
    if cookies:
        regular.insert(cookie_at, (b"cookie", b"; ".join(cookies)))
    method = pseudo.get(b":method")
    if not method:
        raise H2HeaderError("missing :method")
    authority = pseudo.get(b":authority")
    if host is not None:
        if not authority:
            authority = host  # routing and the upstream's Host take it, as Envoy does
        elif host.lower() != authority.lower():
            raise H2HeaderError("host differs from :authority")
    if method == b"CONNECT":
        if not authority:
            raise H2HeaderError("CONNECT without :authority")
        if b":scheme" in pseudo or b":path" in pseudo:
            raise H2HeaderError("CONNECT with :scheme or :path")
        return H2Request(method, b"", authority, b"", regular)
    scheme = pseudo.get(b":scheme")
    path = pseudo.get(b":path")
    if not scheme:
        raise H2HeaderError("missing :scheme")
    if not path:
        raise H2HeaderError("missing :path")
    if not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")):
        raise H2HeaderError(f"bad :path {path[:64]!r}")
    # What becomes an HTTP/1 request line must read back as the same request there: a token
    # method, and a path and authority without whitespace or control bytes (no smuggling).
    if not _TOKEN.fullmatch(method):
        raise H2HeaderError(f"bad :method {method[:64]!r}")
    if _NOT_VISIBLE.search(path):
        raise H2HeaderError(f"bad :path {path[:64]!r}")
    if authority is not None and (_NOT_VISIBLE.search(authority) or b"@" in authority):
        # RFC 9113 8.3.1: no userinfo (an HTTP/1 upstream refuses it in a Host)
        raise H2HeaderError(f"bad :authority {authority[:64]!r}")
    regular = _one_content_length(regular)
    return H2Request(method, scheme, authority, path, regular)


def _one_content_length(headers: list[Header]) -> list[Header]:
    """At most one ``content-length``, all digits: several equal ones collapse into one,
    differing ones are refused (an HTTP/1 upstream could read the body otherwise)."""
    seen = None
    out: list[Header] = []
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise H2HeaderError(f"bad content-length {value[:32]!r}")
            if seen is not None:
                if int(value) != int(seen):
                    raise H2HeaderError("differing content-length values")
                continue
            seen = value
        out.append((name, value))
    return out if seen is not None else headers


def response_to_h2(status: int, headers: list[Header]) -> list[Header]:
    """An HTTP/1 response head as an HTTP/2 header list: `:status` first, hop-by-hop dropped."""
    if not 100 <= status <= 999 or status == 101:
        raise ValueError(f"status {status} cannot be sent over HTTP/2")
    return [(b":status", b"%d" % status), *_regular(headers, keep_te=False)]


def trailers_to_h2(trailers: list[Header]) -> list[Header]:
    """HTTP/1 chunked trailers as an HTTP/2 trailer list: names lowercased, connection-specific
    fields (which HTTP/2 forbids, and which mean nothing in a trailer section) and `te`
    dropped. May be empty: then end the stream without trailers."""
    return _regular(trailers, keep_te=False)


def response_from_h2(headers: list[Header]) -> tuple[int, list[Header]]:
    """`(status, regular headers)`; H2HeaderError unless there is exactly one valid :status,
    first, and no other pseudo-header."""
    if not headers or headers[0][0] != b":status":
        raise H2HeaderError("missing :status")
    raw = headers[0][1]
    if len(raw) != 3 or not raw.isdigit() or raw[0] == 0x30:
        raise H2HeaderError(f"bad :status {raw[:16]!r}")
    regular = headers[1:]
    for name, _ in regular:
        if name.startswith(b":"):
            raise H2HeaderError(f"unexpected pseudo-header {name!r}")
    if raw[0] == 0x31:  # 1xx: no body, and the HTTP/1 encoder writes no framing for it
        return int(raw), list(regular)
    # an HTTP/1 client would frame the body by it: one value, or the response is refused
    return int(raw), _one_content_length(list(regular))
