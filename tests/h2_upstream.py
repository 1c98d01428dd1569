"""A real HTTP/2 upstream and client for the proxy's tests: trio and the raw ``h2`` library
(not trio_mesh's own codec), cleartext with prior knowledge (h2c).

Server (``start_h2_upstream``); every connection is a task, every stream a task of its own, and
flow control is honest: received DATA is acknowledged only as a handler consumes it, and
responses are sent within the peer's windows (waiting for WINDOW_UPDATE). The ``:path`` picks
the behaviour (a request body is read, and acknowledged, before any response unless said so):
  /echo               200, JSON: method, path, authority, scheme, headers ([[name, value]], no
                      pseudo-headers), trailers ([[name, value]] or null), body_len,
                      body_sha256, stream_id, connection; request trailers come back as
                      response trailers
  /bytes/N            200, N bytes of ``pattern_bytes`` (tests/upstream.py) in 16 KiB DATA frames
  /upload             200, JSON {len, sha256} of the body, consumed (and acknowledged) chunk by
                      chunk
  /slow-read/MS       like /upload, but each received chunk is acknowledged only once
                      ``H2Upstream.read_gate`` is set (it starts unset) and then MS milliseconds
                      later (MS optional): for backpressure tests
  /slow/SECONDS       waits, then 200 ``slow\\n``
  /trailers           200 ``trailers\\n`` with trailers ``x-trailer: yes``, ``grpc-status: 0``
  /status/NNN         that status, short body
  /reset              RST_STREAM(REFUSED_STREAM) straight away (the body is not read)
  /reset-after-head   a 200 head, then RST_STREAM(INTERNAL_ERROR)
  /goaway             200 ``goaway\\n``, then GOAWAY(NO_ERROR, last_stream_id=this stream); streams
                      above it are refused, the connection closes once the streams below finish
  anything else       404
A HEAD request gets the head a GET would get, without body or trailers.

Settings (``start_h2_upstream(nursery, max_concurrent_streams=..., ...)``) go out in the first
SETTINGS frame, except an ``initial_window_size`` below 65535, which follows in a second one
and applies once acknowledged. Streams over ``max_concurrent_streams`` are refused with
RST_STREAM(REFUSED_STREAM) (recorded in ``refused``), not a connection error.

``await upstream.kill_connection(N)`` resets connection N (1, 2, ...) as a crash would: RST, no
GOAWAY, its streams cut wherever they are.

A GOAWAY from the peer is recorded and the connection closes once its streams are done (h2
itself would refuse to finish them, so GOAWAY frames are taken out before h2 sees them).
A protocol error found by h2 closes the connection with h2's GOAWAY and is recorded.

Client: ``h2_request`` (one connection, one stream) and ``open_h2_client`` (an ``H2Client``:
several streams on one connection, resets, raw frames for abuse tests).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from .upstream import pattern_bytes

__all__ = [
    "ErrorCodes",
    "H2Client",
    "H2ConnectionClosed",
    "H2Response",
    "H2StreamReset",
    "H2Upstream",
    "Headers",
    "SettingCodes",
    "h2_request",
    "open_h2_client",
    "pattern_bytes",
    "raw_frame",
    "start_h2_upstream",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PUSH_PROMISE, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x5, 0x7, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_HIGH_WATER = 256 * 1024  # bytes queued for the socket before a sender waits
_CHUNK = 16384

HeaderList = Sequence[tuple[str | bytes, str | bytes]]


class Headers(list):
    """``[(name, value)]`` with lookups; the same interface as ``http_helpers.Headers``, kept
    here so these peers import nothing of trio_mesh."""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for n, v in self:
            if n == name:
                return v
        return default

    def getall(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self if n == name]

    def names(self) -> set[str]:
        return {n for n, _ in self}

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            return name.lower() in self.names()
        return super().__contains__(name)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _headers(raw: Iterable[tuple[str | bytes, str | bytes]]) -> Headers:
    return Headers((_text(n), _text(v)) for n, v in raw)


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame's bytes built by hand (for frames hyperframe refuses to build, e.g. DATA on
    stream 0); send with ``H2Client.send_raw``."""
    header = len(payload).to_bytes(3, "big") + bytes((kind, flags))
    return header + stream_id.to_bytes(4, "big") + payload


def parse_frame(raw: bytes) -> Frame:
    """One whole frame's bytes as a hyperframe ``Frame`` (raises on malformed frames)."""
    frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
    frame.parse_body(memoryview(raw[9 : 9 + length]))
    return frame


class H2ConnectionClosed(Exception):
    """The connection ended (EOF, a write failure, a protocol error, or a GOAWAY that leaves
    this stream out) before the awaited thing happened."""


