"""The interface every RPC codec implements (MOSN's XProtocol), sans-IO.

A codec turns bytes into frames and frames into bytes; it never touches a socket (nothing under
``trio_mesh/protocols/`` imports trio). The proxy layer owns the connection, the buffer and the
timeouts, and asks the codec:

* ``match(data)``: could a connection starting with ``data`` speak this protocol?
  (``Match.YES`` / ``Match.NO`` / ``Match.NEED_MORE``)
* ``decode(data, max_frame_size)``: the first frame in ``data`` and how many bytes it used, or
  ``None`` when ``data`` does not yet hold a whole frame. A frame whose declared size exceeds
  ``max_frame_size`` raises ``FrameTooLarge`` as soon as its fixed header is readable, before its
  body is buffered. Malformed bytes raise ``XProtocolError`` and nothing else. The frame's
  bytes are its own (a copy).
* ``take_frame(buf, max_frame_size)``: `decode`, except that a ``bytearray`` holding exactly one
  frame becomes that frame's ``data`` (no copy of a large frame): the caller gives the buffer
  up and reads on into a new one. Optional: the default is `decode`.
* ``frame_length(data, max_frame_size)``: the size the frame at the start of ``data`` declares,
  once its fixed header is readable (None before); the proxy reserves that much of its buffer
  budget before it reads the body. Optional: the default says None (unknown until decoded).
* ``encode(frame)``: the frame's bytes on the wire.
* ``set_request_id(frame, request_id)``: replaces the id in the frame's own bytes (a slice
  assignment, the body is not re-encoded) and returns those bytes; the proxy does this on every
  forwarded frame.
* ``heartbeat_reply(frame)`` / ``heartbeat_request(request_id)``: keepalive frames.
* ``goaway_request()``: the frame that tells a peer this side is draining (Dubbo's READONLY
  event, bolt's GoAway), or None where the protocol (or its clients) has none. A decoded
  frame with ``goaway`` set is such an announcement: a control frame, never routed.
* ``error_reply(frame, kind)``: the protocol's own answer to a request the proxy cannot serve.
* ``payload(frame)``: the frame's body (what stream filters see as the request/response data).
* ``with_headers(frame, mapping)``: a copy of the frame whose header view is ``mapping`` (what
  the proxy sends when a stream filter changed the headers); optional, the default raises
  NotImplementedError.

A `Frame` is one message: its wire bytes (a ``bytearray``), its request id, its kind (request,
oneway request, response), whether it is a heartbeat, its status (responses), its timeout in
seconds (when the protocol carries one) and a read-only view of its routing headers, which always
uses the keys ``service`` and ``method`` when the protocol knows them.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Final, Literal

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "EMPTY_HEADERS",
    "NEED_MORE",
    "Codec",
    "ErrorKind",
    "Frame",
    "FrameKind",
    "FrameTooLarge",
    "Match",
    "XProtocolError",
    "header_changes",
]

#: The frame-size limit `Codec.decode` applies when it is given none (16 MiB).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

#: An empty read-only header view.
EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})


class Match(enum.Enum):
    """What a codec says about the first bytes of a connection."""

    YES = "yes"
    NO = "no"
    NEED_MORE = "need_more"


#: Returned by `registry.detect` while no codec can decide yet.
NEED_MORE: Final = Match.NEED_MORE
NeedMore = Literal[Match.NEED_MORE]


class XProtocolError(Exception):
    """Bytes that are not a valid frame of the protocol (the connection cannot go on: the proxy
    closes it). ``protocol`` names the codec that raised it."""

    def __init__(self, message: str, *, protocol: str = "") -> None:
        super().__init__(message)
        self.protocol = protocol


class FrameTooLarge(XProtocolError):
    """A frame declares more bytes than the decoder's ``max_frame_size``."""

    def __init__(self, size: int, limit: int, *, protocol: str = "") -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}", protocol=protocol)
        self.size = size
        self.limit = limit


class ErrorKind(enum.Enum):
    """Why the proxy answers a request itself. Each codec maps these to its own status codes."""

    NO_ROUTE = "no_route"  # no route matched the request
    NO_HEALTHY_HOST = "no_healthy_host"  # the cluster has no host to send it to
    TIMEOUT = "timeout"  # the route/try timeout elapsed
    UPSTREAM_FAILURE = "upstream_failure"  # connect failed, or the upstream failed the request
    UPSTREAM_RESET = "upstream_reset"  # the upstream connection closed/reset mid-request
    OVERFLOW = "overflow"  # circuit breaker / pool limits
    CODEC_ERROR = "codec_error"  # a request the proxy could not decode or encode
    INTERNAL = "internal"  # anything else


class FrameKind(enum.Enum):
    REQUEST = "request"  # a request that expects a response
    ONEWAY = "oneway"  # a request without a response
    RESPONSE = "response"


