"""Request smuggling corpus (issue 14, finding 1), judged by what the upstream received.

Every vector goes through the real proxy to a raw upstream that records every byte it gets on
every connection and parses them with h11 (a parser other than ours). For each vector the
client gets a 400 and no complete request reaches the upstream, or the request is forwarded
with exactly one unambiguous framing (one Content-Length or ``Transfer-Encoding: chunked``,
never both) and the body the client framed, nothing before or after it. An upstream
connection that saw an incomplete request is closed, never reused.

The vectors of ``test_http_smuggling.VECTORS`` run here too (there they are judged by the
client's answer; here by the upstream's bytes), with the ones added below: framing fields
nominated by Connection, Transfer-Encoding and Content-Length variants, absolute-form against
Host, h2c upgrades, HTTP/2 to HTTP/1 injection, and ambiguous upstream responses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import pytest
import trio

from tests.h2_upstream import H2ConnectionClosed, H2StreamReset, open_h2_client, start_h2_upstream
from tests.http_helpers import (
    Client,
    http_config,
    read_request,
    start_proxy,
    start_raw_server,
    to,
)
from tests.proxy.test_http_smuggling import POST, VECTORS, _scripted, assert_refused
from trio_mesh.config import parse_config

# --------------------------------------------------------------------------- the upstream


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def framing(self) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in self.headers if n in (b"content-length", b"transfer-encoding")]

    def get(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


@dataclass
class UpConn:
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Seen] = field(default_factory=list)
    partial: bool = False  # bytes of a request that never completed
    error: str | None = None  # h11 refused what it got
    closed: bool = False


class Recorder:
    """A raw HTTP/1.1 upstream: records each connection's bytes, parses them with h11,
    answers each complete request with ``200`` and a body naming its target. A target under
    ``/slow`` is answered after 200 ms; a request that asks for ``h2c`` gets a 101 and HTTP/2
    bytes, as an h2c-capable server would."""

    def __init__(self) -> None:
        self.conns: list[UpConn] = []
        self.changed = trio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, predicate) -> None:
        while not predicate():
            await self.changed.wait()

    def complete(self) -> list[Seen]:
        return [r for c in self.conns for r in c.requests]

    async def handler(self, stream: trio.SocketStream) -> None:
        conn = UpConn()
        self.conns.append(conn)
        h = h11.Connection(h11.SERVER)
        current: list = []
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                conn.raw += data
                self._notify()
                h.receive_data(data)
                while True:
                    event = h.next_event()
                    if event is h11.NEED_DATA:
                        break
                    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return
                    if isinstance(event, h11.Request):
                        current = [event, bytearray()]
                        conn.partial = True
                    elif isinstance(event, h11.Data):
                        current[1] += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        req = current[0]
                        seen = Seen(
                            req.method,
                            req.target,
                            list(req.headers),
                            bytes(current[1]),
                            list(event.headers),
                        )
                        conn.requests.append(seen)
                        conn.partial = False
                        self._notify()
                        if not await self._respond(stream, h, seen):
                            return
                        h.start_next_cycle()
                if not data:
                    return
        except h11.RemoteProtocolError as exc:
            conn.error = str(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.closed = True
            stream.socket.close()
            self._notify()

    async def _respond(self, stream: trio.SocketStream, h: h11.Connection, seen: Seen) -> bool:
        if b"h2c" in b",".join(seen.get(b"upgrade")).lower():
            # what an h2c server does: switch, then speak HTTP/2 (a preface-like SETTINGS)
            await stream.send_all(
                h.send(h11.InformationalResponse(status_code=101, headers=[("upgrade", "h2c")]))
                + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            )
            return False
        if seen.target.startswith(b"/slow"):
            await trio.sleep(0.2)
        body = b"SMUGGLED" if b"SMUGGLED" in seen.target else b"for " + seen.target
        out = h.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))]))
        out += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        await stream.send_all(out)
        return h.our_state is not h11.MUST_CLOSE


async def recorder_proxy(nursery: trio.Nursery, **proxy: object) -> tuple[Recorder, int]:
    rec = Recorder()
    up = await start_raw_server(nursery, rec.handler)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}, proxy=proxy))
    return rec, port


# --------------------------------------------------------------------------- outcomes


REFUSED = None


@dataclass(frozen=True)
class Forward:
    """Forwarded with one framing: ``body`` (b"" and ``length`` None: no framing at all)."""

    body: bytes = b""
    target: bytes = b"/echo"
    chunked: bool = False
    host: bytes | None = None


def assert_one_framing(seen: Seen, want: Forward) -> None:
    framing = seen.framing()
    assert len(framing) <= 1, framing
    assert seen.body == want.body
    assert seen.target == want.target
    if want.chunked:
        assert framing == [(b"transfer-encoding", b"chunked")]
    elif want.body or framing:
        assert framing == [(b"content-length", b"%d" % len(want.body))]
    assert len(seen.get(b"host")) == 1
    if want.host is not None:
        assert seen.get(b"host") == [want.host]
    # nothing connection-specific crossed
    for name in (b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"te", b"expect"):
        assert name not in dict(seen.headers), seen.headers


async def no_ambiguous_reuse(rec: Recorder, port: int, *, h2: bool = False) -> None:
    """A new client's request is served alone, on an upstream connection whose every earlier
    request was complete and clean (one that saw a partial or refused request is closed)."""
    for conn in rec.conns:
        if conn.partial or conn.error:
            with trio.fail_after(5):
                await rec.wait_until(lambda conn=conn: conn.closed)
    before = {id(c): len(c.raw) for c in rec.conns}
    if h2:
        async with open_h2_client(port) as h2_client:
            r = await h2_client.request("GET", "/after")
    else:
        async with await Client.connect(port) as client:
            await client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response()
    assert (r.status, r.body) == (200, b"for /after")
    carriers = [c for c in rec.conns if len(c.raw) != before.get(id(c), 0)]
    assert len(carriers) == 1
    carrier = carriers[0]
    assert not carrier.partial and carrier.error is None
    assert carrier.requests[-1].target == b"/after"


# --------------------------------------------------------------------------- HTTP/1 vectors

ISSUE14 = (
    b"POST /attacker HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 71"
    b"\r\n\r\nGET /slow-SMUGGLED-admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1"
    b"\r\n\r\n"
)
OK = b"HTTP/1.1 200 OK\r\n"
ISSUE14_BODY = ISSUE14.partition(b"\r\n\r\n")[2][:71]
H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"

NEW_VECTORS: dict[str, tuple[bytes, Forward | None]] = {
    # Connection nominating framing or Host: ignored for those names (Envoy's way)
    "issue14-connection-content-length": (ISSUE14, Forward(ISSUE14_BODY, b"/attacker")),
    "connection-cl": (
        POST + b"Connection: content-length\r\nContent-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    "connection-cl-mixed-case-and-close": (
        POST + b"Connection: Content-Length, close\r\nContent-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    "connection-cl-second-line": (
        POST + b"Connection: keep-alive\r\nConnection: x-a, content-length\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    "connection-te": (
        CHUNKED + b"Connection: transfer-encoding\r\n\r\n" + HELLO_CHUNKED,
        Forward(b"hello", chunked=True),
    ),
    "connection-host": (
        b"GET /echo HTTP/1.1\r\nHost: internal\r\nConnection: host\r\n\r\n",
        Forward(host=b"internal"),
    ),
    "connection-cl-with-te": (
        POST + b"Connection: content-length\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + HELLO_CHUNKED,
        REFUSED,
    ),
    # Transfer-Encoding variants
    "te-uppercase": (
        POST + b"Transfer-Encoding: CHUNKED\r\n\r\n" + HELLO_CHUNKED,
        Forward(b"hello", chunked=True),
    ),
    "te-chunked-twice": (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", REFUSED),
    "te-empty": (POST + b"Transfer-Encoding: \r\n\r\n0\r\n\r\n", REFUSED),
    "te-quoted": (POST + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', REFUSED),
    "te-vertical-tab": (POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", REFUSED),
    "te-identity": (POST + b"Transfer-Encoding: identity\r\n\r\nhello", REFUSED),
    "te-with-params": (POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", REFUSED),
    "te-obs-fold": (POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", REFUSED),
    # Content-Length variants
    "cl-negative": (POST + b"Content-Length: -1\r\n\r\nhello", REFUSED),
    "cl-inner-space": (POST + b"Content-Length: 1 0\r\n\r\nhellohello", REFUSED),
    "cl-empty": (POST + b"Content-Length: \r\n\r\nhello", REFUSED),
    "cl-overflow": (POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello", REFUSED),
    "cl-duplicate-equal": (POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", REFUSED),
    "cl-obs-fold": (POST + b"Content-Length:\r\n 5\r\n\r\nhello", REFUSED),
    "cl-nul": (POST + b"Content-Length: 5\x00\r\n\r\nhello", REFUSED),
    "cl-leading-zeros": (POST + b"Content-Length: 005\r\n\r\nhello", Forward(b"hello")),
    "cl-trailing-space": (POST + b"Content-Length: 5 \r\n\r\nhello", Forward(b"hello")),
    "cl-on-get": (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    "cl-http10": (
        b"POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    # chunk sizes, chunk lines, trailers
    "chunk-size-17-digits": (CHUNKED + b"\r\n00000000000000005\r\nhello\r\n0\r\n\r\n", REFUSED),
    "chunk-size-leading-space": (CHUNKED + b"\r\n 5\r\nhello\r\n0\r\n\r\n", REFUSED),
    "chunk-data-without-crlf": (CHUNKED + b"\r\n5\r\nhelloX0\r\n\r\n", REFUSED),
    "chunk-last-bare-lf": (CHUNKED + b"\r\n5\r\nhello\r\n0\n\r\n", REFUSED),
    "chunk-ext-nul": (CHUNKED + b"\r\n5;a=\x00\r\nhello\r\n0\r\n\r\n", REFUSED),
    "chunk-trailer-content-length": (
        CHUNKED + b"\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
        REFUSED,
    ),
    "chunk-trailer-transfer-encoding": (
        CHUNKED + b"\r\n5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        REFUSED,
    ),
    # header syntax
    "tab-before-colon": (POST + b"Content-Length\t: 5\r\n\r\nhello", REFUSED),
    "space-in-name": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX Foo: bar\r\n\r\n", REFUSED),
    "obs-fold-tab": (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", REFUSED),
    "bare-lf-request-line": (b"GET /echo HTTP/1.1\nHost: x\r\n\r\n", REFUSED),
    "bare-lf-before-cl": (POST + b"X-A: b\nContent-Length: 5\r\n\r\nhello", REFUSED),
    "nul-in-target": (b"GET /ec\x00ho HTTP/1.1\r\nHost: x\r\n\r\n", REFUSED),
    # absolute-form against Host: the target's authority is the one Host sent on
    "absolute-form-wins-over-host": (
        b"GET http://a.example/echo HTTP/1.1\r\nHost: b.example\r\n\r\n",
        Forward(host=b"a.example"),
    ),
    "absolute-form-userinfo": (b"GET http://u@a.example/ HTTP/1.1\r\nHost: x\r\n\r\n", REFUSED),
    "absolute-form-bad-scheme": (b"GET ftp://a.example/ HTTP/1.1\r\nHost: x\r\n\r\n", REFUSED),
    # h2c upgrades go on as plain requests (finding 6): the upstream never sees h2c
    "h2c-upgrade-get": (b"GET /echo HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n", Forward()),
    "h2c-upgrade-post-body": (
        POST + H2C + b"Content-Length: 5\r\n\r\nhello",
        Forward(b"hello"),
    ),
    "upgrade-with-body": (
        POST + b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
        REFUSED,
    ),
}

CORPUS: dict[str, tuple[bytes, Forward | None]] = {
    **{f"known-{name}": (raw, REFUSED) for name, raw in VECTORS.items()},
    **NEW_VECTORS,
}


def test_the_corpus_holds_at_least_50_vectors() -> None:
    assert len(CORPUS) + len(H2_VECTORS) + len(RESPONSE_VECTORS) >= 50


@pytest.mark.parametrize("raw, want", CORPUS.values(), ids=CORPUS.keys())
async def test_smuggling_corpus(nursery: trio.Nursery, raw: bytes, want: Forward | None) -> None:
    rec, port = await recorder_proxy(nursery)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            # first a clean request, so that an idle upstream connection is there to reuse
            await client.send(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.response()).body == b"for /warm"
            await client.send(raw)
            if want is REFUSED:
                assert_refused(await client.read_to_eof(), 400)
            else:
                r = await client.response()
                assert (r.status, r.body) == (200, b"for " + want.target)
        seen = rec.complete()
        assert seen[0].target == b"/warm"
        if want is REFUSED:
            assert seen[1:] == []
        else:
            assert len(seen) == 2, seen
            assert_one_framing(seen[1], want)
        await no_ambiguous_reuse(rec, port)


async def test_issue14_connection_content_length_smuggles_nothing(nursery: trio.Nursery) -> None:
    """The issue's probe: the exact bytes, then 10 clients one after another, against a
    lenient upstream (it frames by Content-Length alone, as many do) whose smuggled path is
    slow. On 5fea15e the POST went up without a length, the upstream took its body for a
    request of its own, and later clients got that request's response."""
    seen: list[tuple[bytes, bytes]] = []

    async def lenient(stream: trio.SocketStream) -> None:
        buf = bytearray()
        with contextlib.suppress(trio.BrokenResourceError):
            while (req := await read_request(stream, buf)) is not None:
                head, body = req
                target = head.split(b" ")[1]
                seen.append((target, body))
                if b"SMUGGLED" in target:
                    await trio.sleep(0.2)
                    out = b"SMUGGLED"
                else:
                    out = b"for " + target
                await stream.send_all(OK + b"Content-Length: %d\r\n\r\n" % len(out) + out)

    up = await start_raw_server(nursery, lenient)
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(20):
        async with await Client.connect(port) as attacker:
            await attacker.send(ISSUE14)
            first = await attacker.response()
        wrong = 0
        for i in range(10):
            async with await Client.connect(port) as client:
                await client.send(b"GET /victim/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                r = await client.response()
            wrong += r.body != b"for /victim/%d" % i
    assert wrong == 0, f"{wrong}/10 later clients got another request's response"
    assert first.body == b"for /attacker"
    assert seen == [(b"/attacker", ISSUE14_BODY)] + [(b"/victim/%d" % i, b"") for i in range(10)]


async def test_h2c_upgrade_gets_the_plain_response(nursery: trio.Nursery) -> None:
    """The upstream answers 101 and HTTP/2 bytes to any h2c upgrade it sees: it sees none,
    and the client gets the plain response on a connection that goes on."""
    rec, port = await recorder_proxy(nursery)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(b"GET /h2c HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n")
            r = await client.response(interim=True)
            assert (r.status, r.body) == (200, b"for /h2c")
            await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.response()).body == b"for /next"
    assert [s.target for s in rec.complete()] == [b"/h2c", b"/next"]
    assert all(not s.get(b"upgrade") and not s.get(b"http2-settings") for s in rec.complete())


