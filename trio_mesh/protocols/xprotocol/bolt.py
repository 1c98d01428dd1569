"""SOFA bolt (v1 and v2), sans-IO.

v1 request header (22 bytes): proto=1 | type | cmdcode u16 | ver2 | request id u32 | codec |
timeout i32 (ms) | class length u16 | header length u16 | content length u32.
v1 response header (20 bytes): the same up to codec, then status u16 | class length u16 |
header length u16 | content length u32.
v2 (proto=2) inserts ver1 after proto and a switch byte after codec (request 24 bytes, response
22); when ver1 is 2 and switch bit 0 (CRC) is on, a CRC32 of the whole frame follows the content.
Then: class name, header map ([u32 length][key][u32 length][value]..., 0xFFFFFFFF = absent),
content. type: 0 response, 1 request, 2 oneway; cmdcode: 0 heartbeat, 1 request, 2 response,
100 GoAway (MOSN's control command: a request, id 0, no class, headers or content, sent by a
side that is draining; SOFA bolt's own clients and anthunder do not know it).

Error replies follow MOSN's choice of status per error kind (its ``Mapping``), and carry no class
name and no content, as MOSN's hijack replies do; heartbeat replies are what SOFA bolt's and
anthunder's servers send (cmdcode 0, type response, status SUCCESS, no class).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from .base import (
    DEFAULT_MAX_FRAME_SIZE,
    Codec,
    ErrorKind,
    Frame,
    FrameKind,
    FrameTooLarge,
    Match,
    XProtocolError,
    header_changes,
)

__all__ = [
    "BOLT",
    "BoltCodec",
    "BoltFrame",
    "BoltGoAwayFrame",
    "ResponseStatus",
    "encode_header_map",
]

NAME = "bolt"

PROTOCOL_V1 = 1
PROTOCOL_V2 = 2

TYPE_RESPONSE = 0
TYPE_REQUEST = 1
TYPE_ONEWAY = 2

CMD_HEARTBEAT = 0
CMD_REQUEST = 1
CMD_RESPONSE = 2
CMD_GOAWAY = 100  # MOSN's control commands count from 100

CODEC_HESSIAN2 = 1
CODEC_PROTOBUF = 11

SOFA_REQUEST_CLASS = "com.alipay.sofa.rpc.core.request.SofaRequest"
SOFA_RESPONSE_CLASS = "com.alipay.sofa.rpc.core.response.SofaResponse"

_CRC_SWITCH = 0x01


class ResponseStatus:
    """SOFA bolt's ResponseStatus codes."""

    SUCCESS = 0x0000
    ERROR = 0x0001
    SERVER_EXCEPTION = 0x0002
    UNKNOWN = 0x0003
    SERVER_THREADPOOL_BUSY = 0x0004
    ERROR_COMM = 0x0005
    NO_PROCESSOR = 0x0006
    TIMEOUT = 0x0007
    CLIENT_SEND_ERROR = 0x0008
    CODEC_EXCEPTION = 0x0009
    CONNECTION_CLOSED = 0x0010
    SERVER_SERIAL_EXCEPTION = 0x0011
    SERVER_DESERIAL_EXCEPTION = 0x0012


_STATUS_NAMES = {
    v: k for k, v in vars(ResponseStatus).items() if k.isupper() and isinstance(v, int)
}

# MOSN (pkg/protocol/xprotocol/bolt/protocol.go Mapping, with pkg/types reason2code):
# no route and no healthy upstream -> NO_PROCESSOR; upstream reset / connect failure are
# "no healthy upstream" there too; overflow -> SERVER_THREADPOOL_BUSY; timeout -> TIMEOUT;
# codec -> CODEC_EXCEPTION; anything else -> UNKNOWN.
_STATUS_FOR = {
    ErrorKind.NO_ROUTE: ResponseStatus.NO_PROCESSOR,
    ErrorKind.NO_HEALTHY_HOST: ResponseStatus.NO_PROCESSOR,
    ErrorKind.UPSTREAM_FAILURE: ResponseStatus.NO_PROCESSOR,
    ErrorKind.UPSTREAM_RESET: ResponseStatus.NO_PROCESSOR,
    ErrorKind.TIMEOUT: ResponseStatus.TIMEOUT,
    ErrorKind.OVERFLOW: ResponseStatus.SERVER_THREADPOOL_BUSY,
    ErrorKind.CODEC_ERROR: ResponseStatus.CODEC_EXCEPTION,
    ErrorKind.INTERNAL: ResponseStatus.UNKNOWN,
}

