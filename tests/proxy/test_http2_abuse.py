"""HTTP/2 abuse against the proxy's downstream side (h2c, prior knowledge).

Each attack comes from a raw-capable h2 client (tests/h2_upstream.py, plain ``h2`` plus
hand-made frames) and is judged by what the proxy sends back (the RST_STREAM or GOAWAY
error code, read from the attacker's recorded frames) and by what reached the upstream.
Every attack runs next to a well-behaved connection opened before it: a request on that
connection must still succeed afterwards.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import h2.events
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.h2_upstream import (
    ErrorCodes,
    H2Client,
    H2Upstream,
    SettingCodes,
    open_h2_client,
    raw_frame,
    start_h2_upstream,
)
from tests.http_helpers import http_config, read_request, start_proxy, start_raw_server, to

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_PROXY = {"downstream_protocol": "Http2", "upstream_protocol": "Http2"}
TIMEOUT = 10  # per test: a proxy that fails to react fails the test instead of hanging it


async def h2_proxy(
    nursery: trio.Nursery, upstream: H2Upstream | None = None, **http2: int
) -> tuple[H2Upstream, Any, int]:
    """An h2 upstream (or ``upstream``) behind a proxy speaking h2 on both sides; ``http2``:
    the proxy's ``http2`` options."""
    up = upstream or await start_h2_upstream(nursery)
    proxy: dict[str, Any] = dict(H2_PROXY)
    if http2:
        proxy["http2"] = http2
    server, port = await start_proxy(nursery, http_config([to("up")], {"up": up.port}, proxy))
    return up, server, port


@contextlib.asynccontextmanager
async def bystander(port: int) -> AsyncIterator[H2Client]:
    """A well-behaved connection, opened (and proven to work) before the attack; use
    ``still_served`` on it afterwards."""
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await still_served(client)
        yield client


async def still_served(client: H2Client) -> None:
    response = await client.request("POST", "/echo", [("x-good", "1")], body=b"payload")
    assert response.status == 200
    info = response.json()
    assert (info["path"], info["body_len"]) == ("/echo", 7)
    assert ["x-good", "1"] in info["headers"]


def request_head(path: str = "/echo", *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path), *extra]


def rst(stream_id: int, code: int = ErrorCodes.CANCEL) -> bytes:
    frame = RstStreamFrame(stream_id)
    frame.error_code = code
    return frame.serialize()


def headers_frame(
    client: H2Client, head: list[tuple[str, str]], *, end_stream: bool = True, end: bool = True
) -> tuple[int, bytes]:
    """A new raw stream's HEADERS frame (HPACK in step with the client): (id, bytes)."""
    sid = client.claim_stream_id()
    frame = HeadersFrame(sid)
    frame.data = client.encode_headers(head)
    if end_stream:
        frame.flags.add("END_STREAM")
    if end:
        frame.flags.add("END_HEADERS")
    return sid, frame.serialize()


async def ping_roundtrip(client: H2Client, data: bytes) -> None:
    """A PING and its ACK: the proxy has read (and acted on) everything sent before."""
    await client.send_raw(PingFrame(0, data))

    def acked() -> bool:
        return any(
            isinstance(e, h2.events.PingAckReceived) and e.ping_data == data for e in client.events
        )

    await client.wait_until(lambda: acked() or not client.alive)
    assert acked(), "no PING ACK: the connection is gone"


def goaway_code(client: H2Client) -> int | None:
    return None if client.goaway is None else client.goaway.error_code


# --------------------------------------------------------------------------- PING


async def test_ping_answered(nursery: trio.Nursery) -> None:
    _, _, port = await h2_proxy(nursery)
    async with open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.ping(b"\x00\x01abc\xfe\xff!")
            await client.wait_until(
                lambda: any(isinstance(e, h2.events.PingAckReceived) for e in client.events)
            )
            (ack,) = [e for e in client.events if isinstance(e, h2.events.PingAckReceived)]
            assert ack.ping_data == b"\x00\x01abc\xfe\xff!"  # the same 8 bytes, echoed
            acks = [f for f in client.frames if isinstance(f, PingFrame)]
            assert [(f.stream_id, "ACK" in f.flags) for f in acks] == [(0, True)]
            await still_served(client)  # and nothing else changed