# --------------------------------------------------------------------------- HTTP/2 -> HTTP/1


@dataclass(frozen=True)
class H2Vector:
    headers: list[tuple[str, str]]
    data: list[bytes] = field(default_factory=list)  # DATA frames; the last ends the stream
    method: str = "POST"
    path: str = "/echo"
    authority: str | None = None  # None: the client's own; "": no :authority at all
    trailers: list[tuple[str, str]] | None = None  # they end the stream, after the data
    trailers_up: list[tuple[bytes, bytes]] | None = None  # what the upstream must get


NO_AUTHORITY = ""

H2_VECTORS: dict[str, tuple[H2Vector, Forward | None]] = {
    "content-length-matches": (
        H2Vector([("content-length", "5")], [b"hel", b"lo"]),
        Forward(b"hello"),
    ),
    "no-length-goes-chunked": (H2Vector([], [b"hello"]), Forward(b"hello", chunked=True)),
    "content-length-shorter-than-data": (
        H2Vector([("content-length", "5")], [b"helloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"]),
        REFUSED,
    ),
    "content-length-longer-than-data": (
        H2Vector([("content-length", "50")], [b"hello"]),
        REFUSED,
    ),
    "content-length-with-end-on-headers": (H2Vector([("content-length", "5")]), REFUSED),
    "content-length-differing-pair": (
        H2Vector([("content-length", "5"), ("content-length", "6")], [b"hello"]),
        REFUSED,
    ),
    "content-length-not-digits": (H2Vector([("content-length", "5, 5")], [b"hello"]), REFUSED),
    "transfer-encoding-chunked": (
        H2Vector([("transfer-encoding", "chunked")], [b"5\r\nhello\r\n0\r\n\r\n"]),
        REFUSED,
    ),
    "connection-content-length": (
        H2Vector([("connection", "content-length"), ("content-length", "5")], [b"hello"]),
        REFUSED,
    ),
    "keep-alive-header": (H2Vector([("keep-alive", "timeout=5")], [b"hello"]), REFUSED),
    "upgrade-h2c-header": (H2Vector([("upgrade", "h2c")], [b"hello"]), REFUSED),
    "te-gzip": (H2Vector([("te", "gzip")], [b"hello"]), REFUSED),
    "crlf-in-value": (
        H2Vector([("x-a", "b\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1")], [b"hello"]),
        REFUSED,
    ),
    "lf-in-value": (H2Vector([("x-a", "b\nTransfer-Encoding: chunked")], [b"hello"]), REFUSED),
    "nul-in-value": (H2Vector([("x-a", "b\x00c")], [b"hello"]), REFUSED),
    "crlf-in-name": (H2Vector([("x-a\r\nx-b", "c")], [b"hello"]), REFUSED),
    "uppercase-name": (H2Vector([("Content-Length", "5")], [b"hello"]), REFUSED),
    "space-in-path": (
        H2Vector([], [b"hello"], path="/echo HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled"),
        REFUSED,
    ),
    # host (RFC 9113 8.3.1): never a second Host; without :authority it is the authority
    "host-without-authority": (
        H2Vector([("host", "admin.internal")], method="GET", authority=NO_AUTHORITY),
        Forward(host=b"admin.internal"),
    ),
    "host-same-as-authority": (
        H2Vector([("host", "a.example")], method="GET", authority="a.example"),
        Forward(host=b"a.example"),
    ),
    "host-differs-from-authority": (
        H2Vector([("host", "admin.internal")], method="GET", authority="a.example"),
        REFUSED,
    ),
    "two-hosts-without-authority": (
        H2Vector([("host", "a"), ("host", "b")], method="GET", authority=NO_AUTHORITY),
        REFUSED,
    ),
    "authority-userinfo": (H2Vector([], method="GET", authority="u:p@a.example"), REFUSED),
    # control characters llhttp refuses on HTTP/1 (all but HTAB, and DEL)
    "value-soh": (H2Vector([("x-a", "a\x01b")], [b"hello"]), REFUSED),
    "value-vertical-tab": (H2Vector([("x-a", "a\x0bb")], [b"hello"]), REFUSED),
    "value-del": (H2Vector([("x-a", "a\x7fb")], [b"hello"]), REFUSED),
    "value-escape": (H2Vector([("x-a", "a\x1b[2Jb")], [b"hello"]), REFUSED),
    "value-inner-htab": (H2Vector([("x-a", "a\tb")], [b"hello"]), Forward(b"hello", chunked=True)),
    # the proxy answers 100-continue itself, as on HTTP/1: the upstream never waits for one
    "expect-100-continue": (
        H2Vector([("expect", "100-continue"), ("content-length", "5")], [b"hello"]),
        Forward(b"hello"),
    ),
    # trailers: what RFC 9110 6.5.1 keeps out of them is dropped on the way through
    "trailers-framing-host": (
        H2Vector(
            [],
            [b"hello"],
            trailers=[("content-length", "999"), ("host", "evil"), ("x-t", "1")],
            trailers_up=[(b"x-t", b"1")],
        ),
        Forward(b"hello", chunked=True),
    ),
    "trailers-auth-and-type": (
        H2Vector(
            [],
            [b"hello"],
            trailers=[("authorization", "x"), ("content-type", "a/b"), ("grpc-status", "0")],
            trailers_up=[(b"grpc-status", b"0")],
        ),
        Forward(b"hello", chunked=True),
    ),
    "host-userinfo": (
        H2Vector([("host", "u@a.example")], method="GET", authority=NO_AUTHORITY),
        REFUSED,
    ),
}