class H2StreamReset(Exception):
    """The peer reset the stream."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        try:
            name = ErrorCodes(error_code).name
        except ValueError:
            name = str(error_code)
        super().__init__(f"stream {stream_id} reset by the peer: {name}")
        self.stream_id = stream_id
        self.error_code = error_code


# --------------------------------------------------------------------------- plumbing


class _Frames:
    """Cuts received bytes into whole frames (and a client preface), undecoded, so that some
    frames can be taken out before h2 sees them. Anything odd (a wrong preface, a frame
    longer than ``limit()``) switches to passing the bytes through as they come: h2 judges."""

    def __init__(self, preface: bool, limit: Callable[[], int]) -> None:
        self._buf = bytearray()
        self._preface = preface
        self._limit = limit
        self.opaque = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        if self.opaque:
            out = [bytes(buf)]
            buf.clear()
            return out
        out: list[bytes] = []
        pos = 0
        if self._preface:
            if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
                return out
            if not buf.startswith(PREFACE):
                self.opaque = True
                out.append(bytes(buf))
                buf.clear()
                return out
            out.append(PREFACE)
            pos = len(PREFACE)
            self._preface = False
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > self._limit():
                self.opaque = True
                out.append(bytes(buf[pos:]))
                pos = len(buf)
                break
            if len(buf) - pos < 9 + length:
                break
            out.append(bytes(buf[pos : pos + 9 + length]))
            pos += 9 + length
        del buf[:pos]
        return out


class _Peer:
    """One HTTP/2 connection on a trio stream: h2 state, an output buffer written by one
    writer task (so the reader never blocks on the socket), a change event for waiters."""

    def __init__(self, sock: trio.SocketStream, conn: h2.connection.H2Connection, server: bool):
        self.sock = sock
        self.conn = conn
        self._frames = _Frames(server, lambda: conn.max_inbound_frame_size)
        self._out = bytearray()
        self._writing = False
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._in_header_block = False
        #: h2 found a protocol error in what the peer sent (h2 queued its GOAWAY).
        self.h2_error: h2.exceptions.ProtocolError | None = None
        #: Writing to the socket failed.
        self.broken = False
        #: The peer closed its side (EOF or reset).
        self.eof = False
        #: GOAWAY frames the peer sent (hyperframe ``GoAwayFrame``: error_code, last_stream_id).
        self.goaways_received: list[GoAwayFrame] = []

    # ---- waiting

    def notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], object]) -> None:
        """Returns once ``predicate()`` is true; it is checked after every change (bytes in,
        bytes out, events)."""
        while not predicate():
            await self._changed.wait()

    @property
    def alive(self) -> bool:
        return not (self.eof or self.broken or self.h2_error is not None)

    def _check_alive(self) -> None:
        if not self.alive:
            raise H2ConnectionClosed(
                f"connection closed (eof={self.eof}, broken={self.broken}, "
                f"h2_error={self.h2_error!r})"
            )

    # ---- writing

    def flush(self) -> None:
        """Move what h2 has to send into the output buffer (the writer sends it)."""
        data = self.conn.data_to_send()
        if data:
            self._out += data
            self._wake.set()

    def send_raw_nowait(self, data: bytes) -> None:
        """Queue ``data`` after everything h2 queued so far."""
        self.flush()
        self._out += data
        self._wake.set()

    async def drain(self, high: int = _HIGH_WATER) -> None:
        """Wait until at most ``high`` bytes are queued (0: all written)."""
        self.flush()
        while not self.broken and (len(self._out) > high or (high == 0 and self._writing)):
            await self._changed.wait()

    async def _writer(self) -> None:
        try:
            while True:
                if not self._out:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                data = bytes(self._out)
                self._out.clear()
                self._writing = True
                await self.sock.send_all(data)
                self._writing = False
                self.notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True
            self._writing = False
            self._out.clear()
            self.notify()
            self._on_broken()

    async def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """DATA within the peer's stream and connection windows, 16 KiB at most per frame."""
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            while True:
                self._check_alive()
                window = self.conn.local_flow_control_window(stream_id)
                if window > 0:
                    break
                await self._changed.wait()
            n = min(window, self.conn.max_outbound_frame_size, _CHUNK, len(data) - offset)
            last = offset + n == len(data)
            self.conn.send_data(stream_id, bytes(view[offset : offset + n]), end_stream and last)
            offset += n
            await self.drain()
        if end_stream and not data:
            self.conn.end_stream(stream_id)
        await self.drain()

    async def linger_close(self, timeout: float) -> None:
        """Write everything, send FIN and read on (discarding) until the peer closes too, for
        at most ``timeout`` seconds: closing with unread bytes would reset the connection,
        and the peer could lose what we sent last. Needs the reader task running."""
        with trio.move_on_after(timeout):
            await self.drain(0)
            if not (self.eof or self.broken):
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError
                ):
                    await self.sock.send_eof()
                await self.wait_until(lambda: self.eof or self.broken)

    # ---- reading

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.sock.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof = True
                self.notify()
                self._on_eof()
                return
            self._receive(data)  # after an h2 error: frames still cut (and recorded), not fed
            self.flush()
            self.notify()

    def _receive(self, data: bytes) -> None:
        pending: list[bytes] = []
        for chunk in self._frames.feed(data):
            if self._frames.opaque or chunk is PREFACE or len(chunk) < 9:
                pending.append(chunk)
                continue
            kind, flags = chunk[3], chunk[4]
            stream_id = int.from_bytes(chunk[5:9], "big") & 0x7FFFFFFF
            self._saw_frame(chunk)
            goaway = kind == _GOAWAY and stream_id == 0 and len(chunk) >= 17
            take = self._takes(kind, stream_id) or (goaway and not self._in_header_block)
            if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
                self._in_header_block = not flags & _END_HEADERS
            if take:
                try:
                    frame = parse_frame(chunk)
                except Exception:  # malformed
                    if stream_id == 0:
                        pending.append(chunk)  # h2 judges it
                    else:
                        self._on_taken_malformed(stream_id, chunk)
                    continue
                self._to_h2(b"".join(pending))
                pending.clear()
                if isinstance(frame, GoAwayFrame) and stream_id == 0:
                    self.goaways_received.append(frame)
                    self._on_goaway(frame)
                else:
                    self._on_taken(frame)
            else:
                pending.append(chunk)
        self._to_h2(b"".join(pending))

    def _to_h2(self, data: bytes) -> None:
        if not data or self.h2_error is not None:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.h2_error = exc
            self.flush()  # h2's GOAWAY
            self._on_h2_error(exc)
            return
        for event in events:
            self._event(event)

    # ---- hooks

    def _event(self, event: h2.events.Event) -> None:
        raise NotImplementedError

    def _saw_frame(self, raw: bytes) -> None:
        pass

    def _takes(self, kind: int, stream_id: int) -> bool:
        return False

    def _on_taken(self, frame: Frame) -> None:
        pass

    def _on_taken_malformed(self, stream_id: int, raw: bytes) -> None:
        pass

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        pass

    def _on_h2_error(self, exc: Exception) -> None:
        pass

    def _on_eof(self) -> None:
        pass

    def _on_broken(self) -> None:
        pass