# --------------------------------------------------------------------------- rapid reset


async def test_rapid_reset_flood_goaway_enhance_your_calm(nursery: trio.Nursery) -> None:
    """CVE-2023-44487: thousands of streams opened and reset at once. The proxy must end the
    connection with GOAWAY(ENHANCE_YOUR_CALM) and pass next to nothing upstream."""
    up, _, port = await h2_proxy(nursery)
    opened = 5000
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            attack = bytearray()
            for _ in range(opened):
                sid, frame = headers_frame(attacker, request_head("/slow/10?attack"))
                attack += frame + rst(sid)
            await attacker.send_raw(bytes(attack))
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.ENHANCE_YOUR_CALM
            attack_requests = [p for p, _ in up.requests if "attack" in p]
            assert len(attack_requests) <= 200, len(attack_requests)  # of 5000
            # whatever went upstream was cut there too
            await up.wait_until(
                lambda: len([r for r in up.resets if "attack" in str(r[3])]) == len(attack_requests)
            )
            await still_served(good)


async def test_rapid_reset_paced_over_many_reads(nursery: trio.Nursery) -> None:
    """The same attack one stream at a time, each one read (a PING round trip) before it is
    reset, so the proxy really starts every stream: the limit still applies, and every
    stream it sent upstream is reset there."""
    up, _, port = await h2_proxy(nursery, max_premature_resets=20)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            for i in range(300):
                sid, frame = headers_frame(attacker, request_head("/slow/10?attack"))
                await attacker.send_raw(frame)
                with contextlib.suppress(AssertionError):
                    await ping_roundtrip(attacker, b"%08d" % i)
                await attacker.send_raw(rst(sid))
                if not attacker.alive:
                    break
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.ENHANCE_YOUR_CALM
            assert attacker.goaway.last_stream_id <= 2 * 25 + 1
            attack_requests = [p for p, _ in up.requests if "attack" in p]
            assert 0 < len(attack_requests) <= 22, len(attack_requests)
            await up.wait_until(lambda: len(up.resets) == len(attack_requests))
            await still_served(good)


async def test_rapid_reset_limit_spares_clients_that_mostly_finish(nursery: trio.Nursery) -> None:
    """The limit: more than ``max_premature_resets`` resets before a response AND at least
    half of the connection's streams. 60 answered streams, then 59 premature resets: fine;
    the 60th makes half, and the connection gets GOAWAY."""
    _, _, port = await h2_proxy(nursery, max_premature_resets=10)
    async with bystander(port) as good, open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            for _ in range(59):  # the bystander's request is not on this connection
                assert (await client.request("GET", "/echo")).status == 200
            # a stream cancelled after its response began is not premature either
            sid = await client.send_headers("GET", "/bytes/1000000", end_stream=True)
            await client.read_head(sid)
            await client.reset(sid)
            for i in range(59):
                sid, frame = headers_frame(client, request_head("/slow/10"))
                await client.send_raw(frame + rst(sid))
                await ping_roundtrip(client, b"%08d" % i)
            assert client.goaway is None
            sid, frame = headers_frame(client, request_head("/slow/10"))
            await client.send_raw(frame + rst(sid))
            await client.wait_closed()
            assert goaway_code(client) == ErrorCodes.ENHANCE_YOUR_CALM
            await still_served(good)


# --------------------------------------------------------------------------- CONTINUATION


async def _push_until_cut(client: H2Client, chunk: bytes, limit: int) -> int:
    """Write ``chunk`` over and over until the peer closes or ``limit`` bytes went; returns
    the bytes written (queued)."""
    sent = 0
    while client.alive and not client.broken and sent < limit:
        await client.send_raw(chunk)
        sent += len(chunk)
    return sent


