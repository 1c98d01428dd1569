"""HTTP/1.1 codec on httptools (llhttp): sans-IO request and response parsers, and encoders.

How framing works here. llhttp parses and validates (every leniency flag stays off), but it never
says where in the fed bytes a message ended, and we need that for exact head-size limits,
pipelining, HEAD responses, bytes after a response and upgrades. So the parsers hand llhttp
pieces that end exactly on message boundaries:

- a head ends at its first CRLFCRLF (llhttp rejects bare CR and bare LF, so a valid head holds no
  earlier one);
- a Content-Length body ends after that many bytes;
- a chunked body ends where a light walk over its chunk-size lines says; that walk also refuses
  over-long chunk sizes and bounds the trailer section before llhttp sees any of it.

The llhttp callbacks only collect; heads are built and checked between pieces, never inside
llhttp, so a rejected head is never emitted and callbacks never raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Generic, TypeVar

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from .trailers import trailer_fields

__all__ = [
    "Body",
    "EndOfMessage",
    "H1Error",
    "Limits",
    "RequestEvent",
    "RequestHead",
    "RequestParser",
    "ResponseEvent",
    "ResponseHead",
    "ResponseParser",
    "encode_chunk",
    "encode_last_chunk",
    "encode_request_head",
    "encode_response_head",
    "strip_hop_by_hop",
]

Header = tuple[bytes, bytes]


class H1Error(Exception):
    """Bad HTTP/1 input.

    `status`: what a proxy answers the client for a bad request (400, 413, 414, 431); 502 for a
    bad upstream response. `reason`: short text for logs.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class Limits:
    """Parser limits. Heads count the request/status line, header lines and the final CRLF."""

    __slots__ = ("max_head_bytes", "max_url_bytes", "max_headers", "max_body_bytes")

    def __init__(
        self,
        *,
        max_head_bytes: int = 60 * 1024,
        max_url_bytes: int = 8 * 1024,
        max_headers: int = 100,
        max_body_bytes: int | None = None,
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_url_bytes = max_url_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes

    def __repr__(self) -> str:
        return (
            f"Limits(max_head_bytes={self.max_head_bytes}, max_url_bytes={self.max_url_bytes}, "
            f"max_headers={self.max_headers}, max_body_bytes={self.max_body_bytes})"
        )


_DEFAULT_LIMITS = Limits()


class _Record:
    """Slot-based value objects: equality and repr over the slots (tests compare events)."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__name__}({fields})"


class RequestHead(_Record):
    """A parsed request head. Header names are lower-cased, values stripped of OWS."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "host",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "upgrade",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes,
        version: bytes,
        headers: list[Header],
        host: bytes | None,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        upgrade: bytes | None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade


class ResponseHead(_Record):
    """A parsed response head (final or informational 1xx)."""

    __slots__ = (
        "status",
        "reason",
        "version",
        "headers",
        "keep_alive",
        "content_length",
        "chunked",
    )

    def __init__(
        self,
        status: int,
        reason: bytes | None,  # None: the standard phrase (a head whose status a filter set)
        version: bytes,
        headers: list[Header],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked


class Body(_Record):
    """De-chunked body bytes; never empty."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage(_Record):
    """End of a message; `trailers` are the chunked trailers (names lower-cased) or None."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[Header] | None = None) -> None:
        self.trailers = trailers


Event = RequestHead | ResponseHead | Body | EndOfMessage
RequestEvent = RequestHead | Body | EndOfMessage
ResponseEvent = ResponseHead | Body | EndOfMessage
# A parser's head type: RequestParser emits RequestEvents, ResponseParser ResponseEvents.
_Head = TypeVar("_Head", RequestHead, ResponseHead)
_NO_EVENTS: list[Body] = []  # never appended to: callbacks fire only inside feed()


class _Sink:
    """The httptools protocol object: callbacks only collect.

    It holds no reference to the parsers, so parser -> llhttp -> bound methods -> sink has no
    reference cycle (a ResponseParser lives for one request and must be freed by refcounting).
    """

    __slots__ = ("begun", "url", "status", "headers", "head_done", "msg_done", "events")
    # The list of the feed in progress (of its parser's events); only ever appended a Body.
    events: list[Body] | list[RequestEvent] | list[ResponseEvent]

    def __init__(self) -> None:
        self.begun = False
        self.url = b""
        self.status = b""
        self.headers: list[Header] = []
        self.head_done = False
        self.msg_done = False
        self.events = _NO_EVENTS

    def on_message_begin(self) -> None:
        self.begun = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading OWS but keeps trailing OWS
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.events.append(Body(body))

    def on_message_complete(self) -> None:
        self.msg_done = True


_LLHTTP = TypeVar("_LLHTTP", HttpRequestParser, HttpResponseParser)


def _llhttp(cls: type[_LLHTTP], sink: _Sink) -> _LLHTTP:
    p = cls(sink)
    # llhttp starts strict; say so explicitly so a changed default cannot loosen us (this API
    # and llhttp 9.2.1, the CVE-2024-27982 fix, arrived in httptools 0.6.3)
    p.set_dangerous_leniencies(
        lenient_headers=False,
        lenient_chunked_length=False,
        lenient_keep_alive=False,
        lenient_transfer_encoding=False,
        lenient_version=False,
        lenient_data_after_close=False,
        lenient_optional_lf_after_cr=False,
        lenient_optional_cr_before_lf=False,
        lenient_optional_crlf_after_chunk=False,
        lenient_spaces_after_chunk_size=False,
    )
    return p


# parser phases
_HEAD = 0  # reading a head (or the blank lines before one)
_LENGTH = 1  # Content-Length body
_CHUNKED = 2  # chunked body
_EOF = 3  # response body delimited by connection close
_DONE = 4  # response complete: later bytes go to `trailing`
_UPGRADED = 5  # later bytes go to `upgraded_tail`

# chunk walk states
_C_SIZE = 0
_C_DATA = 1
_C_TRAILERS = 2

_MAX_CHUNK_LINE = 4096  # chunk-size line with extensions
_HEX = b"0123456789abcdefABCDEF"
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_REQ_SPECIAL = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade")
)
_RESP_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"connection"))