# proto, type, cmdcode, ver2, request id, codec, timeout, class len, header len, content len
_REQ_V1 = struct.Struct(">BBHBIBiHHI")
# proto, type, cmdcode, ver2, request id, codec, status, class len, header len, content len
_RESP_V1 = struct.Struct(">BBHBIBHHHI")
# proto, ver1, type, cmdcode, ver2, request id, codec, switch, timeout, class/header/content len
_REQ_V2 = struct.Struct(">BBBHBIBBiHHI")
_RESP_V2 = struct.Struct(">BBBHBIBBHHHI")
_U32 = struct.Struct(">I")
_ABSENT = 0xFFFFFFFF

_KINDS = {TYPE_REQUEST: FrameKind.REQUEST, TYPE_ONEWAY: FrameKind.ONEWAY}


_new_frame = object.__new__


def _err(message: str) -> XProtocolError:
    return XProtocolError(message, protocol=NAME)


def _parse_header_map(buf: bytearray, start: int, end: int) -> dict[str, str]:
    """Bolt's header map in ``buf[start:end]``; entries whose key or value is absent are left
    out. Each step consumes at least 8 bytes, so the work is bounded by the header length."""
    out: dict[str, str] = {}
    i = start
    unpack = _U32.unpack_from
    try:
        while i < end:
            if end - i < 4:
                raise _err("bolt header map: truncated key length")
            klen = unpack(buf, i)[0]
            i += 4
            key = None
            if klen != _ABSENT:
                if klen > end - i:
                    raise _err("bolt header map: key longer than the header")
                key = str(buf[i : i + klen], "utf-8")
                i += klen
            if end - i < 4:
                raise _err("bolt header map: key without a value")
            vlen = unpack(buf, i)[0]
            i += 4
            value = None
            if vlen != _ABSENT:
                if vlen > end - i:
                    raise _err("bolt header map: value longer than the header")
                value = str(buf[i : i + vlen], "utf-8")
                i += vlen
            if key is not None and value is not None:
                out[key] = value
    except UnicodeDecodeError as exc:
        raise _err(f"bolt header map: not UTF-8 ({exc.reason})") from None
    return out


def _view(raw: dict[str, str]) -> dict[str, str]:
    """A request's header view from its header map: the map plus ``service`` and ``method``."""
    service = raw.get("service") or raw.get("sofa_head_target_service")
    if service:
        raw["service"] = service
    method = raw.get("sofa_head_method_name")
    if method:
        raw["method"] = method
    return raw


class _RequestHeaders(Mapping[str, str]):
    """A bolt request's header view, read-only, decoded when first read as a whole.

    Routing reads ``service`` alone: the decoder's validating walk over the map noted where
    the values ``service`` is made of lie, so ``get("service")`` decodes one or two strings
    instead of the whole map. Everything else decodes the whole map once (as `BoltFrame`'s
    own `_decode_headers`). Holds the frame's buffer, not the frame (no reference cycle).
    """

    __slots__ = ("_buf", "_start", "_end", "_service", "_target", "_full")

    def __init__(
        self,
        buf: bytearray,
        start: int,
        end: int,
        service: tuple[int, int] | None,
        target: tuple[int, int] | None,
    ) -> None:
        self._buf = buf
        self._start = start
        self._end = end
        self._service = service  # (offset, length) of the last "service" value, if any
        self._target = target  # the same for "sofa_head_target_service"
        self._full: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        full = self._full
        if full is None:
            full = self._full = _view(_parse_header_map(self._buf, self._start, self._end))
        return full

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        if key == "service" and self._full is None:
            buf = self._buf
            svc = self._service
            value = str(buf[svc[0] : svc[0] + svc[1]], "utf-8") if svc is not None else None
            if not value and self._target is not None:
                at, n = self._target
                value = str(buf[at : at + n], "utf-8") or value
            return default if value is None else value
        return self._load().get(key, default)

    def __getitem__(self, key: str) -> str:
        return self._load()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"mappingproxy({self._load()!r})"