# --------------------------------------------------------------------------- server


class _ServerStream:
    def __init__(self, stream_id: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.id = stream_id
        self.headers = _headers(raw_headers)
        self.path = self.headers.get(":path") or ""
        self.inbox: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.trailers: Headers | None = None
        self.reset_code: int | None = None
        self.reset_sent = False
        self.scope = trio.CancelScope()
        self.done = False


class _ServerConnection(_Peer):
    def __init__(self, upstream: H2Upstream, sock: trio.SocketStream, index: int) -> None:
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, normalize_inbound_headers=False
        )
        super().__init__(sock, h2.connection.H2Connection(config), server=True)
        self.up = upstream
        self.index = index
        self.streams: dict[int, _ServerStream] = {}
        self.active: set[int] = set()
        #: Set once we sent our GOAWAY.
        self.last_stream_id: int | None = None
        self.finished = trio.Event()
        self.nursery: trio.Nursery

    def notify(self) -> None:
        super().notify()
        self.up._notify()

    async def run(self) -> None:
        conn, up = self.conn, self.up
        # One SETTINGS frame with our values, except a stream window below the default: that
        # follows in a second frame, which h2 applies once acknowledged (RFC 9113 6.5.3), so a
        # client that sends before reading our SETTINGS is not punished.
        first = {
            SettingCodes.MAX_CONCURRENT_STREAMS: up.max_concurrent_streams,
            SettingCodes.MAX_FRAME_SIZE: up.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: up.max_header_list_size,
        }
        later = {}
        if up.initial_window_size >= 65535:
            first[SettingCodes.INITIAL_WINDOW_SIZE] = up.initial_window_size
        else:
            later[SettingCodes.INITIAL_WINDOW_SIZE] = up.initial_window_size
        conn.local_settings = Settings(client=False, initial_values=first)
        conn.initiate_connection()
        # h2 would make a stream over the limit a connection error; we refuse it instead
        # (REFUSED_STREAM, as nghttp2 does), counting streams ourselves: see _event.
        conn.local_settings = Settings(
            client=False, initial_values={**first, SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1}
        )
        conn.decoder.max_header_list_size = up.max_header_list_size
        if later:
            conn.update_settings(later)
        if self.up.connection_window > 65535:
            conn.increment_flow_control_window(self.up.connection_window - 65535)
        self.flush()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._writer)
            nursery.start_soon(self._reader)
            await self.finished.wait()
            await self.linger_close(2)
            nursery.cancel_scope.cancel()

    # ---- events

    def _event(self, event: h2.events.Event) -> None:
        up = self.up
        if isinstance(event, h2.events.RequestReceived):
            st = _ServerStream(event.stream_id, event.headers)
            self.streams[st.id] = st
            up.requests.append((st.path, st.headers))
            up.request_connections.append(self.index)
            if self.last_stream_id is not None and st.id > self.last_stream_id:
                self._refuse(st)
                return
            if len(self.active) >= up.max_concurrent_streams:
                up.refused.append((self.index, st.id, st.path))
                self._refuse(st)
                return
            self.active.add(st.id)
            up.max_concurrent_seen = max(up.max_concurrent_seen, len(self.active))
            self.nursery.start_soon(self._run_stream, st)
        elif isinstance(event, h2.events.DataReceived):
            up.bytes_received += event.flow_controlled_length
            st = self.streams.get(event.stream_id)
            if st is None or st.done:
                self._ack(event.flow_controlled_length, event.stream_id)
            else:
                st.inbox.append((event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.TrailersReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.trailers = _headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.ended = True
        elif isinstance(event, h2.events.StreamReset):
            st = self.streams.get(event.stream_id)
            up.resets_received.append(event.stream_id)
            up.resets.append((self.index, event.stream_id, event.error_code, st and st.path))
            if st is not None:
                st.reset_code = event.error_code
                st.scope.cancel()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            up.settings_received.append(
                {int(k): v.new_value for k, v in event.changed_settings.items()}
            )

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        self.up.goaways_received.append((self.index, frame.error_code, frame.last_stream_id))
        if not self.active:
            self.finished.set()

    def _on_h2_error(self, exc: Exception) -> None:
        self.up.protocol_errors.append(f"connection {self.index}: {exc!r}")
        self.finished.set()

    def _on_eof(self) -> None:
        self.finished.set()

    def _on_broken(self) -> None:
        self.finished.set()

    # ---- streams

    async def _run_stream(self, st: _ServerStream) -> None:
        try:
            with st.scope:
                await self.up._handle(self, st)
        except (h2.exceptions.StreamClosedError, H2ConnectionClosed):
            pass
        except h2.exceptions.ProtocolError:
            if self.h2_error is None:
                raise
        finally:
            st.done = True
            while st.inbox:
                self._ack(st.inbox.popleft()[1], st.id)
            if not (st.ended or st.reset_sent or st.reset_code is not None) and self.alive:
                # Answered before the request ended: ask the client to stop (RFC 9113 8.1).
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(st.id, ErrorCodes.NO_ERROR)
            self.active.discard(st.id)
            self.flush()
            self.notify()
            if not self.active and (self.last_stream_id is not None or self.goaways_received):
                self.finished.set()

    def _ack(self, n: int, stream_id: int) -> None:
        if n and self.h2_error is None:
            self.conn.acknowledge_received_data(n, stream_id)
            self.up.bytes_consumed += n

    def _refuse(self, st: _ServerStream) -> None:
        st.done = st.reset_sent = True
        st.scope.cancel()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(st.id, ErrorCodes.REFUSED_STREAM)
        self.flush()

    async def read(self, st: _ServerStream) -> tuple[bytes, int] | None:
        """The next received DATA (bytes, flow-controlled length), not yet acknowledged;
        ``None`` once the request ended."""
        while not st.inbox:
            if st.ended:
                return None
            self._check_alive()
            await self._changed.wait()
        return st.inbox.popleft()

    def consume(self, st: _ServerStream, n: int) -> None:
        """Acknowledge ``n`` flow-controlled bytes as processed (WINDOW_UPDATE as h2 sees fit)."""
        self._ack(n, st.id)
        self.flush()

    def reset(self, st: _ServerStream, error_code: int) -> None:
        self.conn.reset_stream(st.id, error_code)
        st.done = st.reset_sent = True
        self.flush()

    async def respond(
        self,
        st: _ServerStream,
        status: int,
        headers: HeaderList = (),
        body: bytes = b"",
        trailers: HeaderList | None = None,
    ) -> None:
        head = [(":status", str(status)), *headers]
        if st.headers.get(":method") == "HEAD":  # the same head, no body (nor trailers)
            body, trailers = b"", None
        self.conn.send_headers(st.id, head, end_stream=not body and not trailers)
        if body:
            await self.send_body(st.id, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(st.id, list(trailers), end_stream=True)
        await self.drain()

    def send_goaway(self, last_stream_id: int, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY behind h2's back (h2 would refuse to finish the remaining streams after its
        own): streams above ``last_stream_id`` are refused, the connection closes once the
        others are done."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = error_code
        self.send_raw_nowait(frame.serialize())
        self.last_stream_id = last_stream_id
        for stream_id in sorted(self.active):
            if stream_id > last_stream_id:
                self.active.discard(stream_id)
                self._refuse(self.streams[stream_id])
        if not self.active:
            self.finished.set()


class H2Upstream:
    """The server. Records (plain attributes, read them any time):

    ``requests``: ``(path, Headers)`` per request, pseudo-headers included, in arrival order;
    ``request_connections``: the connection number (1, 2, ...) of each request;
    ``resets_received``: stream ids the client reset; ``resets``: ``(connection, stream_id,
    error_code, path)`` for each; ``connections`` (accepted), ``connections_closed``;
    ``max_concurrent_seen``: most streams handled at once on one connection;
    ``refused``: ``(connection, stream_id, path)`` of streams refused (REFUSED_STREAM) for
    going over ``max_concurrent_streams`` (they are in ``requests`` too, as are streams
    refused for coming after our GOAWAY);
    ``goaways_received``: ``(connection, error_code, last_stream_id)``;
    ``settings_received``: the SETTINGS values of each SETTINGS frame the clients sent;
    ``protocol_errors``: what h2 rejected (the connection was closed with a GOAWAY);
    ``bytes_received`` / ``bytes_consumed``: flow-controlled DATA bytes received / acknowledged.

    ``wait_until(predicate)`` returns once ``predicate()`` holds; it is re-checked on every
    change, so tests wait on state, not time.
    """

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = 65535,
        connection_window: int = 65535,
        max_frame_size: int = 16384,
        max_header_list_size: int = 65536,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.connection_window = connection_window
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        self.port = 0
        self.requests: list[tuple[str, Headers]] = []
        self.request_connections: list[int] = []
        self.resets_received: list[int] = []
        self.resets: list[tuple[int, int, int, str | None]] = []
        self.refused: list[tuple[int, int, str]] = []
        self.connections = 0
        self.connections_closed = 0
        self.max_concurrent_seen = 0
        self.goaways_received: list[tuple[int, int, int]] = []
        self.settings_received: list[dict[int, int]] = []
        self.protocol_errors: list[str] = []
        self.bytes_received = 0
        self.bytes_consumed = 0
        #: /slow-read acknowledges nothing until this is set (replace it to close it again).
        self.read_gate = trio.Event()
        self._changed = trio.Event()
        self._live: dict[int, _ServerConnection] = {}  # by connection number, while open

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    def _notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], object]) -> None:
        while not predicate():
            await self._changed.wait()

    async def _serve(self, sock: trio.SocketStream) -> None:
        self.connections += 1
        connection = _ServerConnection(self, sock, self.connections)
        self._live[connection.index] = connection
        self._notify()
        try:
            await connection.run()
        finally:
            del self._live[connection.index]
            sock.socket.close()
            self.connections_closed += 1
            self._notify()

    async def kill_connection(self, index: int) -> None:
        """Connection ``index`` (1, 2, ...) gone without a goodbye, as a crash would: reset
        (SO_LINGER 0, so the peer gets an RST), no GOAWAY; its streams are cut wherever they
        are. KeyError if it is closed already."""
        sock = self._live[index].sock
        sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.aclose()

    # ---- endpoints

    async def _body(
        self, c: _ServerConnection, st: _ServerStream, gate: bool = False, delay: float = 0.0
    ) -> tuple[int, str]:
        digest = hashlib.sha256()
        length = 0
        while (got := await c.read(st)) is not None:
            data, flow = got
            digest.update(data)
            length += len(data)
            if gate:
                await self.read_gate.wait()
                if delay:
                    await trio.sleep(delay)
            c.consume(st, flow)
        return length, digest.hexdigest()

    async def _handle(self, c: _ServerConnection, st: _ServerStream) -> None:
        parts = st.path.split("?", 1)[0].strip("/").split("/")
        name = parts[0]
        text = [("content-type", "text/plain")]

        if name == "reset":
            c.reset(st, ErrorCodes.REFUSED_STREAM)
            return
        if name == "reset-after-head":
            c.conn.send_headers(st.id, [(":status", "200"), *text])
            c.reset(st, ErrorCodes.INTERNAL_ERROR)
            return

        if name == "slow-read":
            delay = float(parts[1]) / 1000 if len(parts) > 1 and parts[1] else 0.0
            length, digest = await self._body(c, st, gate=True, delay=delay)
        else:
            length, digest = await self._body(c, st)

        if name == "echo":
            regular = [[n, v] for n, v in st.headers if not n.startswith(":")]
            trailers = list(st.trailers) if st.trailers else None
            info = {
                "method": st.headers.get(":method"),
                "path": st.path,
                "authority": st.headers.get(":authority"),
                "scheme": st.headers.get(":scheme"),
                "headers": regular,
                "trailers": [[n, v] for n, v in trailers] if trailers else None,
                "body_len": length,
                "body_sha256": digest,
                "stream_id": st.id,
                "connection": c.index,
            }
            await self._json(c, st, info, trailers)
        elif name in ("upload", "slow-read"):
            await self._json(c, st, {"len": length, "sha256": digest})
        elif name == "bytes":
            n = int(parts[1])
            head = [("content-type", "application/octet-stream"), ("content-length", str(n))]
            if st.headers.get(":method") == "HEAD":
                n = 0
            c.conn.send_headers(st.id, [(":status", "200"), *head], end_stream=n == 0)
            sent = 0
            while sent < n:
                piece = pattern_bytes(min(_CHUNK, n - sent))  # 16 KiB: a whole pattern period
                sent += len(piece)
                await c.send_body(st.id, piece, end_stream=sent == n)
        elif name == "slow":
            await trio.sleep(float(parts[1]))
            await c.respond(st, 200, [*text, ("content-length", "5")], b"slow\n")
        elif name == "trailers":
            await c.respond(
                st,
                200,
                [*text, ("content-length", "9")],
                b"trailers\n",
                [("x-trailer", "yes"), ("grpc-status", "0")],
            )
        elif name == "status":
            status = int(parts[1])
            body = b"" if status in (204, 304) else b"status %d\n" % status
            await c.respond(st, status, [*text, ("content-length", str(len(body)))], body)
        elif name == "goaway":
            await c.respond(st, 200, [*text, ("content-length", "7")], b"goaway\n")
            c.send_goaway(st.id)
        else:
            await c.respond(st, 404, [*text, ("content-length", "10")], b"not found\n")

    async def _json(
        self,
        c: _ServerConnection,
        st: _ServerStream,
        info: dict[str, Any],
        trailers: HeaderList | None = None,
    ) -> None:
        body = json.dumps(info).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(body)))]
        await c.respond(st, 200, head, body, trailers)