class _Parser(Generic[_Head]):
    """The feed loop shared by both directions; subclasses build heads and end messages."""

    _defer_errors = False
    _keep_raw = False  # keep a head's bytes as received (in `_raw`) for `_on_head`
    _fast_path = True  # `_whole` may take a read in one llhttp call (off: the differential test)

    __slots__ = (
        "_fast",
        "_raw",
        "_limits",
        "_bad",
        "_too_large",
        "_max_body",
        "_p",
        "_sink",
        "_phase",
        "_head_bytes",
        "_carry",
        "_remaining",
        "_body_bytes",
        "_cstate",
        "_cline",
        "_crem",
        "_tline",
        "_tbytes",
        "_error",
        "upgraded",
        "upgraded_tail",
    )
    _p: HttpRequestParser | HttpResponseParser  # the subclass's, set by its __init__

    def __init__(self, limits: Limits | None, bad: int, too_large: int) -> None:
        self._limits = limits or _DEFAULT_LIMITS
        self._bad = bad
        self._too_large = too_large
        self._max_body: int | None = None
        self._sink = _Sink()
        self._phase = _HEAD
        self._head_bytes = 0
        self._carry = b""
        self._remaining = 0
        self._body_bytes = 0
        self._cstate = _C_SIZE
        self._cline = b""
        self._crem = 0
        self._tline = 0
        self._tbytes = 0
        self._error: H1Error | None = None
        self._raw: bytes | None = None
        self._fast = self._fast_path
        self.upgraded = False
        self.upgraded_tail = b""

    # -- subclass hooks --------------------------------------------------------------------

    def _on_head(self, events: list[_Head | Body | EndOfMessage]) -> None:
        raise NotImplementedError

    def _message_done(self) -> None:
        raise NotImplementedError

    def _after_end(self, data: bytes) -> None:
        raise NotImplementedError

    def _new_llhttp(self) -> None:
        raise NotImplementedError

    @property
    def error(self) -> H1Error | None:
        """The error that stopped parsing, if any (raised again by every later call)."""
        return self._error

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[_Head | Body | EndOfMessage]:
        """All events that `data` completes, in order; raises H1Error (and stays failed).

        Requests only: when `data` completes some events before its bad part (a good
        request pipelined before a bad one), those events are returned and the error is
        raised by the next call, or found earlier in `error`: the good request still gets
        its answer. A response fails whole, so no part of a bad one is relayed.
        """
        if self._error is not None:
            raise self._error
        if self._phase >= _DONE:
            self._after_end(bytes(data))
            return []
        if type(data) is not bytes:
            data = bytes(data)
        sink = self._sink
        events: list[_Head | Body | EndOfMessage] = []
        sink.events = events
        try:
            if not (
                self._fast
                and self._phase == _HEAD
                and not self._head_bytes
                and len(data) <= self._limits.max_head_bytes
                and self._whole(data, events)
            ):
                self._run(data, events)
        except H1Error as e:
            self._error = e
            if not events or not self._defer_errors:
                raise
        finally:
            sink.events = _NO_EVENTS  # hold no body bytes between feeds
        return events

    def _whole(self, data: bytes, events: list[_Head | Body | EndOfMessage]) -> bool:
        """The fast path: a read that starts between messages, is no longer than the head
        budget (so no head in it can exceed it) and holds one message's head and nothing but
        its body after it goes to llhttp in one call; the head is built after the call.

        Anything else (no complete head, pipelined messages, bytes after a message's end,
        chunked framing, an upgrade, any llhttp error) is found after the call, before any
        of our state changed: llhttp, which cannot rewind, is replaced by a fresh one (it
        keeps nothing between messages) and False sends the read down the per-phase walk,
        which then sees exactly what it sees without this path.
        """
        n = len(data)
        end = data.find(b"\r\n\r\n") + 4
        # leading blank lines: llhttp skips them, so the first CRLFCRLF would not end the head
        if end < 4 or data[0] == 13 or data[0] == 10:
            return False
        if data.find(b"ransfer-", 0, end) >= 0:
            # Transfer-Encoding as usually spelt: chunked, which the walk must see first, so
            # the check below would send it there after a wasted parse (other spellings do)
            return False
        sink = self._sink
        bodies: list[Body] = []
        sink.events = bodies
        try:
            self._p.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            ok = False
        else:
            # Every byte after the head was body (a chunk-size line, a second head or
            # skipped blank lines would make the sum fall short): one message, nothing after.
            # The head ends at the first CRLFCRLF: llhttp refuses bare CR and LF in one.
            ok = sink.head_done and (
                end + sum([len(b.data) for b in bodies]) == n if bodies else end == n
            )
        sink.events = events
        if not ok:
            self._new_llhttp()
            sink.url = sink.status = b""
            sink.headers = []
            sink.begun = sink.head_done = sink.msg_done = False
            return False
        self._head_bytes = end
        if self._keep_raw:
            self._raw = data if end == n else data[:end]
        self._on_head(events)
        if bodies:
            phase = self._phase
            if phase == _LENGTH:
                events += bodies
                self._remaining -= n - end
                if not self._remaining:
                    self._end_message(events)
            elif phase == _EOF:
                events += bodies
            else:  # llhttp read a body our parse does not frame: never relay a guess
                raise H1Error(self._bad, "message framing mismatch")
        return True

    def _run(self, data: bytes, events: list[_Head | Body | EndOfMessage]) -> None:
        sink = self._sink
        n = len(data)
        pos = 0
        while pos < n:
            phase = self._phase
            if phase == _HEAD:
                end = self._head_end(data, pos, n)
                room = self._limits.max_head_bytes - self._head_bytes
                if end - pos > room:
                    # feed what fits (never more) so that a too-long URL still reads as 414
                    self._feed(data, pos, pos + room)
                    self._check_partial_head()
                    raise H1Error(self._too_large, "head too large")
                self._head_bytes += end - pos
                self._feed(data, pos, end)
                if sink.head_done:
                    if self._keep_raw and self._head_bytes == end - pos:
                        self._raw = data[pos:end]  # the whole head came in this read
                    self._on_head(events)
                else:
                    self._check_partial_head()
                pos = end
            elif phase == _LENGTH:
                end = pos + self._remaining
                if end > n:
                    end = n
                self._feed(data, pos, end)
                self._remaining -= end - pos
                pos = end
                if not self._remaining:
                    self._end_message(events)
            elif phase == _CHUNKED:
                end = self._chunk_walk(data, pos, n)
                stop = n if end < 0 else end
                self._feed(data, pos, stop)
                pos = stop
                if end >= 0:
                    self._end_message(events)
                elif sink.msg_done:
                    raise H1Error(self._bad, "chunked framing mismatch")
            elif phase == _EOF:
                self._feed(data, pos, n)
                pos = n
            else:  # _DONE or _UPGRADED, reached inside this data
                self._after_end(data[pos:])
                break
        if self._phase == _HEAD and self._head_bytes:
            # a head's CRLFCRLF may straddle two feeds
            self._carry = data[-3:] if n >= 3 else (self._carry + data)[-3:]
        else:
            self._carry = b""

    def _feed(self, data: bytes, start: int, end: int) -> None:
        piece = data if start == 0 and end == len(data) else memoryview(data)[start:end]
        try:
            self._p.feed_data(piece)
        except HttpParserUpgrade:
            pass  # an upgrade head ends its piece; _on_head sees should_upgrade()
        except HttpParserError as e:
            if not self._upgrade_pause():
                raise H1Error(self._bad, str(e)) from None

    def _upgrade_pause(self) -> bool:
        return False

    def _head_end(self, data: bytes, pos: int, n: int) -> int:
        """Offset just past the first CRLFCRLF from pos (or n): where a head can end."""
        if pos == 0 and self._carry:
            carry = self._carry
            i = (carry + data[:3]).find(b"\r\n\r\n")
            if i >= 0:
                return i + 4 - len(carry)
        i = data.find(b"\r\n\r\n", pos)
        return n if i < 0 else i + 4

    def _check_partial_head(self) -> None:
        sink = self._sink
        if len(sink.url) > self._limits.max_url_bytes:
            raise H1Error(414, "request-target too long")
        if len(sink.headers) > self._limits.max_headers:
            raise H1Error(self._too_large, "too many header fields")

    def _chunk_walk(self, data: bytes, pos: int, n: int) -> int:
        """Follow chunked framing from pos: offset just past the message end, or -1.

        llhttp validates everything again; this walk only needs sizes and line ends, and refuses
        what llhttp lets through: chunk sizes over 16 hex digits (zero-padded), oversized lines.
        """
        st = self._cstate
        while pos < n:
            if st == _C_DATA:
                rem = self._crem
                if n - pos < rem:
                    self._crem = rem - (n - pos)
                    break
                pos += rem
                self._crem = 0
                st = _C_SIZE
            elif st == _C_SIZE:
                j = data.find(b"\n", pos)
                if j < 0:
                    self._cline += data[pos:n]
                    if len(self._cline) > _MAX_CHUNK_LINE:
                        raise H1Error(self._bad, "chunk-size line too long")
                    break
                line = data[pos:j]
                if self._cline:
                    line = self._cline + line
                    self._cline = b""
                if len(line) > _MAX_CHUNK_LINE:
                    raise H1Error(self._bad, "chunk-size line too long")
                pos = j + 1
                semi = line.find(b";")
                if semi >= 0:
                    digits = line[:semi]
                elif line[-1:] == b"\r":
                    digits = line[:-1]
                else:
                    raise H1Error(self._bad, "chunk-size line without CRLF")
                if not digits or len(digits) > 16 or digits.translate(None, _HEX):
                    raise H1Error(self._bad, "invalid chunk size")
                size = int(digits, 16)
                if size:
                    self._body_bytes += size
                    if self._max_body is not None and self._body_bytes > self._max_body:
                        raise H1Error(413, "body too large")
                    self._crem = size + 2  # data, then CRLF (llhttp checks it)
                    st = _C_DATA
                else:
                    st = _C_TRAILERS
                    self._tline = 0
                    self._tbytes = 0
            else:  # trailer section: lines until an empty one
                j = data.find(b"\n", pos)
                took = (n if j < 0 else j + 1) - pos
                self._tbytes += took
                if self._tbytes > self._limits.max_head_bytes:
                    raise H1Error(self._too_large, "trailers too large")
                if j < 0:
                    self._tline += took
                    break
                line_len = self._tline + took
                pos = j + 1
                self._tline = 0
                if line_len <= 2:  # b"\r\n" ends it (a bare b"\n" is refused by llhttp)
                    self._cstate = _C_SIZE
                    return pos
        self._cstate = st
        return -1

    def _end_message(self, events: list[_Head | Body | EndOfMessage]) -> None:
        sink = self._sink
        if not sink.msg_done:  # our framing and llhttp's disagree: refuse rather than guess
            raise H1Error(self._bad, "message framing mismatch")
        trailers = sink.headers
        if trailers:
            if len(trailers) > self._limits.max_headers:
                raise H1Error(self._too_large, "too many trailer fields")
            sink.headers = []
            events.append(EndOfMessage(trailers))
        else:
            events.append(EndOfMessage(None))
        sink.msg_done = False
        sink.begun = False
        self._message_done()