_SERVICE = b"service"
_TARGET_SERVICE = b"sofa_head_target_service"


def _request_headers(buf: bytearray, start: int, end: int) -> Mapping[str, str]:
    """Check the request's header map in ``buf[start:end]`` as `_parse_header_map` does (the
    same errors, raised now) and return its lazy view. An all-ASCII map (every SOFA one in
    practice) is checked by the walk over its lengths alone; any other byte gets the whole
    map decoded now, the only way to find invalid UTF-8."""
    if not buf[start:end].isascii():
        return MappingProxyType(_view(_parse_header_map(buf, start, end)))
    service = target = None
    i = start
    unpack = _U32.unpack_from
    while i < end:
        if end - i < 4:
            raise _err("bolt header map: truncated key length")
        klen = unpack(buf, i)[0]
        i += 4
        key = i
        if klen != _ABSENT:
            if klen > end - i:
                raise _err("bolt header map: key longer than the header")
            i += klen
        if end - i < 4:
            raise _err("bolt header map: key without a value")
        vlen = unpack(buf, i)[0]
        i += 4
        if vlen != _ABSENT:
            if vlen > end - i:
                raise _err("bolt header map: value longer than the header")
            if klen == 7:
                if buf.startswith(_SERVICE, key):
                    service = (i, vlen)
            elif klen == 24 and buf.startswith(_TARGET_SERVICE, key):
                target = (i, vlen)
            i += vlen
    return _RequestHeaders(buf, start, end, service, target)


_Head = tuple[int, int, int, int, int, int, int, int, int, int, int, int, bool, int]


def _parse_head(data: bytes | bytearray | memoryview, max_frame_size: int) -> _Head | None:
    """The fixed header at the start of ``data`` (None while incomplete), checked, with the
    frame's whole size last; FrameTooLarge as soon as that size is known to be over."""
    n = len(data)
    if n < 3:
        if n and data[0] not in (PROTOCOL_V1, PROTOCOL_V2):
            raise _err(f"not a bolt frame: protocol code {data[0]:#04x}")
        return None
    proto = data[0]
    if proto == PROTOCOL_V1:
        ptype = data[1]
        if ptype == TYPE_RESPONSE:
            st = _RESP_V1
        elif ptype in _KINDS:
            st = _REQ_V1
        else:
            raise _err(f"bolt: unknown command type {ptype}")
        size = st.size
        if n < size:
            return None
        _, _, cmd, _, rid, codec, field, clen, hlen, blen = st.unpack_from(data, 0)
        ver1 = switch = 0
    elif proto == PROTOCOL_V2:
        ver1 = data[1]
        ptype = data[2]
        if ptype == TYPE_RESPONSE:
            st = _RESP_V2
        elif ptype in _KINDS:
            st = _REQ_V2
        else:
            raise _err(f"bolt v2: unknown command type {ptype}")
        size = st.size
        if n < size:
            return None
        _, _, _, cmd, _, rid, codec, switch, field, clen, hlen, blen = st.unpack_from(data, 0)
    else:
        raise _err(f"not a bolt frame: protocol code {proto:#04x}")

    if ptype == TYPE_RESPONSE:
        if cmd != CMD_RESPONSE and cmd != CMD_HEARTBEAT:
            raise _err(f"bolt: response with command code {cmd}")
    elif cmd != CMD_REQUEST and cmd != CMD_HEARTBEAT and cmd != CMD_GOAWAY:
        raise _err(f"bolt: request with command code {cmd}")

    crc = proto == PROTOCOL_V2 and ver1 == 2 and bool(switch & _CRC_SWITCH)
    total = size + clen + hlen + blen + (4 if crc else 0)
    if total > max_frame_size:
        raise FrameTooLarge(total, max_frame_size, protocol=NAME)
    return proto, ptype, cmd, rid, codec, field, clen, hlen, blen, ver1, switch, size, crc, total


def encode_header_map(headers: Mapping[str, str]) -> bytes:
    """Bolt's header map encoding of ``headers``."""
    parts: list[bytes] = []
    pack = _U32.pack
    for key, value in headers.items():
        kb = key.encode("utf-8")
        vb = value.encode("utf-8")
        parts += (pack(len(kb)), kb, pack(len(vb)), vb)
    return b"".join(parts)