async def start_h2_upstream(nursery: trio.Nursery, **settings: int) -> H2Upstream:
    """An ``H2Upstream`` listening on 127.0.0.1 (``.port``) once this returns. ``settings``:
    ``max_concurrent_streams`` (100), ``initial_window_size`` (65535), ``connection_window``
    (65535), ``max_frame_size`` (16384), ``max_header_list_size`` (65536)."""
    upstream = H2Upstream(**settings)
    await upstream.start(nursery)
    return upstream


# --------------------------------------------------------------------------- client


@dataclass
class H2Response:
    """One response; unpacks as ``status, headers, body`` like http_helpers.Response."""

    status: int
    headers: Headers
    body: bytes
    trailers: Headers | None = None
    stream_id: int = 0
    #: 1xx heads before the final one: ``(status, Headers)``.
    informational: list[tuple[int, Headers]] = field(default_factory=list)

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def json(self) -> Any:
        return json.loads(self.body)


class ClientStream:
    """What the client knows of one stream (``H2Client.streams[stream_id]``)."""

    def __init__(self, stream_id: int, raw: bool = False) -> None:
        self.id = stream_id
        self.raw = raw
        self.status: int | None = None
        self.headers: Headers | None = None
        self.informational: list[tuple[int, Headers]] = []
        self.inbox: deque[tuple[bytes, int]] = deque()
        self.received = 0
        self.ended = False
        self.trailers: Headers | None = None
        #: The peer's RST_STREAM error code.
        self.reset_code: int | None = None
        #: Above the last_stream_id of a GOAWAY: never processed by the peer.
        self.refused = False
        #: Raw streams only: their frames, and their header blocks decoded (HPACK kept in step).
        self.raw_frames: list[Frame | bytes] = []  # bytes: a frame hyperframe could not parse
        self.raw_headers: list[Headers] = []
        self._block = bytearray()