class RequestParser(_Parser[RequestHead]):
    """Parses the requests of one downstream connection, pipelined ones included.

    Events per request: RequestHead, Body*, EndOfMessage. A request with `upgrade` set (Upgrade
    or CONNECT) ends parsing after its EndOfMessage: `upgraded` turns True and every later byte
    goes to `upgraded_tail`. A request with keep_alive False ends parsing too: later bytes are
    dropped (llhttp calls them an error; the connection closes after that exchange anyway).
    """

    __slots__ = ("_keep_alive", "_reparse")
    _defer_errors = True
    _p: HttpRequestParser

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits, 400, 431)
        self._keep_alive = True
        self._reparse = False  # an h2c upgrade made plain: a fresh llhttp after its message
        self._max_body = self._limits.max_body_bytes
        self._p = _llhttp(HttpRequestParser, self._sink)

    @property
    def between_requests(self) -> bool:
        """No byte of a next request has been fed (a drain may close the connection)."""
        return self._phase == _HEAD and not self._head_bytes and self._error is None

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed: [] between requests, H1Error(400) inside one."""
        if self._error is not None:
            raise self._error
        if self._phase >= _DONE or (self._phase == _HEAD and not self._sink.begun):
            return []
        self._error = H1Error(400, "connection closed inside a request")
        raise self._error

    def _on_head(self, events: list[RequestEvent]) -> None:
        sink = self._sink
        p = self._p
        limits = self._limits
        target = sink.url
        headers = sink.headers
        if len(target) > limits.max_url_bytes:
            raise H1Error(414, "request-target too long")
        if len(headers) > limits.max_headers:
            raise H1Error(431, "too many header fields")
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            raise H1Error(400, "unsupported HTTP version")
        method = p.get_method()
        host = None
        content_length = None
        chunked = False
        expect = False
        upgrade_value = None
        connection = None
        for name, value in headers:
            if name in _REQ_SPECIAL:
                if name == b"host":
                    if host is not None:
                        raise H1Error(400, "more than one Host")
                    host = value
                elif name == b"content-length":
                    # llhttp allows only digits already; int() alone would also take "+1", "1_0"
                    if not value.isdigit():
                        raise H1Error(400, "invalid Content-Length")
                    content_length = int(value)
                elif name == b"transfer-encoding":
                    # we decode no coding, so exactly one "chunked" and nothing else
                    if chunked or value.lower() != b"chunked":
                        raise H1Error(400, "unsupported Transfer-Encoding")
                    chunked = True
                elif name == b"connection":
                    connection = value if connection is None else connection + b"," + value
                elif name == b"expect":
                    expect = value.lower() == b"100-continue"
                else:
                    # every Upgrade line counts: one left out would pass h2c by _drop_h2c
                    upgrade_value = value if upgrade_value is None else upgrade_value + b"," + value
        if chunked and (content_length is not None or version == b"1.0"):
            # llhttp refuses CL+TE itself; RFC 9112 6.1: TE in HTTP/1.0 is faulty framing
            raise H1Error(400, "Transfer-Encoding with Content-Length or in HTTP/1.0")

        # request-target forms (RFC 9112 3.2)
        if method == b"CONNECT":  # authority-form, and only there
            name_part, colon, port = target.rpartition(b":")
            if not colon or not name_part or not port.isdigit() or b"/" in target:
                raise H1Error(400, "invalid CONNECT target")
            host = target
            path = query = b""
        elif target[:1] == b"/":
            if b"#" in target:
                target_nf = target[: target.index(b"#")]
            else:
                target_nf = target
            path, _, query = target_nf.partition(b"?")
        elif target == b"*":
            if method != b"OPTIONS":
                raise H1Error(400, "asterisk-form outside OPTIONS")
            path = b"*"
            query = b""
        else:
            host, path, query = _absolute_form(target)

        if host is None and version == b"1.1":
            raise H1Error(400, "HTTP/1.1 request without Host")  # RFC 9112 3.2

        if p.should_upgrade():
            if method == b"CONNECT":
                upgrade: bytes | None = b"connect"
            else:
                upgrade = (upgrade_value or b"").lower()
                if b"h2c" in upgrade:
                    upgrade = self._drop_h2c(headers, upgrade)
            if upgrade is not None and (chunked or content_length):
                # llhttp would hand the body bytes to the tunnel; refuse the ambiguity
                raise H1Error(400, "request body with Upgrade or CONNECT")
        else:
            upgrade = None
        max_body = self._max_body
        if max_body is not None and content_length is not None and content_length > max_body:
            raise H1Error(413, "body too large")

        self._keep_alive = keep_alive = _keep_alive(version, connection)
        events.append(
            RequestHead(
                method,
                target,
                path,
                query,
                version,
                headers,
                host,
                keep_alive,
                content_length,
                chunked,
                expect,
                upgrade,
            )
        )
        sink.url = b""
        sink.headers = []
        sink.head_done = False
        if self._reparse and (chunked or content_length):
            self._body_after_h2c(chunked, content_length)
        if upgrade is not None:
            self._end_message(events)
            self._phase = _UPGRADED
            self.upgraded = True
        elif chunked:
            self._phase = _CHUNKED
        elif content_length:
            self._phase = _LENGTH
            self._remaining = content_length
        else:
            self._end_message(events)

    def _drop_h2c(self, headers: list[Header], upgrade: bytes) -> bytes | None:
        """Take the `h2c` token out of an Upgrade (as Envoy does): the proxy speaks HTTP/2
        itself, and a switch relayed blindly would let HTTP/2 bytes bypass routing. The
        protocols left, or None: then it is a plain request (HTTP2-Settings is always
        stripped as connection-specific), and llhttp, which took it for an upgrade, is
        replaced once the message ends."""
        rest = [t for t in (t.strip(b" \t") for t in upgrade.split(b",")) if t and t != b"h2c"]
        headers[:] = [h for h in headers if h[0] != b"upgrade"]
        if not rest:
            self._reparse = True
            return None
        value = b", ".join(rest)
        headers.append((b"upgrade", value))
        return value

    def _body_after_h2c(self, chunked: bool, content_length: int | None) -> None:
        """llhttp ended the message at the head it took for an upgrade; the body is the
        request's own: a fresh llhttp, put past an equivalent head, parses it."""
        self._reparse = False
        sink = self._sink
        self._p = p = _llhttp(HttpRequestParser, sink)
        framing = (
            b"transfer-encoding: chunked"
            if chunked
            else b"content-length: %d" % (content_length or 0)
        )
        p.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        sink.url = b""
        sink.headers = []
        sink.head_done = sink.msg_done = False

    def _new_llhttp(self) -> None:
        self._p = _llhttp(HttpRequestParser, self._sink)

    def _message_done(self) -> None:
        if self._reparse:
            self._reparse = False
            self._p = _llhttp(HttpRequestParser, self._sink)
        # after a non-keep-alive request llhttp refuses further data; the connection is done
        self._phase = _HEAD if self._keep_alive else _DONE
        self._head_bytes = 0
        self._body_bytes = 0

    def _after_end(self, data: bytes) -> None:
        if self._phase == _UPGRADED:
            self.upgraded_tail += data
        # _DONE: bytes after a "Connection: close" request are dropped: the connection ends
        # after that exchange anyway