class BoltFrame(Frame):
    """A bolt command. Beyond `Frame`: ``version`` (1 or 2, the proto byte), ``ver1`` (v2 only,
    else 0), ``cmdcode``, ``codec`` (serialization: 1 hessian2, 11 protobuf), ``switch`` (v2),
    ``timeout_ms`` (the raw request field; responses 0), ``class_name`` and ``content``."""

    __slots__ = (
        "class_len",
        "cmdcode",
        "codec",
        "content_len",
        "crc",
        "header_len",
        "header_size",
        "switch",
        "timeout_ms",
        "ver1",
        "version",
    )
    # Set by the codec right after construction (BoltCodec._decode), never read before.
    class_len: int
    cmdcode: int
    codec: int
    content_len: int
    crc: bool
    header_len: int
    header_size: int
    switch: int
    timeout_ms: int
    ver1: int
    version: int

    @property
    def class_name(self) -> str:
        start = self.header_size
        return self.data[start : start + self.class_len].decode("utf-8", "replace")

    @property
    def content(self) -> memoryview:
        start = self.header_size + self.class_len + self.header_len
        return memoryview(self.data)[start : start + self.content_len]

    @property
    def raw_headers(self) -> Mapping[str, str]:
        """The bolt header map alone, without the ``service``/``method`` view keys."""
        start = self.header_size + self.class_len
        return _parse_header_map(self.data, start, start + self.header_len)

    def _decode_headers(self) -> dict[str, str]:
        start = self.header_size + self.class_len
        return _view(_parse_header_map(self.data, start, start + self.header_len))


class BoltGoAwayFrame(BoltFrame):
    """A GoAway command: its sender is draining (no new requests on this connection)."""

    __slots__ = ()
    goaway = True