class H2Client(_Peer):
    """An HTTP/2 client connection on raw h2; make one with ``open_h2_client``.

    Received data is acknowledged only as it is read (``read_chunk``/``response``), so a test
    that does not read applies backpressure. ``events`` holds every h2 event, ``frames``
    every frame received (hyperframe objects, parsed independently of h2), ``goaway`` the
    last GOAWAY received. Frames for streams opened with ``send_raw_headers`` bypass h2
    (``streams[id].raw_frames``); header blocks on them are decoded with h2's own decoder, so
    HPACK state stays in step.
    """

    def __init__(
        self,
        sock: trio.SocketStream,
        authority: str,
        *,
        validate: bool = True,
        settings: dict[int, int] | None = None,
        connection_window: int = 65535,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=True,
            normalize_inbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        local = {
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            **(settings or {}),
        }
        conn.local_settings = Settings(client=True, initial_values=local)
        super().__init__(sock, conn, server=False)
        self.authority = authority
        self.connection_window = connection_window
        self.streams: dict[int, ClientStream] = {}
        self.events: list[h2.events.Event] = []
        self.frames: list[Frame | bytes] = []
        self.goaway: GoAwayFrame | None = None
        self._raw_ids: set[int] = set()

    def _start(self) -> None:
        self.conn.initiate_connection()
        if self.connection_window > 65535:
            self.conn.increment_flow_control_window(self.connection_window - 65535)
        self.flush()

    @property
    def closed(self) -> bool:
        """The peer closed the connection (EOF or reset)."""
        return self.eof

    async def wait_closed(self) -> None:
        await self.wait_until(lambda: self.eof)

    # ---- receiving

    def _saw_frame(self, raw: bytes) -> None:
        try:
            self.frames.append(parse_frame(raw))
        except Exception:  # a malformed frame: keep its bytes
            self.frames.append(raw)

    def _takes(self, kind: int, stream_id: int) -> bool:
        return stream_id in self._raw_ids

    def _on_taken_malformed(self, stream_id: int, raw: bytes) -> None:
        self.streams[stream_id].raw_frames.append(raw)  # type: ignore[arg-type]

    def _on_taken(self, frame: Frame) -> None:
        st = self.streams[frame.stream_id]
        st.raw_frames.append(frame)
        if frame.type in (_HEADERS, _CONTINUATION):
            st._block += frame.data
            if "END_HEADERS" in frame.flags:
                block = bytes(st._block)
                st._block.clear()
                st.raw_headers.append(_headers(self.conn.decoder.decode(block, raw=True)))
        if frame.type == _DATA and frame.flow_controlled_length:
            update = WindowUpdateFrame(0)
            update.window_increment = frame.flow_controlled_length
            self.send_raw_nowait(update.serialize())
        if isinstance(frame, RstStreamFrame):
            st.reset_code = frame.error_code
        if "END_STREAM" in frame.flags:
            st.ended = True

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        self.goaway = frame
        for st in self.streams.values():
            if st.id > frame.last_stream_id and not st.ended and st.reset_code is None:
                st.refused = True

    def _event(self, event: h2.events.Event) -> None:
        self.events.append(event)
        st = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.InformationalResponseReceived):
            if st is not None:
                headers = _headers(event.headers)
                st.informational.append((int(headers.get(":status") or 0), headers))
        elif isinstance(event, h2.events.ResponseReceived):
            if st is not None:
                st.headers = _headers(event.headers)
                st.status = int(st.headers.get(":status") or 0)
        elif isinstance(event, h2.events.DataReceived):
            if st is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                st.inbox.append((event.data, event.flow_controlled_length))
                st.received += len(event.data)
        elif isinstance(event, h2.events.TrailersReceived):
            if st is not None:
                st.trailers = _headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            if st is not None:
                st.ended = True
        elif isinstance(event, h2.events.StreamReset) and st is not None:
            st.reset_code = event.error_code

    # ---- sending

    def _stream(self, stream_id: int) -> ClientStream:
        st = self.streams.get(stream_id)
        if st is None:
            raise KeyError(f"no stream {stream_id} on this client")
        return st

    def _check_stream(self, st: ClientStream) -> None:
        if st.refused:
            raise H2ConnectionClosed(f"stream {st.id} left out by GOAWAY {self.goaway}")
        if st.reset_code is not None and not st.ended:
            raise H2StreamReset(st.id, st.reset_code)
        self._check_alive()

    def next_stream_id(self) -> int:
        return self.conn.get_next_available_stream_id()

    async def send_headers(
        self,
        method: str = "GET",
        path: str = "/",
        headers: HeaderList = (),
        *,
        end_stream: bool = False,
        authority: str | None = None,
        scheme: str = "http",
        pseudo: HeaderList | None = None,
        wait_for_slot: bool = True,
    ) -> int:
        """Open a stream; returns its id. ``pseudo`` replaces the pseudo-headers altogether.
        ``wait_for_slot``: wait while the peer's SETTINGS_MAX_CONCURRENT_STREAMS is used up
        (else h2 raises TooManyStreamsError)."""
        self._check_alive()
        if self.goaway is not None:
            raise H2ConnectionClosed(f"the peer sent GOAWAY {self.goaway}")
        if wait_for_slot:
            await self.wait_until(
                lambda: (
                    not self.alive
                    or self.conn.open_outbound_streams
                    < self.conn.remote_settings.max_concurrent_streams
                )
            )
            self._check_alive()
        if pseudo is None:
            pseudo = [
                (":method", method),
                (":scheme", scheme),
                (":authority", authority if authority is not None else self.authority),
                (":path", path),
            ]
        stream_id = self.next_stream_id()
        self.streams[stream_id] = ClientStream(stream_id)
        self.conn.send_headers(stream_id, [*pseudo, *headers], end_stream=end_stream)
        await self.drain()
        return stream_id

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Flow-controlled DATA (waits for WINDOW_UPDATE as needed)."""
        st = self._stream(stream_id)
        try:
            await self.send_body(stream_id, data, end_stream)
        except h2.exceptions.StreamClosedError:
            self._check_stream(st)
            raise

    async def send_trailers(self, stream_id: int, trailers: HeaderList) -> None:
        self.conn.send_headers(stream_id, list(trailers), end_stream=True)
        await self.drain()

    async def end_stream(self, stream_id: int) -> None:
        self.conn.end_stream(stream_id)
        await self.drain()

    async def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM (on raw streams too)."""
        if stream_id in self._raw_ids or stream_id not in self.streams:
            frame = RstStreamFrame(stream_id)
            frame.error_code = error_code
            self.send_raw_nowait(frame.serialize())
        else:
            self.conn.reset_stream(stream_id, error_code)
        await self.drain()

    async def ping(self, data: bytes = b"trio-msh") -> None:
        """PING; its ack shows up in ``events`` as ``h2.events.PingAckReceived``."""
        self.conn.ping(data)
        await self.drain()

    async def update_settings(self, settings: dict[int, int]) -> None:
        self.conn.update_settings(settings)
        await self.drain()

    async def send_raw(self, data: bytes | Frame | Iterable[Frame]) -> None:
        """Bytes or hyperframe frames, written after everything h2 queued so far. h2 knows
        nothing of them: for new streams use ``send_raw_headers`` (or ``claim_stream_id``)."""
        if isinstance(data, Frame):
            data = data.serialize()
        elif not isinstance(data, bytes | bytearray):
            data = b"".join(f.serialize() for f in data)
        self.send_raw_nowait(bytes(data))
        await self.drain()

    def claim_stream_id(self, stream_id: int | None = None) -> int:
        """Reserve a stream id for raw frames (h2 will not use it; frames the peer sends on
        it bypass h2 and land in ``streams[id].raw_frames``)."""
        if stream_id is None:
            stream_id = self.next_stream_id()
        self._raw_ids.add(stream_id)
        self.streams.setdefault(stream_id, ClientStream(stream_id, raw=True))
        if stream_id % 2 == 1:
            self.conn.highest_outbound_stream_id = max(
                self.conn.highest_outbound_stream_id or 0, stream_id
            )
        return stream_id

    def encode_headers(self, headers: HeaderList) -> bytes:
        """An HPACK block from h2's own encoder (send it before h2 sends other headers)."""
        return self.conn.encoder.encode([(_text(n), _text(v)) for n, v in headers])

    async def send_raw_headers(
        self,
        headers: HeaderList,
        *,
        stream_id: int | None = None,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> int:
        """A HEADERS frame written by hand (any names and values, no validation), HPACK-encoded
        in step with h2; returns the (claimed) stream id. ``headers`` must include the
        pseudo-headers you want."""
        stream_id = self.claim_stream_id(stream_id)
        self.flush()
        frame = HeadersFrame(stream_id)
        frame.data = self.encode_headers(headers)
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        self.send_raw_nowait(frame.serialize())
        await self.drain()
        return stream_id

    # ---- reading a response

    async def read_head(self, stream_id: int) -> tuple[int, Headers]:
        """The final (non-1xx) response head."""
        st = self._stream(stream_id)
        while st.status is None:
            self._check_stream(st)
            await self._changed.wait()
        assert st.headers is not None
        return st.status, st.headers

    async def read_chunk(self, stream_id: int, ack: bool = True) -> bytes:
        """The next received DATA of the response body (acknowledged unless ``ack=False``),
        ``b""`` at its end. A reset after some data raises once that data is read."""
        st = self._stream(stream_id)
        while not st.inbox:
            if st.ended:
                return b""
            self._check_stream(st)
            await self._changed.wait()
        data, flow = st.inbox.popleft()
        if ack and flow and self.h2_error is None:
            self.conn.acknowledge_received_data(flow, stream_id)
            self.flush()
        return data

    async def response(self, stream_id: int) -> H2Response:
        status, headers = await self.read_head(stream_id)
        body = bytearray()
        while chunk := await self.read_chunk(stream_id):
            body += chunk
        st = self.streams[stream_id]
        return H2Response(status, headers, bytes(body), st.trailers, stream_id, st.informational)

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: HeaderList = (),
        body: bytes = b"",
        trailers: HeaderList | None = None,
        *,
        authority: str | None = None,
        scheme: str = "http",
    ) -> H2Response:
        """One exchange on a new stream of this connection. If the peer answers and resets
        with NO_ERROR before the body is sent, the answer is returned."""
        stream_id = await self.send_headers(
            method,
            path,
            headers,
            end_stream=not body and not trailers,
            authority=authority,
            scheme=scheme,
        )
        try:
            if body:
                await self.send_data(stream_id, body, end_stream=not trailers)
            if trailers:
                await self.send_trailers(stream_id, trailers)
        except (H2StreamReset, h2.exceptions.StreamClosedError):
            if not self.streams[stream_id].ended:
                raise
        return await self.response(stream_id)

    async def aclose(self, goaway: bool = True) -> None:
        """GOAWAY(NO_ERROR) unless the connection is already gone, FIN, up to a second for the
        peer to close too (``linger_close``), then close the socket."""
        with trio.CancelScope(shield=True):
            if goaway and self.alive:
                frame = GoAwayFrame(0)
                frame.last_stream_id = 0
                self.send_raw_nowait(frame.serialize())
            await self.linger_close(1)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.sock.aclose()