def _absolute_form(target: bytes) -> tuple[bytes, bytes, bytes]:
    """(authority, path, query) of an absolute-form target; H1Error(400) if it is not one."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise H1Error(400, "invalid request-target")
    end = len(rest)
    for delim in (b"/", b"?", b"#"):
        i = rest.find(delim, 0, end)
        if i >= 0:
            end = i
    authority = rest[:end]
    if not authority or b"@" in authority:  # RFC 9110 4.2.4: no userinfo in http(s) URIs
        raise H1Error(400, "invalid request-target authority")
    rest = rest[end:]
    if b"#" in rest:
        rest = rest[: rest.index(b"#")]
    path, _, query = rest.partition(b"?")
    return authority, path or b"/", query


def _keep_alive(version: bytes, connection: bytes | None) -> bool:
    """Persistence from the version and the Connection tokens (RFC 9112 9.3).

    Not llhttp's should_keep_alive(): llhttp resets its flags once a message completes, which
    for a bodiless message happens before we read them.
    """
    if connection is None:
        return version == b"1.1"
    connection = connection.lower()
    if connection == b"keep-alive":
        return True
    tokens = [t.strip(b" \t") for t in connection.split(b",")]
    if b"close" in tokens:
        return False
    return version == b"1.1" or b"keep-alive" in tokens


_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
_KEEP_ALIVE_LINE = b"\r\nconnection: keep-alive\r\n"


def _without_keep_alive_line(raw: bytes, connection: bytes) -> bytes | None:
    """``raw`` less its one "Connection: keep-alive" line (what nginx and most servers send
    to an HTTP/1.1 client, where it changes nothing), or None for any other Connection
    field: hop-by-hop, and what it names would have to go too."""
    if connection.lower() != b"keep-alive":
        return None  # several fields (joined with ","), other tokens, or OWS around the value
    # nginx's spelling first: no lower-cased copy of the head (the head has one such line)
    i = raw.find(b"\r\nConnection: keep-alive\r\n")
    if i < 0:
        i = raw.lower().find(_KEEP_ALIVE_LINE)
    if i < 0:
        return None  # written with other spacing: the encoder rebuilds it
    return raw[: i + 2] + raw[i + len(_KEEP_ALIVE_LINE) :]


def _names_framing(connection: bytes) -> bool:
    return any(t.strip(b" \t").lower() in _FRAMING for t in connection.split(b","))


class ResponseParser(_Parser[ResponseHead]):
    """Parses one exchange's response on an upstream connection; `reset` readies it for the
    next exchange on the same connection (one parser per pooled connection).

    Events: informational ResponseHeads (1xx other than 101, alone), then the final
    ResponseHead, Body*, EndOfMessage. A 101 ends parsing after its head (`upgraded`, later
    bytes in `upgraded_tail`). Bytes after the complete response land in `trailing`.
    """

    __slots__ = ("_closing", "_head_request", "complete", "trailing", "head_raw")
    _p: HttpResponseParser
    _keep_raw = True

    def __init__(self, *, head_request: bool = False, limits: Limits | None = None) -> None:
        super().__init__(limits, 502, 502)
        self._p = _llhttp(HttpResponseParser, self._sink)
        self._head_request = head_request
        # a HEAD answer's body-less head: llhttp would read the bytes after it as a body
        self._fast = self._fast_path and not head_request
        # The last response said the connection closes: llhttp refuses what follows, which a
        # fresh llhttp (the fast path's fallback) would not remember, so the walk parses it.
        self._closing = False
        self.complete = False
        self.trailing = b""
        # The final head's bytes as received when a proxy may forward them unchanged: an
        # HTTP/1.1 head in one read, one field per line, no hop-by-hop field (but one
        # "Connection: keep-alive", whose line is cut out), and framing exactly as an
        # encoder would write it from this parse (one canonical Content-Length, or chunked
        # where a body follows); None otherwise.
        self.head_raw: bytes | None = None

    def reset(self, *, head_request: bool = False) -> None:
        """Ready for the next exchange. Cheap after a complete, clean response (llhttp
        continues between keep-alive messages); anything else starts over with a new llhttp."""
        sink = self._sink
        if (
            self._phase != _DONE
            or self._error is not None
            or self.trailing
            or sink.begun
            or sink.msg_done
        ):
            # llhttp is mid-message (a HEAD answer's unread length, a 204 it ended itself)
            # or failed: a fresh one
            self.__init__(head_request=head_request, limits=self._limits)  # type: ignore[misc]
            return
        self._phase = _HEAD
        self._head_bytes = 0
        self._body_bytes = 0
        self._head_request = head_request
        self._fast = self._fast_path and not head_request and not self._closing
        self.complete = False
        self.head_raw = None

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends a close-delimited body; H1Error(502) if anything is cut."""
        if self._error is not None:
            raise self._error
        phase = self._phase
        if phase == _EOF:
            self._phase = _DONE
            self.complete = True
            return [EndOfMessage(None)]
        if phase >= _DONE:
            return []
        self._error = H1Error(502, "upstream closed before the response was complete")
        raise self._error

    def _upgrade_pause(self) -> bool:
        # llhttp stops after any 101 head; without Upgrade headers it calls that an error
        return self._sink.head_done and self._p.get_status_code() == 101

    def _on_head(self, events: list[ResponseEvent]) -> None:
        sink = self._sink
        p = self._p
        headers = sink.headers
        if len(headers) > self._limits.max_headers:
            raise H1Error(502, "too many header fields")
        version = _VERSIONS.get(p.get_http_version())
        if version is None:
            raise H1Error(502, "unsupported HTTP version")
        status = p.get_status_code()
        content_length = None
        chunked = False
        connection = None
        raw = self._raw
        self._raw = None
        lengths = 0
        for name, value in headers:
            if name in _RESP_SPECIAL:
                if name == b"content-length":
                    if not value.isdigit():
                        raise H1Error(502, "invalid Content-Length")
                    content_length = int(value)
                    lengths += 1
                    if value[0] == 48 and len(value) > 1:  # leading zeros: not as we write it
                        raw = None
                elif name == b"connection":
                    connection = value if connection is None else connection + b"," + value
                else:
                    if chunked or value.lower() != b"chunked":
                        raise H1Error(502, "unsupported Transfer-Encoding")
                    chunked = True
            elif name in _HOP_BY_HOP or name.startswith(b"proxy-"):
                raw = None
        if chunked and (content_length is not None or version == b"1.0"):
            raise H1Error(502, "Transfer-Encoding with Content-Length or in HTTP/1.0")
        reason = sink.status
        sink.status = b""
        sink.headers = []
        sink.head_done = False

        if 100 <= status < 200:
            events.append(
                ResponseHead(status, reason, version, headers, False, content_length, chunked)
            )
            if status == 101:
                self._phase = _UPGRADED
                self.upgraded = True
                return
            # 1xx has no body, but llhttp would read one if it named a length: start afresh
            sink.begun = sink.msg_done = False
            self._p = _llhttp(HttpResponseParser, sink)
            self._head_bytes = 0
            return

        if raw is not None:
            if not (
                lengths <= 1
                and raw.startswith(b"HTTP/1.1 ")
                and raw.count(b"\n") == len(headers) + 2  # no folded line, no blank line first
                and (
                    (lengths and status != 204)
                    or (chunked and not self._head_request and status != 304 and status != 204)
                    or (not lengths and not chunked and (status == 204 or status == 304))
                )
            ):
                raw = None
            elif connection is not None:
                raw = _without_keep_alive_line(raw, connection)
        self.head_raw = raw
        keep_alive = _keep_alive(version, connection)
        if (
            keep_alive
            and connection is not None
            and connection != b"keep-alive"
            and _names_framing(connection)
        ):
            # framing is ours (the nomination is ignored), but an upstream that tries to hide
            # its framing is not trusted with another request on this connection
            keep_alive = False
        self._closing = not keep_alive
        if self._head_request or status == 204 or status == 304:
            events.append(
                ResponseHead(status, reason, version, headers, keep_alive, content_length, chunked)
            )
            events.append(EndOfMessage(None))
            self._message_done()
            return
        if not chunked and content_length is None:
            keep_alive = False  # the body ends when the connection closes
        events.append(
            ResponseHead(status, reason, version, headers, keep_alive, content_length, chunked)
        )
        if chunked:
            self._phase = _CHUNKED
        elif content_length is not None:
            if content_length:
                self._phase = _LENGTH
                self._remaining = content_length
            else:
                self._end_message(events)
        else:
            self._phase = _EOF

    def _new_llhttp(self) -> None:
        self._p = _llhttp(HttpResponseParser, self._sink)

    def _message_done(self) -> None:
        self._phase = _DONE
        self.complete = True

    def _after_end(self, data: bytes) -> None:
        if self._phase == _UPGRADED:
            self.upgraded_tail += data
        else:
            self.trailing += data