class Frame:
    """One decoded message. Codecs subclass it to add their own fields and to decode the
    routing headers lazily (override `_decode_headers`).

    ``data`` is the whole frame as sent on the wire; codecs update it in place (request id
    rewriting), so treat it as read-only elsewhere.
    """

    __slots__ = ("_headers", "data", "heartbeat", "kind", "request_id", "status", "timeout")

    #: The peer is draining (Dubbo READONLY, bolt GoAway): a class attribute, True only on
    #: the codecs' go-away frame classes, so reading it costs no slot on every frame.
    goaway: ClassVar[bool] = False

    def __init__(
        self,
        data: bytearray,
        request_id: int,
        kind: FrameKind,
        *,
        heartbeat: bool = False,
        status: int | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.data = data
        self.request_id = request_id
        self.kind = kind
        self.heartbeat = heartbeat
        self.status = status  # the protocol's own response status (None for requests)
        self.timeout = timeout  # seconds, None when the frame carries none
        self._headers = headers

    @property
    def is_request(self) -> bool:
        """A request, two-way or oneway."""
        return self.kind is not FrameKind.RESPONSE

    @property
    def is_oneway(self) -> bool:
        return self.kind is FrameKind.ONEWAY

    @property
    def is_response(self) -> bool:
        return self.kind is FrameKind.RESPONSE

    @property
    def is_heartbeat(self) -> bool:
        return self.heartbeat

    @property
    def headers(self) -> Mapping[str, str]:
        """Read-only routing headers: the protocol's own header map plus ``service`` and
        ``method`` when known. Decoded on first access; may raise XProtocolError then if the
        codec decodes lazily (bolt decodes request headers eagerly)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = MappingProxyType(self._decode_headers())
        return headers

    @property
    def service(self) -> str:
        return self.headers.get("service", "")

    @property
    def method(self) -> str:
        return self.headers.get("method", "")

    def _decode_headers(self) -> dict[str, str]:
        return {}

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.kind.value} id={self.request_id}"
            f"{' heartbeat' if self.heartbeat else ''} status={self.status} {len(self.data)}B>"
        )


def header_changes(
    view: Mapping[str, str], new: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """What turned header view ``view`` into ``new``: the names set (to their new values) and
    the names removed. A name of ``new`` that differs from one of ``view`` only in case (stream
    filters' `Headers` lower-case the names they set) keeps the view's spelling, since RPC
    header maps are case-sensitive."""
    sets: dict[str, str] = {}
    for name, value in new.items():
        if view.get(name) != value:
            sets[name] = value
    removed = [name for name in view if name not in new]
    if sets and removed:
        by_lower = {name.lower(): name for name in removed}
        for name in list(sets):
            if name in view:
                continue
            original = by_lower.pop(name.lower(), None)
            if original is not None:
                sets[original] = sets.pop(name)
                removed.remove(original)
    return sets, removed


class Codec(ABC):
    """An RPC protocol. Codecs are stateless: one instance serves every connection.

    Subclasses set ``name`` and ``request_id_bits`` and implement the abstract methods.
    """

    #: the protocol's name in configuration (``downstream_protocol: bolt``) and in the registry
    name: ClassVar[str]
    #: the width of the protocol's request id; ids a pool hands out must fit in it
    request_id_bits: ClassVar[int]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')}>"

    @abstractmethod
    def match(self, data: bytes | bytearray | memoryview) -> Match:
        """Magic-byte check on the first bytes of a connection."""

    @abstractmethod
    def decode(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[Frame, int] | None:
        """The frame at the start of ``data`` and the number of bytes it took, or None if
        ``data`` holds no whole frame yet. Raises XProtocolError (FrameTooLarge for a frame
        over ``max_frame_size``) and nothing else for bad input."""

    def take_frame(
        self, buf: bytearray, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[Frame, int] | None:
        """`decode`; a codec may also make ``buf`` itself the frame's ``data`` when it holds
        exactly that frame, so the caller must not use ``buf`` after a frame of
        ``len(buf)`` bytes is returned."""
        return self.decode(buf, max_frame_size)

    def frame_length(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> int | None:
        """The whole size of the frame at the start of ``data`` as its header declares it, or
        None while the header is incomplete (or the codec cannot tell before the frame is
        whole). Raises as `decode` does for a bad header or a frame over ``max_frame_size``."""
        return None

    def encode(self, frame: Frame) -> bytearray:
        """The frame's bytes on the wire (its own buffer: do not mutate it)."""
        return frame.data

    def get_request_id(self, frame: Frame) -> int:
        return frame.request_id

    @abstractmethod
    def set_request_id(self, frame: Frame, request_id: int) -> bytearray:
        """Put ``request_id`` into the frame (its ``data`` and ``request_id``) and return its
        bytes. ValueError if the id does not fit ``request_id_bits``."""

    @abstractmethod
    def heartbeat_reply(self, frame: Frame) -> Frame:
        """The reply to a heartbeat request ``frame``."""

    @abstractmethod
    def heartbeat_request(self, request_id: int) -> Frame:
        """A heartbeat request (keepalive of an idle upstream connection)."""

    def goaway_request(self) -> Frame | None:
        """The announcement that this side is draining (sent to clients on the proxy's own
        drain), or None: the protocol has none its clients understand (the default)."""
        return None

    @abstractmethod
    def error_reply(self, frame: Frame, kind: ErrorKind, message: str = "") -> Frame:
        """A response to the request ``frame`` saying the proxy could not serve it, with the
        protocol's own status code for ``kind``. ``message`` goes into the reply where the
        protocol has a place for it. ValueError if ``frame`` is a response."""

    @abstractmethod
    def status_for(self, kind: ErrorKind) -> int:
        """The protocol's status code for an error kind."""

    @abstractmethod
    def is_success(self, frame: Frame) -> bool:
        """Whether a response frame reports success."""

    def status_name(self, status: int) -> str:
        """The name of a response status code (stats; default: the number)."""
        return str(status)

    def payload(self, frame: Frame) -> bytes:
        """The frame's body: the data stream filters see (default: the whole frame)."""
        return bytes(frame.data)

    def with_headers(self, frame: Frame, headers: Mapping[str, str]) -> Frame:
        """A new frame like ``frame`` (same kind, id and body) whose header view is
        ``headers``: what the proxy forwards when a stream filter changed the view. Names
        that are views of other fields (``service``, ``method``) go where they came from, or
        raise ValueError when the protocol cannot carry the change. The default raises
        NotImplementedError: such a request fails with an INTERNAL error reply."""
        raise NotImplementedError(f"{self.name}: header rewriting is not implemented")
