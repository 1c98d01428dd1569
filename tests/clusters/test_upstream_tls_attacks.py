"""Upstream TLS attacked from the upstream's side: an HTTP/1 upstream over TLS that sends
bytes after its response in records of their own (the pool must not reuse the connection),
and ``upstream_protocol: Auto`` negotiation when the request that started it goes away.
The upstreams are Python ``ssl`` objects on real sockets, so the test decides exactly which
TLS records go out in which TCP write.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import trio

from tests.http_helpers import Client, get, http_config, read_request, start_proxy, to
from tests.tls_pki import Pki


def tls_cluster(port: int, pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "name": "up",
        "connect_timeout": "2s",
        "hosts": [{"address": f"127.0.0.1:{port}"}],
        "tls_context": {"status": True, "ca_cert": str(pki.ca.cert), "server_name": "localhost"},
        **extra,
    }


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    return ctx


class RecordServer:
    """A TLS server on a raw socket through ``ssl.SSLObject``: ``send_records`` encrypts each
    piece as its own record and writes them all in ONE ``send`` (they arrive together)."""

    def __init__(self, stream: trio.SocketStream, ctx: ssl.SSLContext) -> None:
        self.stream = stream
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.buf = bytearray()

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError from None
                self.incoming.write(data)
                continue
            await self._flush()
            return

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.stream.send_all(self.outgoing.read())

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                return self.obj.read(max_bytes)
            except ssl.SSLWantReadError:
                data = await self.stream.receive_some(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    async def send_records(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.obj.write(piece)  # one record each
        await self._flush()


async def test_bytes_after_a_response_in_their_own_tls_record_are_not_the_next_answer(nursery, pki):
    """An upstream answers one request with a response and, in the same TCP write but a
    TLS record of its own, a second response nobody asked for. In cleartext the proxy sees
    both in one read and does not reuse the connection; over TLS the second record must not
    stay buffered in the pooled connection to become the answer to the next client's
    request (a response desync)."""
    ctx = server_context(pki)
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        n = connections
        tls = RecordServer(stream, ctx)
        try:
            await tls.handshake()
            buf = bytearray()
            while (await read_request(tls, buf)) is not None:  # type: ignore[arg-type]
                body = b"conn=%d" % n
                smuggled = b"smuggled"
                await tls.send_records(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled),
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    up_port = listeners[0].socket.getsockname()[1]
    server, port = await start_proxy(nursery, http_config([to("up")], [tls_cluster(up_port, pki)]))
    bodies = []
    with trio.fail_after(10):
        for _ in range(2):  # two clients, one after the other: the second may get a pooled one
            async with await Client.connect(port) as client:
                await client.send(get("/"))
                bodies.append((await client.response()).body)
    assert bodies[0] == b"conn=1"
    assert bodies[1] != b"smuggled"
    assert bodies[1] == b"conn=2"
    assert server.clusters.get("up").stats.upstream_cx_total == 2


async def test_auto_negotiation_cancelled_with_its_request_is_taken_over_by_a_waiter(nursery, pki):
    """``upstream_protocol: Auto`` over TLS: the first request to a host negotiates and the
    others wait for it. When that first request goes away (its route timeout here, a client
    reset alike), a waiter must negotiate in its place: the upstream did not fail, and a
    request whose own time is not up must not be answered 503 for another's timeout."""
    ctx = server_context(pki)
    accepted = trio.Event()
    release = trio.Event()
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:  # the first connection's handshake stalls
            accepted.set()
            await release.wait()
        tls = RecordServer(stream, ctx)
        try:
            await tls.handshake()
            buf = bytearray()
            while (await read_request(tls, buf)) is not None:  # type: ignore[arg-type]
                await tls.send_records(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    up_port = listeners[0].socket.getsockname()[1]
    config = http_config(
        [to("up", "/short", timeout="0.3s"), to("up", "/", timeout="10s")],
        [tls_cluster(up_port, pki, connect_timeout="5s")],
        proxy={"upstream_protocol": "Auto"},
    )
    server, port = await start_proxy(nursery, config)
    stats = server.clusters.get("up").stats
    results: dict[str, int] = {}

    async def one(path: str) -> None:
        async with await Client.connect(port) as client:
            await client.send(get(path))
            results[path] = (await client.response()).status

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            clients.start_soon(one, "/short")
            await accepted.wait()  # negotiating, for /short
            clients.start_soon(one, "/long")
            while stats.upstream_rq_active < 2:  # /long waits on the negotiation
                await trio.lowlevel.checkpoint()
            while "/short" not in results:  # its route timeout ended its negotiation
                await trio.lowlevel.checkpoint()
            release.set()
    assert results == {"/short": 504, "/long": 200}
    assert server.clusters.get("up").hosts[0].protocol == "http/1.1"


async def test_auto_first_requests_raced_while_the_upstream_dies_after_alpn_h2(nursery, pki):
    """100 concurrent first requests to a host whose TLS server answers ALPN h2 and closes
    right after the handshake: one negotiation shared, every request answered (503), the
    host's protocol not learned from it, nothing left counted as active."""
    ctx = server_context(pki)
    ctx.set_alpn_protocols(["h2"])
    handshakes = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal handshakes
        tls = RecordServer(stream, ctx)
        try:
            await tls.handshake()
            handshakes += 1
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    up_port = listeners[0].socket.getsockname()[1]
    config = http_config(
        [to("up")], [tls_cluster(up_port, pki)], proxy={"upstream_protocol": "Auto"}
    )
    server, port = await start_proxy(nursery, config)
    statuses: list[int] = []

    async def one() -> None:
        async with await Client.connect(port) as client:
            await client.send(get("/"))
            statuses.append((await client.response()).status)

    with trio.fail_after(20):
        async with trio.open_nursery() as clients:
            for _ in range(100):
                clients.start_soon(one)
    assert statuses == [503] * 100
    cluster = server.clusters.get("up")
    assert cluster.hosts[0].protocol is None  # learned nothing from a connection that died
    assert cluster.stats.upstream_cx_active == 0
    assert handshakes <= 5  # shared, not one per request