# -- encoders ------------------------------------------------------------------------------

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def _check_lines(out: bytes, lines: int) -> bytes:
    # a CR or LF inside a target, name or value would split the head (header injection)
    if out.count(b"\n") != lines or out.count(b"\r") != lines:
        raise ValueError("CR or LF inside an HTTP/1 head element")
    return out


def _framing(length: int | None, chunked: bool) -> bytes:
    if chunked:
        return b"transfer-encoding: chunked\r\n"
    if length is not None:
        if length < 0:
            raise ValueError("negative Content-Length")
        return b"content-length: %d\r\n" % length
    return b""


def encode_request_head(
    method: bytes,
    target: bytes,
    headers: Iterable[Header],
    *,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """An HTTP/1.1 request head; ValueError if an element holds CR, LF (or the target a space).

    The framing is the caller's own parse, written here: `chunked`, else `length` as
    Content-Length, else none (no body). Content-Length and Transfer-Encoding fields among
    `headers` are never written: what survived stripping cannot frame what we send.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        # inline, no call per field: the length test first, lower() allocates
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING:
            continue
        parts += (name, b": ", value, b"\r\n")
    lines = (len(parts) - 4) // 4 + 2
    framing = _framing(length, chunked)
    if framing:
        parts.append(framing)
        lines += 1
    parts.append(b"\r\n")
    if b" " in target:
        raise ValueError("space inside request-target")
    return _check_lines(b"".join(parts), lines)


def encode_response_head(
    status: int,
    reason: bytes | None,
    headers: Iterable[Header],
    *,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """An HTTP/1.1 response head; reason None means the standard phrase (b"" if unknown).
    Framing as in `encode_request_head`: from `length` / `chunked`, never from `headers`."""
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status {status}")
    if reason is None:
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    else:
        line = b"HTTP/1.1 %d %b\r\n" % (status, reason)
    parts = [line]
    for name, value in headers:
        # inline, no call per field: the length test first, lower() allocates
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING:
            continue
        parts += (name, b": ", value, b"\r\n")
    lines = (len(parts) - 1) // 4 + 2
    framing = _framing(length, chunked)
    if framing:
        parts.append(framing)
        lines += 1
    parts.append(b"\r\n")
    return _check_lines(b"".join(parts), lines)


def encode_chunk(data: bytes) -> bytes:
    """One chunk; b"" for empty data (an empty chunk would read as the last one)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Iterable[Header] | None = None) -> bytes:
    """The last chunk, with optional trailer fields (framing, Host and the other fields RFC
    9110 6.5.1 forbids there dropped: a lenient upstream could take them for the message's
    own)."""
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for name, value in trailer_fields(trailers):
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return _check_lines(b"".join(parts), (len(parts) - 2) // 4 + 2)


_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade", b"http2-settings")
)
_HOP_BY_HOP_KEEP_UPGRADE = _HOP_BY_HOP - {b"upgrade"}
# The same, with x-forwarded-client-cert: a client's is dropped in the pass that strips the
# hop-by-hop fields (the proxy's XFCC policy says when), at no cost of its own.
_XFCC = b"x-forwarded-client-cert"
_HOP_BY_HOP_XFCC = _HOP_BY_HOP | {_XFCC}
_HOP_BY_HOP_KEEP_UPGRADE_XFCC = _HOP_BY_HOP_KEEP_UPGRADE | {_XFCC}
# What Connection can never take off (as Envoy, the nomination is ignored): the framing, which
# the encoder writes from our parse anyway, and the Host that routing and the upstream read.
_NOT_NOMINABLE = frozenset((b"content-length", b"transfer-encoding", b"host"))