async def _h2_exchange(port: int, vector: H2Vector) -> int | None:
    """The response status, or None if the stream or connection was reset instead."""
    async with open_h2_client(port, validate=False) as client:
        try:
            pseudo = None
            if vector.authority == NO_AUTHORITY:
                pseudo = [(":method", vector.method), (":scheme", "http"), (":path", vector.path)]
            sid = await client.send_headers(
                vector.method,
                vector.path,
                vector.headers,
                end_stream=not vector.data,
                authority=vector.authority,
                pseudo=pseudo,
            )
            for i, data in enumerate(vector.data):
                last = i == len(vector.data) - 1 and vector.trailers is None
                await client.send_data(sid, data, end_stream=last)
            if vector.trailers is not None:
                await client.send_trailers(sid, vector.trailers)
            return (await client.response(sid)).status
        except (H2StreamReset, H2ConnectionClosed, h2.exceptions.StreamClosedError):
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            return None


@pytest.mark.parametrize("vector, want", H2_VECTORS.values(), ids=H2_VECTORS.keys())
async def test_h2_to_h1_injection(
    nursery: trio.Nursery, vector: H2Vector, want: Forward | None
) -> None:
    rec, port = await recorder_proxy(
        nursery, downstream_protocol="Http2", upstream_protocol="Http1"
    )
    with trio.fail_after(10):
        status = await _h2_exchange(port, vector)
        if want is REFUSED:
            assert status in (None, 400), status
            for conn in rec.conns:  # whatever went up never ends as a request
                await rec.wait_until(lambda conn=conn: conn.closed)
            assert rec.complete() == []
            assert all(b"smuggled" not in c.raw for c in rec.conns)
        else:
            assert status == 200
            (seen,) = rec.complete()
            assert_one_framing(seen, want)
            if vector.trailers_up is not None:
                assert seen.trailers == vector.trailers_up
        await no_ambiguous_reuse(rec, port, h2=True)