@contextlib.asynccontextmanager
async def open_h2_client(
    port: int,
    *,
    authority: str | None = None,
    validate: bool = True,
    settings: dict[int, int] | None = None,
    connection_window: int = 65535,
    preface: bool = True,
) -> AsyncIterator[H2Client]:
    """An ``H2Client`` on a new connection to 127.0.0.1:``port`` for the block.

    ``authority``: default ``:authority`` (``127.0.0.1:port``); ``validate=False`` lets h2 send
    headers it would reject (uppercase names, connection-specific headers, no pseudo-headers);
    ``settings``: our SETTINGS (``SettingCodes`` keys; ENABLE_PUSH is 0 unless given);
    ``connection_window``: raise the connection receive window at start; ``preface=False``:
    send nothing at all (write a preface or anything else with ``send_raw``).
    """
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    client = H2Client(
        sock,
        authority or f"127.0.0.1:{port}",
        validate=validate,
        settings=settings,
        connection_window=connection_window,
    )
    if preface:
        client._start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._writer)
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                await client.aclose(goaway=preface)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader and writer raise nothing of their own: a lone exception is the block's,
        # so ``pytest.raises(H2StreamReset)`` works.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.socket.close()


async def h2_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: HeaderList = (),
    body: bytes = b"",
    trailers: HeaderList | None = None,
    *,
    authority: str | None = None,
    scheme: str = "http",
    timeout: float = 10.0,
) -> H2Response:
    """One request on a new connection; raises ``H2StreamReset`` if the stream is reset and
    ``H2ConnectionClosed`` if the connection goes first; fails after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        async with open_h2_client(port, authority=authority) as client:
            return await client.request(
                method, path, headers, body, trailers, authority=authority, scheme=scheme
            )


class ExtraUpstream(H2Upstream):
    """The h2 upstream (which survives its GOAWAY refusing a stream mid-handler) plus five
    endpoints:
    /counted/N      like /bytes/N; ``body_sent`` counts the body bytes handed to h2, which h2
                    sends only within the flow-control window the proxy granted
    /nolength/N[?trailers]
                    N bytes of ``pattern_bytes`` without content-length (``?trailers``: then
                    trailers ``x-trailer: yes``, ``grpc-status: 0``)
    /reset-code/N   RST_STREAM with error code N before any response (the body is not read)
    /die            a 200 head, then the connection is reset (no GOAWAY)
    /refuse-once/KEY[?after=N]
                    the first stream with KEY: its body read (and acknowledged) to its end, or
                    to N bytes, then RST_STREAM(REFUSED_STREAM); later ones: /echo's JSON of
                    what arrived (body_len, body_sha256, trailers)
    """

    def __init__(self, **settings: int) -> None:
        super().__init__(**settings)
        self.body_sent = 0
        self.refused_keys: set[str] = set()

    async def _handle(self, c, st) -> None:
        path, _, query = st.path.partition("?")
        parts = path.strip("/").split("/")
        if parts[0] == "reset-code":
            c.reset(st, int(parts[1]))
            return
        if parts[0] == "die":
            c.conn.send_headers(st.id, [(":status", "200")])
            await c.drain(0)
            # Gone without a goodbye (a crash): RST on the connection, no GOAWAY.
            c.sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await c.sock.aclose()
            return
        if parts[0] == "refuse-once":
            if parts[1] not in self.refused_keys:
                self.refused_keys.add(parts[1])
                after = int(query.removeprefix("after=")) if query else None
                got = 0
                while (after is None or got < after) and (chunk := await c.read(st)):
                    got += len(chunk[0])
                    c.consume(st, chunk[1])
                c.reset(st, ErrorCodes.REFUSED_STREAM)
                self._notify()
                return
            length, digest = await self._body(c, st)
            trailers = [[n, v] for n, v in st.trailers] if st.trailers else None
            info = {"body_len": length, "body_sha256": digest, "trailers": trailers}
            await self._json(c, st, info)
            return
        if parts[0] not in ("counted", "nolength"):
            try:
                await super()._handle(c, st)
            except h2.exceptions.ProtocolError:
                # Our GOAWAY refused this stream while its handler was already past its last
                # checkpoint (h2_upstream's _run_stream lets that error out): nothing to answer.
                if not st.reset_sent:
                    raise
            return
        n = int(parts[1])
        head = [(":status", "200"), ("content-type", "application/octet-stream")]
        if parts[0] == "counted":
            head.append(("content-length", str(n)))
        trailers = query == "trailers"
        c.conn.send_headers(st.id, head, end_stream=n == 0 and not trailers)
        sent = 0
        while sent < n:
            piece = pattern_bytes(min(_CHUNK, n - sent))
            sent += len(piece)
            await c.send_body(st.id, piece, end_stream=sent == n and not trailers)
            self.body_sent += len(piece)
            self._notify()
        if trailers:
            c.conn.send_headers(
                st.id, [("x-trailer", "yes"), ("grpc-status", "0")], end_stream=True
            )
            await c.drain()


async def start_extra_upstream(nursery: trio.Nursery, **settings: int) -> ExtraUpstream:
    up = ExtraUpstream(**settings)
    await up.start(nursery)
    return up
