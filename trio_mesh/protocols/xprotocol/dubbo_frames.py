"""Apache Dubbo (dubbo protocol) frames: header, request body, heartbeats, responses. Sans-IO.

Header, 16 bytes, big-endian: magic 0xdabb | flag (bit 7 request, bit 6 two-way, bit 5 event, low
5 bits serialization id; 2 = hessian2) | status (responses) | request id u64 | body length u32.

A request body (hessian2) is: dubbo version, service path, service version, method name, parameter
types (a JVM descriptor string), one value per parameter, the attachments map. Responses carry an
int kind (1 value, 0 exception, 2 null; 3-5 the same with attachments) then the value; a response
whose status is not OK carries a hessian2 string (the error message) instead.

Framework-free for now (the xprotocol interface will wrap these). No trio here.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .hessian2 import (
    DEFAULT_MAX_DEPTH,
    SKIPPED_VALUE,
    Hessian2Error,
    Hessian2Reader,
    encode_int,
    encode_string,
)

__all__ = [
    "DEFAULT_MAX_BODY_LENGTH",
    "FLAG_EVENT",
    "FLAG_REQUEST",
    "FLAG_TWO_WAY",
    "HEADER_LENGTH",
    "MAGIC",
    "SERIALIZATION_HESSIAN2",
    "DubboFrameError",
    "DubboHeader",
    "DubboRequest",
    "ResponseKind",
    "Status",
    "count_parameters",
    "decode_event_body",
    "decode_request",
    "decode_request_body",
    "encode_frame",
    "error_response",
    "get_request_id",
    "heartbeat_request",
    "heartbeat_response",
    "is_heartbeat",
    "is_readonly_event",
    "parse_header",
    "readonly_event",
    "replace_attachments",
    "set_request_id",
    "value_response",
]

HEADER_LENGTH = 16
MAGIC = 0xDABB
MAGIC_BYTES = b"\xda\xbb"
FLAG_REQUEST = 0x80
FLAG_TWO_WAY = 0x40
FLAG_EVENT = 0x20
SERIALIZATION_MASK = 0x1F
SERIALIZATION_HESSIAN2 = 2
DEFAULT_MAX_BODY_LENGTH = 8 * 1024 * 1024  # Dubbo's default payload limit
#: The data of the event a Dubbo provider sends each consumer connection when it shuts down
#: (Dubbo's ``Request.READONLY_EVENT``): the consumer sends nothing new on that connection.
READONLY_EVENT = "R"
_READONLY_BODY = encode_string(READONLY_EVENT)

_HEADER = struct.Struct(">HBBQI")
_U64 = struct.Struct(">Q")
_ID_MASK = 0xFFFF_FFFF_FFFF_FFFF


class DubboFrameError(ValueError):
    """A malformed or over-limit Dubbo frame (a bad body's Hessian2Error is its __cause__)."""


class Status(enum.IntEnum):
    OK = 20
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED_ERROR = 100


class ResponseKind(enum.IntEnum):
    WITH_EXCEPTION = 0
    VALUE = 1
    NULL_VALUE = 2
    WITH_EXCEPTION_WITH_ATTACHMENTS = 3
    VALUE_WITH_ATTACHMENTS = 4
    NULL_VALUE_WITH_ATTACHMENTS = 5


@dataclass(frozen=True, slots=True)
class DubboHeader:
    flag: int
    status: int
    request_id: int
    body_length: int

    @property
    def is_request(self) -> bool:
        return bool(self.flag & FLAG_REQUEST)

    @property
    def two_way(self) -> bool:
        return bool(self.flag & FLAG_TWO_WAY)

    @property
    def is_event(self) -> bool:
        return bool(self.flag & FLAG_EVENT)

    @property
    def serialization_id(self) -> int:
        return self.flag & SERIALIZATION_MASK

    @property
    def frame_length(self) -> int:
        return HEADER_LENGTH + self.body_length


@dataclass(slots=True)
class DubboRequest:
    """The routing-relevant part of a request body; the arguments are skipped, not decoded."""

    dubbo_version: str | None
    service_path: str
    service_version: str | None
    method_name: str
    parameter_types: str
    argument_count: int
    attachments: dict[str, object] = field(default_factory=dict)
    attachments_offset: int = 0  # where the attachments map starts, from the start of the body

    @property
    def interface(self) -> str:
        value = self.attachments.get("interface")
        return value if isinstance(value, str) else self.service_path

    @property
    def group(self) -> str | None:
        value = self.attachments.get("group")
        return value if isinstance(value, str) else None

    @property
    def version(self) -> str | None:
        value = self.attachments.get("version")
        return value if isinstance(value, str) else self.service_version


def parse_header(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    max_body_length: int = DEFAULT_MAX_BODY_LENGTH,
) -> DubboHeader | None:
    """The header at ``data[offset:]``, or None while fewer than 16 bytes are there. Checks the
    magic and that the body fits ``max_body_length`` (so a caller checks before buffering it)."""
    have = len(data) - offset
    if have < HEADER_LENGTH:
        if (have >= 1 and data[offset] != 0xDA) or (have >= 2 and data[offset + 1] != 0xBB):
            raise DubboFrameError("not a dubbo frame: bad magic")
        return None
    magic, flag, status, request_id, body_length = _HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise DubboFrameError(f"not a dubbo frame: magic 0x{magic:04x}")
    if body_length > max_body_length:
        raise DubboFrameError(f"dubbo body of {body_length} bytes exceeds {max_body_length}")
    return DubboHeader(flag, status, request_id, body_length)


def get_request_id(frame: bytes | bytearray | memoryview, offset: int = 0) -> int:
    request_id: int = _U64.unpack_from(frame, offset + 4)[0]
    return request_id


def set_request_id(frame: bytearray | memoryview, request_id: int, offset: int = 0) -> None:
    """Rewrites the request id of the frame at ``offset`` in place (negative ids are Java longs)."""
    if not -(1 << 63) <= request_id <= _ID_MASK:
        raise ValueError(f"request id {request_id} does not fit 64 bits")
    _U64.pack_into(frame, offset + 4, request_id & _ID_MASK)


_PRIMITIVES = frozenset("ZBCSIJFD")


def count_parameters(descriptor: str) -> int:
    """The number of parameters in a JVM descriptor list: ``"Ljava/lang/String;I[J"`` is 3."""
    n = 0
    i = 0
    end = len(descriptor)
    while i < end:
        c = descriptor[i]
        while c == "[":
            i += 1
            if i >= end:
                raise DubboFrameError(f"bad parameter types {descriptor!r}: dangling '['")
            c = descriptor[i]
        if c == "L":
            j = descriptor.find(";", i + 1)
            if j <= i + 1:
                raise DubboFrameError(f"bad parameter types {descriptor!r}: bad class name")
            i = j + 1
        elif c in _PRIMITIVES:
            i += 1
        else:
            raise DubboFrameError(f"bad parameter types {descriptor!r}: {c!r}")
        n += 1
    return n


def decode_request(
    frame: bytes | bytearray | memoryview,
    header: DubboHeader | None = None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_body_length: int = DEFAULT_MAX_BODY_LENGTH,
) -> DubboRequest:
    """Decodes the request body of a whole frame (header included), without copying it."""
    if header is None:
        header = parse_header(frame, max_body_length=max_body_length)
        if header is None:
            raise DubboFrameError("truncated dubbo header")
    if len(frame) < header.frame_length:
        raise DubboFrameError("truncated dubbo frame")
    if not header.is_request or header.is_event:
        raise DubboFrameError("not a dubbo invocation request")
    return _decode_body(
        frame, HEADER_LENGTH, header.frame_length, header.serialization_id, max_depth
    )


def decode_request_body(
    body: bytes | bytearray | memoryview,
    *,
    serialization_id: int = SERIALIZATION_HESSIAN2,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> DubboRequest:
    """Decodes an invocation request body (the bytes after the header)."""
    return _decode_body(body, 0, len(body), serialization_id, max_depth)


def _decode_body(
    data: bytes | bytearray | memoryview,
    start: int,
    end: int,
    serialization_id: int,
    max_depth: int,
) -> DubboRequest:
    if serialization_id != SERIALIZATION_HESSIAN2:
        raise DubboFrameError(f"unsupported dubbo serialization id {serialization_id}")
    try:
        r = Hessian2Reader(data, start, end, max_depth=max_depth, max_bytes=end - start)
        dubbo_version = r.read_string_or_none()
        service_path = r.read_string()
        service_version = r.read_string_or_none()
        method_name = r.read_string()
        parameter_types = r.read_string_or_none() or ""
        argc = count_parameters(parameter_types)
        for _ in range(argc):
            r.skip()
        attachments_offset = r.pos - start
        attachments: dict[str, object] = {}
        if not r.at_end:
            value = r.read()
            if value is not None:
                if not isinstance(value, dict):
                    raise DubboFrameError(f"dubbo attachments are a {type(value).__name__}")
                attachments = value
            if not r.at_end:
                raise DubboFrameError(f"{r.remaining} bytes after the dubbo attachments")
    except Hessian2Error as e:
        raise DubboFrameError(f"bad dubbo request body: {e}") from e
    return DubboRequest(
        dubbo_version,
        service_path,
        service_version,
        method_name,
        parameter_types,
        argc,
        attachments,
        attachments_offset,
    )


def replace_attachments(
    frame: bytes | bytearray | memoryview,
    header: DubboHeader,
    sets: Mapping[str, str],
    removed: Iterable[str] = (),
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> bytes:
    """A copy of the invocation request ``frame`` (header included) whose attachments have
    ``sets`` (string values) put in and the names in ``removed`` taken out; everything else,
    the other attachments included, is copied byte for byte (their values need no writer, and
    the hessian2 reference and class numbering stays as it was). Replacing or removing an
    attachment whose value is a list, map or object raises DubboFrameError (later values may
    refer to it)."""
    if header.serialization_id != SERIALIZATION_HESSIAN2:
        raise DubboFrameError(f"unsupported dubbo serialization id {header.serialization_id}")
    end = header.frame_length
    if len(frame) < end:
        raise DubboFrameError("truncated dubbo frame")
    data = bytes(frame[:end])
    drop = set(removed)
    todo = dict(sets)
    try:
        r = Hessian2Reader(
            data, HEADER_LENGTH, end, max_depth=max_depth, max_bytes=end - HEADER_LENGTH
        )
        r.read_string_or_none()  # dubbo version
        r.read_string()  # service path
        r.read_string_or_none()  # service version
        r.read_string()  # method name
        for _ in range(count_parameters(r.read_string_or_none() or "")):
            r.skip()
        at = r.pos
        out = bytearray(data[:at])
        if r.at_end or r.peek_tag() == 0x4E:  # no attachments (or null): a new map
            r.pos = end
            out += b"H"
        else:
            first, entries = r.map_entries()
            out += data[at:first]  # the map's tag (and type)
            written: set[str] = set()
            for key, value, start, stop in entries:
                if isinstance(key, str) and (key in drop or key in todo):
                    if value is SKIPPED_VALUE:
                        raise DubboFrameError(f"dubbo attachment {key!r} is not a scalar")
                    if key in todo and key not in written:
                        out += encode_string(key) + encode_string(todo[key])
                        written.add(key)
                    continue
                out += data[start:stop]
            for key in written:
                del todo[key]
        for key, value in todo.items():
            out += encode_string(key) + encode_string(value)
        out += b"Z"
        if not r.at_end:
            raise DubboFrameError(f"{r.remaining} bytes after the dubbo attachments")
    except Hessian2Error as e:
        raise DubboFrameError(f"bad dubbo request body: {e}") from e
    body = memoryview(out)[HEADER_LENGTH:]
    return encode_frame(header.flag, header.status, header.request_id, body)


def decode_event_body(
    body: bytes | bytearray | memoryview,
    *,
    serialization_id: int = SERIALIZATION_HESSIAN2,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> object:
    """The data of an event (None for a heartbeat; Dubbo's readonly event sends "R")."""
    if serialization_id != SERIALIZATION_HESSIAN2:
        raise DubboFrameError(f"unsupported dubbo serialization id {serialization_id}")
    if len(body) == 0:
        return None
    try:
        r = Hessian2Reader(body, max_depth=max_depth, max_bytes=len(body))
        return r.read()
    except Hessian2Error as e:
        raise DubboFrameError(f"bad dubbo event body: {e}") from e


def is_heartbeat(header: DubboHeader, body: bytes | bytearray | memoryview) -> bool:
    """An event whose data is null (a request or a response)."""
    if not header.is_event:
        return False
    if len(body) == 0:
        return True
    if header.serialization_id != SERIALIZATION_HESSIAN2:
        return False  # an event in a serialization we do not read: not ours to call a heartbeat
    return (len(body) == 1 and body[0] == 0x4E) or decode_event_body(body) is None


def is_readonly_event(header: DubboHeader, body: bytes | bytearray | memoryview) -> bool:
    """An event request whose data is the string "R" (Dubbo's READONLY event)."""
    if not (header.is_request and header.is_event):
        return False
    if body == _READONLY_BODY:
        return True  # the usual encoding, without a reader
    if header.serialization_id != SERIALIZATION_HESSIAN2 or len(body) > 64:
        return False
    return decode_event_body(body) == READONLY_EVENT


def encode_frame(
    flag: int, status: int, request_id: int, body: bytes | bytearray | memoryview
) -> bytes:
    if not 0 <= flag <= 0xFF or not 0 <= status <= 0xFF:
        raise ValueError("flag and status are one byte each")
    return _HEADER.pack(MAGIC, flag, status, request_id & _ID_MASK, len(body)) + bytes(body)


def heartbeat_request(request_id: int, *, two_way: bool = True) -> bytes:
    flag = FLAG_REQUEST | FLAG_EVENT | SERIALIZATION_HESSIAN2 | (FLAG_TWO_WAY if two_way else 0)
    return encode_frame(flag, 0, request_id, b"N")


def readonly_event(request_id: int) -> bytes:
    """The READONLY event, as Dubbo's provider sends it: a oneway event request, data "R"."""
    flag = FLAG_REQUEST | FLAG_EVENT | SERIALIZATION_HESSIAN2
    return encode_frame(flag, 0, request_id, _READONLY_BODY)


def heartbeat_response(request_id: int) -> bytes:
    """The reply to a heartbeat: flag 0x22 (event, hessian2), status 20, a null body."""
    return encode_frame(FLAG_EVENT | SERIALIZATION_HESSIAN2, Status.OK, request_id, b"N")


def error_response(request_id: int, status: int, message: str) -> bytes:
    """A response with a non-OK status; its body is the error message as a hessian2 string."""
    if status == Status.OK:
        raise ValueError("an error response needs a status other than OK")
    return encode_frame(SERIALIZATION_HESSIAN2, status, request_id, encode_string(message))


def value_response(request_id: int, encoded_value: bytes | None) -> bytes:
    """An OK response: kind 1 and an already-encoded hessian2 value, or kind 2 for None."""
    if encoded_value is None:
        body = encode_int(ResponseKind.NULL_VALUE)
    else:
        body = encode_int(ResponseKind.VALUE) + encoded_value
    return encode_frame(SERIALIZATION_HESSIAN2, Status.OK, request_id, body)