@pytest.mark.parametrize("frame_size", [0, 16384], ids=["empty-frames", "full-frames"])
async def test_continuation_flood_goaway(nursery: trio.Nursery, frame_size: int) -> None:
    """CVE-2024-27316 and kin: a HEADERS frame without END_HEADERS, then CONTINUATION frames
    without end (empty ones: a frame count bound; full ones: a byte bound). The proxy must
    answer GOAWAY and stop reading: the attacker cannot push its 200 MB into it (what the
    kernel buffers on loopback is a few MB)."""
    up, _, port = await h2_proxy(nursery, max_header_list_size=16384)
    limit = 200 * 1024 * 1024
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            sid, frame = headers_frame(attacker, request_head("/echo?flood"), end=False)
            await attacker.send_raw(frame)
            continuation = ContinuationFrame(sid, data=b"\x00" * frame_size).serialize()
            chunk = continuation * max(1, (1024 * 1024) // len(continuation))
            sent = await _push_until_cut(attacker, chunk, limit)
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.ENHANCE_YOUR_CALM
            assert sent < 64 * 1024 * 1024, sent
            assert not any("flood" in p for p, _ in up.requests)
            await still_served(good)


async def test_continuation_interleaved_with_other_frames_is_protocol_error(
    nursery: trio.Nursery,
) -> None:
    _, _, port = await h2_proxy(nursery)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            _, frame = headers_frame(attacker, request_head("/echo"), end=False)
            await attacker.send_raw(frame + PingFrame(0, b"12345678").serialize())
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.PROTOCOL_ERROR
            await still_served(good)


# --------------------------------------------------------------------------- header list


def many_headers(total: int) -> list[tuple[str, str]]:
    """Small headers (each indexed by HPACK) adding up to about ``total`` bytes as
    SETTINGS_MAX_HEADER_LIST_SIZE counts them (name + value + 32)."""
    return [(f"x-h-{i:04d}", "v" * 24) for i in range(total // (10 + 24 + 32))]


async def test_header_list_too_large_resets_the_stream_only(nursery: trio.Nursery) -> None:
    up, _, port = await h2_proxy(nursery, max_header_list_size=8192)
    async with bystander(port) as good, open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.wait_until(
                lambda: client.conn.remote_settings.max_header_list_size == 8192
            )
            big = many_headers(12_000)  # over 8192, under twice that
            sid = await client.send_headers("GET", "/echo?big", big, end_stream=True)
            st = client.streams[sid]
            await client.wait_until(lambda: st.reset_code is not None or st.status is not None)
            assert st.reset_code == ErrorCodes.PROTOCOL_ERROR or st.status == 431
            assert client.goaway is None
            assert not any("big" in p for p, _ in up.requests)
            # The connection goes on, its HPACK state in step: the same headers again (now
            # indexed) within the limit, then all of them once more, refused again.
            response = await client.request("GET", "/echo", big[:50])
            assert response.status == 200
            assert len(response.json()["headers"]) >= 50
            sid = await client.send_headers("GET", "/echo?big", big, end_stream=True)
            st = client.streams[sid]
            await client.wait_until(lambda: st.reset_code is not None or st.status is not None)
            assert st.reset_code == ErrorCodes.PROTOCOL_ERROR or st.status == 431
            await still_served(client)
            await still_served(good)


async def test_header_list_far_too_large_is_goaway(nursery: trio.Nursery) -> None:
    up, _, port = await h2_proxy(nursery, max_header_list_size=8192)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await attacker.send_headers("GET", "/echo?huge", many_headers(40_000), end_stream=True)
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.ENHANCE_YOUR_CALM
            assert not any("huge" in p for p, _ in up.requests)
            await still_served(good)


# --------------------------------------------------------------------------- stream limit


async def test_stream_over_max_concurrent_streams_refused(nursery: trio.Nursery) -> None:
    up, _, port = await h2_proxy(nursery, max_concurrent_streams=5)
    async with bystander(port) as good, open_h2_client(port) as client:
        with trio.fail_after(TIMEOUT):
            await client.wait_until(lambda: client.conn.remote_settings.max_concurrent_streams == 5)
            # five requests whose bodies have not ended: all five open at the upstream
            slow = [await client.send_headers("POST", "/echo?slow") for _ in range(5)]
            await up.wait_until(lambda: len(up.requests) >= 6)  # + the bystander's
            # h2 would wait for a slot: a hand-made HEADERS frame goes over the limit
            extra = await client.send_raw_headers(request_head("/echo?extra"))
            st = client.streams[extra]
            await client.wait_until(lambda: st.reset_code is not None)
            assert st.reset_code == ErrorCodes.REFUSED_STREAM
            assert client.goaway is None
            assert not any("extra" in p for p, _ in up.requests)
            await still_served(good)  # its own five slots are untouched
            # the five are still open: they finish, and a slot frees up for the next stream
            for sid in slow:
                assert client.streams[sid].reset_code is None
                await client.send_data(sid, b"body", end_stream=True)
                response = await client.response(sid)
                assert (response.status, response.json()["body_len"]) == (200, 4)
            await still_served(client)


# --------------------------------------------------------------------------- flow control


async def test_data_beyond_stream_window_is_flow_control_error(nursery: trio.Nursery) -> None:
    up, _, port = await h2_proxy(nursery, initial_stream_window_size=1024)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await attacker.wait_until(
                lambda: attacker.conn.remote_settings.initial_window_size == 1024
            )
            sid, frame = headers_frame(attacker, request_head("/upload"), end_stream=False)
            data = DataFrame(sid, data=b"x" * 4096)  # four times the window, in one frame
            await attacker.send_raw(frame + data.serialize())
            await attacker.wait_until(
                lambda: attacker.streams[sid].reset_code is not None or not attacker.alive
            )
            code = attacker.streams[sid].reset_code
            if code is None:  # a connection error (RFC 9113 6.9.1 allows either)
                await attacker.wait_closed()
                code = goaway_code(attacker)
            assert code == ErrorCodes.FLOW_CONTROL_ERROR
            assert up.bytes_received <= 1024
            await still_served(good)


async def test_data_beyond_connection_window_is_flow_control_error(
    nursery: trio.Nursery,
) -> None:
    """The upstream reads nothing (/slow-read, gate closed): the proxy can pass on, and so
    give credit back for, at most the upstream's 65535-byte window. Twice the proxy's
    65535-byte connection window, on a stream whose own window is far larger, is beyond
    anything the proxy could have allowed."""
    up = await start_h2_upstream(nursery)
    _, _, port = await h2_proxy(
        nursery, up, initial_connection_window_size=65535, initial_stream_window_size=1 << 20
    )
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await attacker.wait_until(
                lambda: attacker.conn.remote_settings.initial_window_size == 1 << 20
            )
            sid, frame = headers_frame(attacker, request_head("/slow-read"), end_stream=False)
            data = b"".join(DataFrame(sid, data=b"x" * 16384).serialize() for _ in range(10))
            await attacker.send_raw(frame + data)
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.FLOW_CONTROL_ERROR
            up.read_gate.set()
            await still_served(good)


async def test_window_update_overflow_is_flow_control_error(nursery: trio.Nursery) -> None:
    _, _, port = await h2_proxy(nursery)
    async with bystander(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            increment = (2**31 - 1).to_bytes(4, "big")  # on top of 65535: over 2^31 - 1
            await attacker.send_raw(raw_frame(0x8, 0, 0, increment))
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.FLOW_CONTROL_ERROR
            await still_served(good)


# --------------------------------------------------------------------------- smuggling


class RecordingH1Upstream:
    """An HTTP/1.1 upstream that keeps every byte it receives (``received``) and the request
    target of every request it framed (``targets``; Content-Length bodies, the last
    Content-Length wins as in many servers), answering each with 200 and its target as the
    body: a response that went to the wrong request shows."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.targets: list[bytes] = []
        self.port = 0
        self._changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> RecordingH1Upstream:
        self.port = await start_raw_server(nursery, self._serve)
        return self

    async def wait_for(self, data: bytes) -> None:
        while data not in self.received:
            await self._changed.wait()

    def _record(self, data: bytes) -> None:
        self.received += data
        self._changed.set()
        self._changed = trio.Event()

    async def _serve(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while (request := await read_request(_Recorded(stream, self), buf)) is not None:
                target = request[0].split(b"\r\n", 1)[0].split(b" ")[1]
                self.targets.append(target)
                head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(target)
                await stream.send_all(head + target)


class _Recorded:
    """The upstream's socket as ``read_request`` reads it, every byte recorded."""

    def __init__(self, stream: trio.SocketStream, upstream: RecordingH1Upstream) -> None:
        self.stream = stream
        self.upstream = upstream

    async def receive_some(self, max_bytes: int) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.upstream._record(data)
        return data


async def h2_to_h1_proxy(nursery: trio.Nursery) -> tuple[RecordingH1Upstream, int]:
    up = await RecordingH1Upstream().start(nursery)
    proxy = {"downstream_protocol": "Http2", "upstream_protocol": "Http1"}
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up.port}, proxy))
    return up, port


async def served_in_turn(client: H2Client, *paths: str) -> None:
    """Each request gets its own answer (the upstream echoes the target): no response meant
    for a smuggled request went to the next client on that upstream connection."""
    for path in paths:
        body = b"0123456789"  # with its length: the upstream frames no chunked bodies
        response = await client.request("POST", path, [("content-length", "10")], body)
        assert (response.status, response.body) == (200, path.encode())


def refused(client: H2Client, sid: int) -> bool:
    """The stream was reset (PROTOCOL_ERROR), or the connection failed (GOAWAY
    PROTOCOL_ERROR), or a 400 came back."""
    st = client.streams[sid]
    statuses = [h.get(":status") for h in st.raw_headers]
    return (
        st.reset_code == ErrorCodes.PROTOCOL_ERROR
        or (st.reset_code is None and goaway_code(client) == ErrorCodes.PROTOCOL_ERROR)
        or statuses == ["400"]
    )


async def settled(client: H2Client, sid: int) -> None:
    st = client.streams[sid]
    await client.wait_until(
        lambda: st.reset_code is not None or st.ended or not client.alive or client.goaway
    )


SMUGGLED = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        request_head("/a", ("x-a", "1\r\nx-injected: yes")),
        request_head("/a", ("x-a", "1\r\n\r\n" + SMUGGLED)),
        request_head("/a", ("x-a", "1\nx-injected: yes")),
        request_head("/a", ("x-a", "1\rx-injected: yes")),
        request_head("/a", ("x-a\r\nx-injected", "yes")),
        request_head("/a", ("x-a: 1\r\nx-injected", "yes")),
        request_head("/a HTTP/1.1\r\nhost: x\r\n\r\n" + SMUGGLED[:-4]),
        [(":method", "GET / HTTP/1.1\r\nx-injected: yes\r\nx:"), *request_head()[1:]],
        [*request_head()[:2], (":authority", "x\r\nx-injected: yes"), *request_head()[3:]],
    ],
    ids=[
        "value-crlf",
        "value-whole-request",
        "value-lf",
        "value-cr",
        "name-crlf",
        "name-colon-crlf",
        "path-crlf",
        "method-crlf",
        "authority-crlf",
    ],
)
async def test_crlf_smuggling_to_h1_upstream_is_reset(
    nursery: trio.Nursery, head: list[tuple[str, str]]
) -> None:
    up, port = await h2_to_h1_proxy(nursery)
    async with open_h2_client(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await served_in_turn(good, "/good-before")
            sid = await attacker.send_raw_headers(head)
            await settled(attacker, sid)
            assert refused(attacker, sid)
            assert not attacker.streams[sid].raw_headers  # no response of any kind
            await served_in_turn(good, "/good-after")
    assert b"injected" not in up.received.lower()
    assert b"/smuggled" not in up.received
    assert up.targets == [b"/good-before", b"/good-after"]  # nothing else reached it


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            [(":method", "GET /admin"), *request_head("/public")[1:]],
            id="method-space",
        ),
        pytest.param(
            request_head("/public\t/admin"),
            id="path-tab",
        ),
        pytest.param(
            request_head("/public /admin"),
            id="path-space",
        ),
        pytest.param(request_head("http://evil/admin"), id="path-absolute-form"),
        pytest.param(request_head("admin"), id="path-no-slash"),
    ],
)
async def test_malformed_request_line_parts_never_reach_h1(
    nursery: trio.Nursery, head: list[tuple[str, str]]
) -> None:
    """No CR or LF, but a :method or :path that cannot be an HTTP/1 request-line element:
    forwarded, the upstream's request line reads differently from what the proxy routed on
    ('GET /admin /public HTTP/1.1': lenient parsers see /admin). The stream must be refused
    as malformed (RST_STREAM PROTOCOL_ERROR, or a 400)."""
    up, port = await h2_to_h1_proxy(nursery)
    async with open_h2_client(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await served_in_turn(good, "/good-before")
            sid = await attacker.send_raw_headers(head)
            await settled(attacker, sid)
            assert refused(attacker, sid)
            await served_in_turn(good, "/good-after")
    assert b"admin" not in up.received
    assert up.targets == [b"/good-before", b"/good-after"]


@pytest.mark.parametrize("paced", [False, True], ids=["one-write", "body-after-head-went"])
@pytest.mark.parametrize(
    ("lengths", "body"),
    [
        pytest.param(("0",), SMUGGLED.encode(), id="cl0-longer-body"),
        pytest.param(("5",), b"x=1&y" + SMUGGLED.encode(), id="cl5-longer-body"),
        pytest.param(("200",), b"short", id="cl200-shorter-body"),
        pytest.param(("0", str(len(SMUGGLED))), SMUGGLED.encode(), id="cl0-then-cl35"),
        pytest.param(
            (str(len(SMUGGLED)), "0"),
            SMUGGLED.encode(),
            id="cl35-then-cl0",
        ),
    ],
)
async def test_body_not_matching_content_length_never_desyncs_h1(
    nursery: trio.Nursery, lengths: tuple[str, ...], body: bytes, paced: bool
) -> None:
    """H2.CL desync. A body longer than ``content-length``: an h1 upstream reading the
    forwarded head takes the excess (a whole request here) for the next request on its
    connection. A shorter one: the upstream takes the next request sent on that connection
    (someone else's) for the rest of the body. Two differing Content-Length fields: the
    upstream may believe either. The proxy must refuse such a stream and never reuse an h1
    connection holding a partial body. ``paced``: the body is sent only once the head
    reached the upstream (the proxy has committed to it)."""
    up, port = await h2_to_h1_proxy(nursery)
    async with open_h2_client(port) as good, open_h2_client(port) as attacker:
        with trio.fail_after(TIMEOUT):
            await served_in_turn(good, "/good-before")
            head = [(":method", "POST"), *request_head("/attack")[1:]]
            head += [("content-length", length) for length in lengths]
            sid, frame = headers_frame(attacker, head, end_stream=False)
            data = DataFrame(sid, data=body)
            data.flags.add("END_STREAM")
            differing = len(set(lengths)) > 1
            if paced:
                await attacker.send_raw(frame)
                if not differing:  # differing lengths are refused before anything goes up
                    await up.wait_for(b"POST /attack HTTP/1.1\r\n")
                await attacker.send_raw(data)
            else:
                await attacker.send_raw(frame + data.serialize())
            await settled(attacker, sid)
            assert refused(attacker, sid)
            # more requests than the pool has connections: the attack's one is not reused
            await served_in_turn(good, "/good-1", "/good-2", "/good-3")
    assert b"/smuggled" not in up.targets
    # The attack's head may have been framed upstream (paced, or one read too late) but it
    # went on a connection of its own, never reused: each good request got its own answer.
    assert up.targets.count(b"/attack") <= (0 if differing else 1)
    good = [b"/good-before", b"/good-1", b"/good-2", b"/good-3"]
    assert [t for t in up.targets if t != b"/attack"] == good


# --------------------------------------------------------------------------- preface


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize(),
        bytes(range(256)),
    ],
    ids=["http1-request", "corrupt-magic", "wrong-version", "garbage"],
)
async def test_invalid_preface_closes_connection(nursery: trio.Nursery, data: bytes) -> None:
    up, _, port = await h2_proxy(nursery)
    async with bystander(port) as good, open_h2_client(port, preface=False) as attacker:
        with trio.fail_after(TIMEOUT):
            await attacker.send_raw(data)
            await attacker.wait_closed()
            if attacker.goaway is not None:
                assert goaway_code(attacker) == ErrorCodes.PROTOCOL_ERROR
            assert not any(isinstance(f, HeadersFrame) for f in attacker.frames)
            await still_served(good)
    assert len(up.requests) == 2  # the bystander's two


