"""Apache Dubbo (dubbo protocol, hessian2) as an XProtocol codec, on the frame helpers of
`dubbo_frames` and the reader of `hessian2`. Sans-IO.

A request's routing headers: ``service`` (the service path), ``method``, ``interface``,
``group`` and ``version`` (from the attachments, the service version as a fallback), and
every attachment with a string value. A ``timeout`` attachment (milliseconds, as Dubbo
consumers send it) is the frame's timeout. Requests are decoded when they are read (the
arguments are skipped, not built), so a malformed body is a codec error of the connection,
not of one request.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import dubbo_frames as df
from .base import (
    DEFAULT_MAX_FRAME_SIZE,
    Codec,
    ErrorKind,
    Frame,
    FrameKind,
    FrameTooLarge,
    Match,
    header_changes,
)
from .base import XProtocolError as _XError

__all__ = ["DUBBO", "DubboCodec", "DubboFrame", "DubboReadonlyFrame"]

_STATUS_FOR = {
    ErrorKind.NO_ROUTE: df.Status.SERVICE_NOT_FOUND,
    ErrorKind.NO_HEALTHY_HOST: df.Status.SERVICE_NOT_FOUND,
    ErrorKind.TIMEOUT: df.Status.SERVER_TIMEOUT,
    ErrorKind.UPSTREAM_FAILURE: df.Status.SERVER_ERROR,
    ErrorKind.UPSTREAM_RESET: df.Status.SERVER_ERROR,
    ErrorKind.OVERFLOW: df.Status.SERVER_THREADPOOL_EXHAUSTED_ERROR,
    ErrorKind.CODEC_ERROR: df.Status.BAD_REQUEST,
    ErrorKind.INTERNAL: df.Status.SERVER_ERROR,
}
_MESSAGES = {
    ErrorKind.NO_ROUTE: "trio-mesh: no route for the service",
    ErrorKind.NO_HEALTHY_HOST: "trio-mesh: no healthy upstream",
    ErrorKind.TIMEOUT: "trio-mesh: upstream request timeout",
    ErrorKind.UPSTREAM_FAILURE: "trio-mesh: upstream connect failure",
    ErrorKind.UPSTREAM_RESET: "trio-mesh: upstream connection reset",
    ErrorKind.OVERFLOW: "trio-mesh: upstream overflow",
    ErrorKind.CODEC_ERROR: "trio-mesh: bad request",
    ErrorKind.INTERNAL: "trio-mesh: internal error",
}


def _err(message: str) -> _XError:
    return _XError(message, protocol="dubbo")


class DubboFrame(Frame):
    __slots__ = ("flag", "request")

    def __init__(
        self,
        data: bytearray,
        header: df.DubboHeader,
        kind: FrameKind,
        *,
        heartbeat: bool,
        request: df.DubboRequest | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            data,
            header.request_id,
            kind,
            heartbeat=heartbeat,
            status=None if header.is_request else header.status,
            timeout=timeout,
        )
        self.flag = header.flag
        self.request = request

    def _decode_headers(self) -> dict[str, str]:
        req = self.request
        if req is None:
            return {}
        headers = {k: v for k, v in req.attachments.items() if isinstance(v, str)}
        headers["service"] = req.service_path
        headers["method"] = req.method_name
        headers["interface"] = req.interface
        if req.group is not None:
            headers["group"] = req.group
        if req.version is not None:
            headers["version"] = req.version
        return headers


class DubboReadonlyFrame(DubboFrame):
    """A READONLY event: its sender is shutting down (no new requests on this connection)."""

    __slots__ = ()
    goaway = True


def _header(data: bytes | bytearray | memoryview, max_frame_size: int) -> df.DubboHeader | None:
    """The frame header at the start of ``data`` (None while incomplete), its size checked."""
    try:
        header = df.parse_header(data, max_body_length=1 << 32)
    except df.DubboFrameError as exc:
        raise _err(str(exc)) from None
    if header is not None and header.frame_length > max_frame_size:
        raise FrameTooLarge(header.frame_length, max_frame_size, protocol="dubbo")
    return header


def _timeout(attachments: Mapping[str, object]) -> float | None:
    value = attachments.get("timeout")
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str) and value.isdigit():
        ms = int(value)
    else:
        return None
    return ms / 1000 if ms > 0 else None


class DubboCodec(Codec):
    name = "dubbo"
    # Dubbo ids are Java longs: ids the proxy hands out stay positive.
    request_id_bits = 63

    def match(self, data: bytes | bytearray | memoryview) -> Match:
        if not data:
            return Match.NEED_MORE
        if data[0] != 0xDA:
            return Match.NO
        if len(data) < 2:
            return Match.NEED_MORE
        return Match.YES if data[1] == 0xBB else Match.NO

    def decode(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[DubboFrame, int] | None:
        return self._decode(data, max_frame_size, False)

    def take_frame(
        self, buf: bytearray, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> tuple[DubboFrame, int] | None:
        return self._decode(buf, max_frame_size, True)

    def _decode(
        self, data: bytes | bytearray | memoryview, max_frame_size: int, take: bool
    ) -> tuple[DubboFrame, int] | None:
        header = _header(data, max_frame_size)
        if header is None:
            return None
        size = header.frame_length
        if len(data) < size:
            return None
        if take and type(data) is bytearray and len(data) == size:
            frame_bytes = data  # the caller's buffer holds just this frame: taken, not copied
        else:
            frame_bytes = bytearray(memoryview(data)[:size])
        body = memoryview(frame_bytes)[df.HEADER_LENGTH :]
        try:
            heartbeat = df.is_heartbeat(header, body)
            request = None
            timeout = None
            cls = DubboFrame
            if header.is_request:
                kind = FrameKind.REQUEST if header.two_way else FrameKind.ONEWAY
                if not header.is_event:
                    request = df.decode_request(frame_bytes, header)
                    timeout = _timeout(request.attachments)
                elif not heartbeat and df.is_readonly_event(header, body):
                    cls = DubboReadonlyFrame
            else:
                kind = FrameKind.RESPONSE
        except df.DubboFrameError as exc:
            raise _err(str(exc)) from None
        finally:
            body.release()
        frame = cls(
            frame_bytes, header, kind, heartbeat=heartbeat, request=request, timeout=timeout
        )
        return frame, size

    def frame_length(
        self, data: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> int | None:
        header = _header(data, max_frame_size)
        return None if header is None else header.frame_length

    def set_request_id(self, frame: Frame, request_id: int) -> bytearray:
        df.set_request_id(frame.data, request_id)
        frame.request_id = request_id
        return frame.data

    def heartbeat_request(self, request_id: int) -> DubboFrame:
        return self._frame(df.heartbeat_request(request_id))

    def heartbeat_reply(self, frame: Frame) -> DubboFrame:
        return self._frame(df.heartbeat_response(frame.request_id))

    def goaway_request(self) -> DubboFrame:
        # Dubbo's own provider numbers it as a request; consumers read only its data.
        return self._frame(df.readonly_event(0))

    def error_reply(self, frame: Frame, kind: ErrorKind, message: str = "") -> DubboFrame:
        if frame.is_response:
            raise ValueError("error_reply needs a request")
        return self._frame(
            df.error_response(frame.request_id, _STATUS_FOR[kind], message or _MESSAGES[kind])
        )

    def status_for(self, kind: ErrorKind) -> int:
        return int(_STATUS_FOR[kind])

    def is_success(self, frame: Frame) -> bool:
        return frame.status == df.Status.OK

    def status_name(self, status: int) -> str:
        try:
            return df.Status(status).name
        except ValueError:
            return str(status)

    def payload(self, frame: Frame) -> bytes:
        return bytes(frame.data[df.HEADER_LENGTH :])

    def with_headers(self, frame: Frame, headers: Mapping[str, str]) -> DubboFrame:
        """The invocation with its attachments edited so that its view is ``headers`` (the
        other attachments are copied as they are). ``service`` and ``method`` are the
        invocation's own fields, and ``interface``/``version`` taken from them (no such
        attachment) cannot be removed: changing those raises ValueError. Responses carry
        their attachments only in some result kinds: NotImplementedError."""
        assert isinstance(frame, DubboFrame)
        req = frame.request
        if req is None:
            if frame.is_response:
                raise NotImplementedError("dubbo: header rewriting of responses")
            raise ValueError("dubbo: an event has no attachments")
        sets, removed = header_changes(frame.headers, headers)
        if not sets and not removed:
            return frame
        for name in (*sets, *removed):
            if name in ("service", "method"):
                raise ValueError(f"dubbo: {name!r} is the invocation's own, not an attachment")
        for name in removed:
            if not isinstance(req.attachments.get(name), str):
                raise ValueError(f"dubbo: {name!r} is not an attachment, it cannot be removed")
        header = df.parse_header(frame.data, max_body_length=1 << 32)
        assert header is not None
        try:
            wire = df.replace_attachments(frame.data, header, sets, removed)
        except df.DubboFrameError as exc:
            raise ValueError(str(exc)) from None
        decoded = self.decode(wire, max_frame_size=len(wire))
        assert decoded is not None
        return decoded[0]

    def _frame(self, wire: bytes) -> DubboFrame:
        decoded = self.decode(wire)
        assert decoded is not None
        return decoded[0]


#: The shared codec instance (codecs are stateless).
DUBBO = DubboCodec()