def strip_hop_by_hop(
    headers: Iterable[Header], *, keep_upgrade: bool = False, drop_xfcc: bool = False
) -> list[Header]:
    """Headers minus hop-by-hop ones (names lower-case, as the parsers give them).

    Removes Connection and every header it names (except Content-Length, Transfer-Encoding and
    Host), Keep-Alive, TE, Transfer-Encoding, Upgrade, HTTP2-Settings and every proxy-* header;
    keeps Trailer. keep_upgrade=True keeps Upgrade (even when Connection names it); the caller
    then sends its own "Connection: upgrade". drop_xfcc=True removes x-forwarded-client-cert
    too (a request's, which its client may not set).
    """
    headers = headers if isinstance(headers, list) else list(headers)
    if drop_xfcc:
        drop = _HOP_BY_HOP_KEEP_UPGRADE_XFCC if keep_upgrade else _HOP_BY_HOP_XFCC
    else:
        drop = _HOP_BY_HOP_KEEP_UPGRADE if keep_upgrade else _HOP_BY_HOP
    # The usual block has none (Connection is in ``drop``, so nothing is named either): one
    # pass and a copy, not the filtering pass (this runs once or twice per request).
    for name, _ in headers:
        if name in drop or name.startswith(b"proxy-"):
            break
    else:
        return headers[:]
    named: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if named is None:
                named = set()
            named.update(t.strip().lower() for t in value.split(b","))
    if named:
        named -= _NOT_NOMINABLE
        if keep_upgrade:
            named.discard(b"upgrade")
        drop = drop | named
    return [h for h in headers if h[0] not in drop and not h[0].startswith(b"proxy-")]