async def test_preface_without_settings_frame_closes_connection(nursery: trio.Nursery) -> None:
    """RFC 9113 3.4: the client preface is the magic AND a SETTINGS frame; anything else
    first is a connection error (PROTOCOL_ERROR). Here a PING comes first: answering it
    means the proxy took the preface for valid."""
    up, _, port = await h2_proxy(nursery)
    async with bystander(port) as good, open_h2_client(port, preface=False) as attacker:
        with trio.fail_after(TIMEOUT):
            await attacker.send_raw(PREFACE + PingFrame(0, b"12345678").serialize())

            def ping_acked() -> bool:
                return any(isinstance(f, PingFrame) and "ACK" in f.flags for f in attacker.frames)

            await attacker.wait_until(lambda: attacker.eof or ping_acked())
            assert not ping_acked()
            await attacker.wait_closed()
            assert goaway_code(attacker) == ErrorCodes.PROTOCOL_ERROR
            await still_served(good)
    assert len(up.requests) == 2


# --------------------------------------------------------------------------- control flood


async def test_ping_flood_from_a_client_that_reads_nothing_is_cut(nursery: trio.Nursery) -> None:
    """A client sends PINGs and never reads the ACKs. Once what the kernel holds is full
    (a few MB on loopback), every further ACK waits in the proxy's memory: it must stop
    reading (the attacker's writes stall) or drop the connection (nghttp2 and Envoy close it
    past about 1000 queued control frames). 400k PINGs (6.8 MB) are more than the kernel
    buffers on either side take."""
    _, _, port = await h2_proxy(nursery)
    pings, per_write = 400_000, 10_000
    async with bystander(port) as good:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we read nothing anyway
        await sock.connect(("127.0.0.1", port))
        attacker = trio.SocketStream(sock)
        chunk = PingFrame(0, b"flooding").serialize() * per_write
        sent = 0
        stalled = cut = False
        with trio.fail_after(TIMEOUT):
            await attacker.send_all(PREFACE + SettingsFrame(0).serialize())
            while sent < pings and not (stalled or cut):
                with trio.move_on_after(3) as stall:  # the proxy stopped reading
                    try:
                        await attacker.send_all(chunk)
                    except trio.BrokenResourceError:
                        cut = True  # the proxy dropped the connection
                stalled = stall.cancelled_caught
                sent += per_write
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            sock.close()
        assert stalled or cut, f"all {sent} PINGs were read while no ACK could be written"
        await still_served(good)


# --------------------------------------------------------------------------- settings


async def test_settings_with_bad_values_are_connection_errors(nursery: trio.Nursery) -> None:
    _, _, port = await h2_proxy(nursery)
    cases = [
        ({SettingCodes.ENABLE_PUSH: 2}, ErrorCodes.PROTOCOL_ERROR),
        ({SettingCodes.INITIAL_WINDOW_SIZE: 2**31}, ErrorCodes.FLOW_CONTROL_ERROR),
        ({SettingCodes.MAX_FRAME_SIZE: 100}, ErrorCodes.PROTOCOL_ERROR),
    ]
    async with bystander(port) as good:
        for settings, code in cases:
            async with open_h2_client(port) as attacker:
                with trio.fail_after(TIMEOUT):
                    payload = b"".join(
                        int(k).to_bytes(2, "big") + v.to_bytes(4, "big")
                        for k, v in settings.items()
                    )
                    await attacker.send_raw(raw_frame(0x4, 0, 0, payload))
                    await attacker.wait_closed()
                    assert goaway_code(attacker) == code, settings
        await still_served(good)