class BoltCodec(Codec):
    """SOFA bolt v1 and v2 (one codec: the first byte tells the version)."""

    name = NAME
    request_id_bits = 32

    # -- detection -------------------------------------------------------------------------

    def match(self, data: bytes | bytearray | memoryview) -> Match:
        n = len(data)
        if n == 0:
            return Match.NEED_MORE
        proto = data[0]
        if proto == PROTOCOL_V1:
            if n < 2:
                return Match.NEED_MORE
            return Match.YES if data[1] <= TYPE_ONEWAY else Match.NO
        if proto == PROTOCOL_V2:
            if n < 2:
                return Match.NEED_MORE
            if data[1] not in (1, 2):  # ver1
                return Match.NO
            if n < 3:
                return Match.NEED_MORE
            return Match.YES if data[2] <= TYPE_ONEWAY else Match.NO
        return Match.NO

    # -- decoding --------------------------------------------------------------------------

    def decode(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[BoltFrame, int] | None:
        return self._decode(data, max_frame_size, False)

    def take_frame(
        self, buf: bytearray, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[BoltFrame, int] | None:
        return self._decode(buf, max_frame_size, True)

    def _decode(
        self, data: bytes | bytearray | memoryview, max_frame_size: int, take: bool
    ) -> tuple[BoltFrame, int] | None:
        head = _parse_head(data, max_frame_size)
        if head is None:
            return None
        (
            proto,
            ptype,
            cmd,
            rid,
            codec,
            field,
            clen,
            hlen,
            blen,
            ver1,
            switch,
            header_size,
            crc,
            total,
        ) = head
        if len(data) < total:
            return None

        if take and type(data) is bytearray and len(data) == total:
            buf = data  # the caller's buffer holds just this frame: taken, not copied
        else:
            buf = bytearray(memoryview(data)[:total])
        if crc:
            (expected,) = _U32.unpack_from(buf, total - 4)
            if zlib.crc32(memoryview(buf)[: total - 4]) != expected:
                raise _err("bolt v2: CRC32 mismatch")

        # Every slot set here, without Frame.__init__'s keyword call: two frames per call.
        frame = _new_frame(BoltGoAwayFrame if cmd == CMD_GOAWAY else BoltFrame)
        frame.data = buf
        frame.request_id = rid
        frame.heartbeat = cmd == CMD_HEARTBEAT
        frame._headers = None
        if ptype == TYPE_RESPONSE:
            frame.kind = FrameKind.RESPONSE
            frame.status = field
            frame.timeout = None
            frame.timeout_ms = 0
        else:
            frame.kind = _KINDS[ptype]
            frame.status = None
            frame.timeout = field / 1000 if field > 0 else None
            frame.timeout_ms = field
        frame.version = proto
        frame.ver1 = ver1
        frame.switch = switch
        frame.cmdcode = cmd
        frame.codec = codec
        frame.header_size = header_size
        frame.class_len = clen
        frame.header_len = hlen
        frame.content_len = blen
        frame.crc = crc
        if ptype != TYPE_RESPONSE:
            # requests are routed: their header map is checked now, decoded when read
            start = header_size + clen
            frame._headers = _request_headers(buf, start, start + hlen)
        return frame, total

    def frame_length(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> int | None:
        head = _parse_head(data, max_frame_size)
        return None if head is None else head[-1]

    # -- request ids ---------------------------------------------------------------------

    def set_request_id(self, frame: Frame, request_id: int) -> bytearray:
        if not 0 <= request_id <= 0xFFFFFFFF:
            raise ValueError(f"bolt request id out of range: {request_id}")
        assert isinstance(frame, BoltFrame)
        data = frame.data
        _U32.pack_into(data, 5 if frame.version == PROTOCOL_V1 else 6, request_id)
        frame.request_id = request_id
        if frame.crc:
            end = len(data) - 4
            data[end:] = _U32.pack(zlib.crc32(memoryview(data)[:end]))
        return data

    # -- building frames -----------------------------------------------------------------

    def build_request(
        self,
        request_id: int,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        *,
        class_name: str = SOFA_REQUEST_CLASS,
        codec: int = CODEC_HESSIAN2,
        timeout_ms: int = -1,
        oneway: bool = False,
        cmdcode: int = CMD_REQUEST,
        version: int = PROTOCOL_V1,
        ver1: int = 1,
        switch: int = 0,
    ) -> BoltFrame:
        """A request frame (``cmdcode=0``: a heartbeat)."""
        ptype = TYPE_ONEWAY if oneway else TYPE_REQUEST
        return self._build(
            ptype,
            cmdcode,
            request_id,
            codec,
            timeout_ms,
            class_name,
            headers,
            content,
            version,
            ver1,
            switch,
        )

    def build_response(
        self,
        request_id: int,
        status: int = ResponseStatus.SUCCESS,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        *,
        class_name: str = SOFA_RESPONSE_CLASS,
        codec: int = CODEC_HESSIAN2,
        cmdcode: int = CMD_RESPONSE,
        version: int = PROTOCOL_V1,
        ver1: int = 1,
        switch: int = 0,
    ) -> BoltFrame:
        """A response frame (``cmdcode=0``: a heartbeat reply)."""
        return self._build(
            TYPE_RESPONSE,
            cmdcode,
            request_id,
            codec,
            status,
            class_name,
            headers,
            content,
            version,
            ver1,
            switch,
        )

    def _build(
        self,
        ptype: int,
        cmd: int,
        rid: int,
        codec: int,
        field: int,
        class_name: str,
        headers: Mapping[str, str] | None,
        content: bytes,
        version: int,
        ver1: int,
        switch: int,
    ) -> BoltFrame:
        cls = class_name.encode("utf-8")
        hdr = encode_header_map(headers) if headers else b""
        if len(cls) > 0xFFFF or len(hdr) > 0xFFFF:
            raise ValueError("bolt class name and header map are limited to 65535 bytes each")
        lens = (len(cls), len(hdr), len(content))
        if version == PROTOCOL_V1:
            st = _RESP_V1 if ptype == TYPE_RESPONSE else _REQ_V1
            head = st.pack(PROTOCOL_V1, ptype, cmd, 1, rid, codec, field, *lens)
        elif version == PROTOCOL_V2:
            st = _RESP_V2 if ptype == TYPE_RESPONSE else _REQ_V2
            head = st.pack(PROTOCOL_V2, ver1, ptype, cmd, 1, rid, codec, switch, field, *lens)
        else:
            raise ValueError(f"bolt version must be 1 or 2, not {version}")
        raw = b"".join((head, cls, hdr, content))
        if version == PROTOCOL_V2 and ver1 == 2 and switch & _CRC_SWITCH:
            raw += _U32.pack(zlib.crc32(raw))
        result = self.decode(raw, max_frame_size=len(raw))
        assert result is not None
        return result[0]

    def heartbeat_request(self, request_id: int) -> BoltFrame:
        # as MOSN and SOFA bolt's HeartbeatCommand: hessian2, timeout -1, no class
        return self.build_request(request_id, class_name="", cmdcode=CMD_HEARTBEAT)

    def goaway_frame(self) -> BoltFrame:
        """MOSN's GoAway command. Not ``goaway_request``: bolt clients (SOFA bolt, anthunder)
        do not know it, so the proxy's own drain does not send it to them."""
        return self.build_request(0, class_name="", cmdcode=CMD_GOAWAY, timeout_ms=0)

    def heartbeat_reply(self, frame: Frame) -> BoltFrame:
        assert isinstance(frame, BoltFrame)
        if not (frame.is_request and frame.heartbeat):
            raise ValueError("heartbeat_reply needs a heartbeat request")
        return self.build_response(
            frame.request_id,
            ResponseStatus.SUCCESS,
            class_name="",
            codec=frame.codec,
            cmdcode=CMD_HEARTBEAT,
            version=frame.version,
            ver1=frame.ver1,
            switch=frame.switch,
        )

    def error_reply(self, frame: Frame, kind: ErrorKind, message: str = "") -> BoltFrame:
        # bolt carries an error message only inside a serialized SofaResponse; none is sent
        assert isinstance(frame, BoltFrame)
        if frame.is_response:
            raise ValueError("error_reply needs a request")
        return self.build_response(
            frame.request_id,
            _STATUS_FOR[kind],
            class_name="",
            codec=frame.codec,
            version=frame.version,
            ver1=frame.ver1,
            switch=frame.switch,
        )

    def status_for(self, kind: ErrorKind) -> int:
        return _STATUS_FOR[kind]

    def is_success(self, frame: Frame) -> bool:
        return frame.status == ResponseStatus.SUCCESS

    def status_name(self, status: int) -> str:
        return _STATUS_NAMES.get(status) or str(status)

    # -- stream filters --------------------------------------------------------------------

    def payload(self, frame: Frame) -> bytes:
        assert isinstance(frame, BoltFrame)
        return bytes(frame.content)

    def with_headers(self, frame: Frame, headers: Mapping[str, str]) -> BoltFrame:
        """The frame with its header map re-encoded so that its view is ``headers``; the
        class name and content are copied, the lengths (and the CRC) fixed. The view's
        ``method`` is written to ``sofa_head_method_name`` when it came from there, and its
        ``service`` to ``sofa_head_target_service`` when the map has no ``service``."""
        assert isinstance(frame, BoltFrame)
        raw = dict(frame.raw_headers)
        sets, removed = header_changes(frame.headers, headers)
        if not sets and not removed:
            return frame
        source = {}
        if raw.get("sofa_head_method_name"):
            source["method"] = "sofa_head_method_name"
        if not raw.get("service") and raw.get("sofa_head_target_service"):
            source["service"] = "sofa_head_target_service"
        for name in removed:
            raw.pop(source.get(name, name), None)
        for name, value in sets.items():
            raw[source.get(name, name)] = value
        encoded = encode_header_map(raw)
        if len(encoded) > 0xFFFF:
            raise ValueError("bolt header map is limited to 65535 bytes")
        data = frame.data
        start = frame.header_size + frame.class_len
        end = start + frame.header_len + frame.content_len
        out = bytearray(data[:start])
        # The header length is the u16 before the content length, in every command layout.
        out[frame.header_size - 6 : frame.header_size - 4] = len(encoded).to_bytes(2, "big")
        out += encoded
        out += data[start + frame.header_len : end]
        if frame.crc:
            out += _U32.pack(zlib.crc32(out))
        result = self._decode(out, len(out), True)
        assert result is not None
        return result[0]


#: The shared codec instance (codecs are stateless).
BOLT = BoltCodec()