# --------------------------------------------------------------------------- responses

EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
CORRECT = "correct"
BAD = "bad"

RESPONSE_VECTORS: dict[str, tuple[bytes, str]] = {
    # framing nominated by Connection: relayed correctly framed, the connection not reused
    "connection-cl": (OK + b"Connection: content-length\r\nContent-Length: 2\r\n\r\nok", CORRECT),
    "connection-cl-then-bytes": (
        OK + b"Connection: content-length\r\nContent-Length: 2\r\n\r\nok" + EVIL,
        CORRECT,
    ),
    "connection-te": (
        OK + b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        CORRECT,
    ),
    # ambiguous framing: 502
    "cl-te": (
        OK + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        BAD,
    ),
    "cl-duplicate": (OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!", BAD),
    "cl-list": (OK + b"Content-Length: 2, 2\r\n\r\nok", BAD),
    "cl-negative": (OK + b"Content-Length: -2\r\n\r\nok", BAD),
    "te-identity": (OK + b"Transfer-Encoding: identity\r\n\r\nok", BAD),
    "te-chunked-identity": (OK + b"Transfer-Encoding: chunked, identity\r\n\r\nok", BAD),
    "space-before-colon": (OK + b"Content-Length : 2\r\n\r\nok", BAD),
    "bare-lf-head": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", BAD),
    "chunk-size-overflow": (
        OK + b"Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n",
        BAD,
    ),
}


@pytest.mark.parametrize("response, outcome", RESPONSE_VECTORS.values(), ids=RESPONSE_VECTORS)
async def test_ambiguous_upstream_response(
    nursery: trio.Nursery, response: bytes, outcome: str
) -> None:
    up, per_connection = await _scripted(
        nursery,
        {b"GET /v": response, b"GET /next": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"},
    )
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(b"GET /v HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response()
            if outcome == CORRECT:
                assert (r.status, r.body) == (200, b"ok")
                framing = [n for n, _ in r.headers if n in ("content-length", "transfer-encoding")]
                assert len(framing) == 1, r.headers
                assert "connection" not in r.headers or r.headers.get("connection") != (
                    "content-length"
                )
                await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await client.response()).body == b"next"
            else:
                assert r.status == 502, r
        if outcome == BAD:
            async with await Client.connect(port) as client:
                await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await client.response()).body == b"next"
    assert per_connection == [1, 1]  # the upstream connection of /v was never used again


# --------------------------------------------------------------------------- issue 14 follow-ups

WS_H2C = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    "upgrade_lines",
    [
        b"Upgrade: websocket\r\nUpgrade: h2c\r\n",  # the attacker's bytes
        b"Upgrade: h2c\r\nUpgrade: websocket\r\n",
        b"Upgrade: websocket\r\nUpgrade: foo, H2C\r\n",
    ],
    ids=["h2c-second", "h2c-first", "h2c-in-a-list"],
)
async def test_h2c_in_any_upgrade_line_is_stripped(
    nursery: trio.Nursery, upgrade_lines: bytes
) -> None:
    """Every Upgrade line is read before h2c is taken out. On 0828f59 only the first line
    was: the upstream got ``upgrade: h2c``, switched, and the client got raw HTTP/2 bytes
    past routing. The rest of the offer (websocket) still goes up."""
    rec, port = await recorder_proxy(nursery)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(WS_H2C + upgrade_lines + b"\r\n")
            r = await client.response(interim=True)
            assert (r.status, r.body) == (200, b"for /echo")
    (seen,) = rec.complete()
    offered = b",".join(seen.get(b"upgrade")).lower()
    assert b"h2c" not in offered
    assert b"websocket" in offered


SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"


@pytest.mark.parametrize(
    "response",
    [
        SWITCHED + b"Upgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        SWITCHED + b"Upgrade: websocket, h2c\r\n\r\n",
        SWITCHED + b"Upgrade: smtp\r\n\r\n",
        SWITCHED + b"\r\n",
    ],
    ids=["h2c", "websocket-and-h2c", "not-offered", "no-upgrade"],
)
async def test_a_switch_the_client_did_not_ask_for_is_a_502(
    nursery: trio.Nursery, response: bytes
) -> None:
    """A 101 must switch to what the client offered, never h2c; otherwise the client gets a
    502 (nothing of the 101 or what followed) and the upstream connection is closed."""
    up, per_connection = await _scripted(
        nursery,
        {
            b"GET /ws": response,
            b"GET /next": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
        },
    )
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            got = await client.read_to_eof()
            assert got.startswith(b"HTTP/1.1 502 "), got
            assert b"101" not in got and b"\x00\x00\x04" not in got
        async with await Client.connect(port) as client:
            await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.response()).body == b"next"
    assert per_connection == [1, 1]  # the connection that switched wrongly was closed


async def test_connection_cannot_take_off_a_header_a_filter_adds(nursery: trio.Nursery) -> None:
    """Hop-by-hop fields go before the filters run: a client naming in Connection the header
    a header_mutation filter adds (the client address the upstream decides on) cannot remove
    it. On 0828f59 the strip ran after the filters and the upstream got no x-client-ip."""
    rec = Recorder()
    up = await start_raw_server(nursery, rec.handler)
    route = {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
    add = [{"key": "x-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}]
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                        "stream_filters": [
                            {"type": "header_mutation", "config": {"request": {"add": add}}}
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "v", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [{"name": "up", "hosts": [{"address": f"127.0.0.1:{up}"}]}]
        },
    }
    _, port = await start_proxy(nursery, parse_config(doc).config)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: x-client-ip, x-drop\r\n"
                b"X-Drop: 1\r\nX-Client-IP: 6.6.6.6\r\n\r\n"
            )
            assert (await client.response()).body == b"for /a"
    (seen,) = rec.complete()
    assert seen.get(b"x-client-ip") == [b"127.0.0.1"]  # the filter's, not the client's
    assert seen.get(b"x-drop") == [] and seen.get(b"connection") == []


async def test_h2_to_h2_host_is_the_authority_never_a_field(nursery: trio.Nursery) -> None:
    """HTTP/2 to HTTP/2: a client's ``host`` becomes the ``:authority`` when there is none,
    and is never sent on as a field of its own (two authorities upstream on 0828f59)."""
    up = await start_h2_upstream(nursery)
    _, port = await start_proxy(
        nursery,
        http_config(
            [to("up")],
            {"up": up.port},
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
        ),
    )
    no_authority = [(":method", "GET"), (":scheme", "http"), (":path", "/echo")]
    with trio.fail_after(10):
        async with open_h2_client(port, validate=False) as client:
            for pseudo, authority in ((no_authority, None), (None, "admin.internal")):
                sid = await client.send_headers(
                    "GET",
                    "/echo",
                    [("host", "admin.internal")],
                    end_stream=True,
                    authority=authority,
                    pseudo=pseudo,
                )
                r = await client.response(sid)
                assert r.status == 200
                info = r.json()
                assert info["authority"] == "admin.internal"
                assert "host" not in dict(info["headers"])
    assert up.protocol_errors == []


async def test_h2_expect_100_continue_is_answered_by_the_proxy(nursery: trio.Nursery) -> None:
    """HTTP/2 to HTTP/1: the proxy answers ``expect: 100-continue`` itself (as its HTTP/1
    side does) and strips it; a client that waits for the 100 before its body is served."""
    rec, port = await recorder_proxy(
        nursery, downstream_protocol="Http2", upstream_protocol="Http1"
    )
    with trio.fail_after(10):
        async with open_h2_client(port) as client:
            sid = await client.send_headers(
                "POST", "/echo", [("expect", "100-continue"), ("content-length", "5")]
            )
            st = client.streams[sid]
            await client.wait_until(lambda: bool(st.informational))
            assert [code for code, _ in st.informational] == [100]
            await client.send_data(sid, b"hello", end_stream=True)
            r = await client.response(sid)
            assert (r.status, r.body) == (200, b"for /echo")
    (seen,) = rec.complete()
    assert seen.body == b"hello" and seen.get(b"expect") == []


async def test_http1_trailers_lose_fields_not_allowed_there(nursery: trio.Nursery) -> None:
    """HTTP/1 chunked trailers: Host, authentication and the other fields RFC 9110 6.5.1
    keeps out of trailers are not forwarded (Host went up on 0828f59)."""
    rec, port = await recorder_proxy(nursery)
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(
                CHUNKED + b"\r\n5\r\nhello\r\n0\r\nHost: evil\r\nAuthorization: x\r\n"
                b"Connection: close\r\nX-T: 1\r\n\r\n"
            )
            assert (await client.response()).body == b"for /echo"
    (seen,) = rec.complete()
    assert (seen.body, seen.trailers) == (b"hello", [(b"x-t", b"1")])
    assert seen.get(b"host") == [b"x"]


async def test_control_characters_from_an_h2_upstream_are_a_502(nursery: trio.Nursery) -> None:
    """An HTTP/2 upstream's response header value with control characters (llhttp refuses
    them on HTTP/1) never reaches an HTTP/1 client: 502, and the connection goes on. On
    0828f59 ``x-a: a\\x01\\x0bb`` was relayed."""
    import h2.config
    import h2.connection
    import h2.events

    async def evil(stream: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        path = dict(ev.headers)[b":path"]
                        value = b"a\x01\x0bb" if path == b"/ctl" else b"fine"
                        head = [(b":status", b"200"), (b"x-a", value), (b"content-length", b"2")]
                        conn.send_headers(ev.stream_id, head)
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                await stream.send_all(conn.data_to_send())

    up = await start_raw_server(nursery, evil)
    _, port = await start_proxy(
        nursery, http_config([to("up")], {"up": up}, proxy={"upstream_protocol": "Http2"})
    )
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(b"GET /ctl HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response()
            assert r.status == 502 and b"\x01" not in r.raw_head
            await client.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response()
            assert (r.status, r.body, r.headers.get("x-a")) == (200, b"ok", "fine")


async def test_response_trailers_lose_fields_not_allowed_there(nursery: trio.Nursery) -> None:
    """An HTTP/1 upstream's response trailers, to an HTTP/1 and to an HTTP/2 client: Host,
    Content-Type, authentication fields are dropped, the rest is relayed."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
        b"Host: evil\r\nContent-Type: x/y\r\nWWW-Authenticate: Basic\r\nX-T: 1\r\n\r\n"
    )
    up, _ = await _scripted(nursery, {b"GET /t": chunked})
    _, port = await start_proxy(nursery, http_config([to("up")], {"up": up}))
    _, h2_port = await start_proxy(
        nursery,
        http_config(
            [to("up")],
            {"up": up},
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http1"},
        ),
    )
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.send(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
            r = await client.response()
            assert (r.body, list(r.trailers)) == (b"ok", [("x-t", "1")])
        async with open_h2_client(h2_port) as h2_client:
            r2 = await h2_client.request("GET", "/t")
            assert (r2.body, list(r2.trailers)) == (b"ok", [("x-t", "1")])
