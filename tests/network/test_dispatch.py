"""The chain dispatcher without TLS termination: first bytes replayed to plaintext and
pass-through chains, the ClientHello wait bounded in time and in number (the oldest evicted)."""

from __future__ import annotations

import ssl
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_mesh.config import Address
from trio_mesh.network.chains import Chain
from trio_mesh.network.connection import Connection
from trio_mesh.network.dispatch import ChainDispatcher, HandshakeSlots, ReplayStream
from trio_mesh.network.listener import ListenerRuntime, bind
from trio_mesh.stats import ListenerStats


@attrs.frozen
class M:
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()


def client_hello(sni: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class FakeStream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.socket = object()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    def readable_now(self) -> bool:
        return bool(self.chunks)


async def test_replay_stream_returns_the_prefix_first_in_pieces() -> None:
    inner = FakeStream([b"rest"])
    stream = ReplayStream(inner, b"abcdef")
    assert stream.readable_now()
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some(100) == b"ef"
    assert stream.readable_now()  # the inner stream's answer now
    assert await stream.receive_some(100) == b"rest"
    assert await stream.receive_some(100) == b""
    assert stream.socket is inner.socket


async def test_slots_evict_the_oldest() -> None:
    stats = ListenerStats()
    slots = HandshakeSlots(2, stats)
    a, b = slots.admit(10), slots.admit(10)
    c = slots.admit(10)
    assert a.evicted and a.scope.cancel_called
    assert not b.evicted and not c.evicted
    assert stats.ssl_handshake_evicted == 1
    slots.release(b)
    d = slots.admit(10)
    assert not c.evicted and not d.evicted and len(slots) == 2
    slots.release(a)  # already gone: nothing happens
    assert len(slots) == 2


async def _listener(nursery: trio.Nursery, dispatcher: ChainDispatcher) -> int:
    sock = await bind("t", Address("127.0.0.1", 0))
    runtime = ListenerRuntime("t", sock, dispatcher, stats=dispatcher.stats)
    await nursery.start(runtime.serve)
    return runtime.address[1]


def _recorder(name: str, seen: list[tuple[str, bytes]]) -> Any:
    async def handler(conn: Connection) -> None:
        data = b""
        while len(data) < 8:
            chunk = await conn.stream.receive_some(3)
            if not chunk:
                break
            data += chunk
        seen.append((name, data))
        await conn.stream.send_all(b"ok")

    return handler


async def test_first_bytes_replayed_to_the_chain_selected(nursery) -> None:
    seen: list[tuple[str, bytes]] = []
    stats = ListenerStats()
    chains = [
        Chain(0, M(transport_protocol="raw_buffer"), None, _recorder("plain", seen)),
        Chain(1, M(server_names=("pass.test",)), None, _recorder("pass", seen)),
    ]
    dispatcher = ChainDispatcher(
        "t", chains, inspector=False, handshake_timeout=5, max_handshakes=8, stats=stats
    )
    port = await _listener(nursery, dispatcher)
    hello = client_hello("pass.test")
    with trio.fail_after(10):
        for payload, pieces in ((b"GET / HTTP/1.1\r\n", 1), (hello, 3)):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            step = -(-len(payload) // pieces)
            for i in range(0, len(payload), step):  # a ClientHello over several reads
                await stream.send_all(payload[i : i + step])
            assert await stream.receive_some(10) == b"ok"
            await stream.aclose()
        # No chain for another name (no default): closed, counted.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(client_hello("other.test"))
        assert await stream.receive_some(10) == b""
    assert seen == [("plain", b"GET / HTT"), ("pass", hello[:9])]
    assert stats.no_filter_chain_match == 1


async def test_malformed_hello_closed_and_counted(nursery) -> None:
    stats = ListenerStats()
    seen: list[tuple[str, bytes]] = []
    dispatcher = ChainDispatcher(
        "t",
        [Chain(0, None, None, _recorder("any", seen))],
        inspector=True,
        handshake_timeout=5,
        max_handshakes=8,
        stats=stats,
    )
    port = await _listener(nursery, dispatcher)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")  # a ServerHello
        assert await stream.receive_some(10) == b""
    assert stats.ssl_connection_error == 1 and seen == []


async def test_stalled_hellos_time_out_and_the_oldest_is_evicted(nursery) -> None:
    stats = ListenerStats()
    seen: list[tuple[str, bytes]] = []
    dispatcher = ChainDispatcher(
        "t",
        [Chain(0, None, None, _recorder("any", seen))],
        inspector=True,
        handshake_timeout=0.3,
        max_handshakes=4,
        stats=stats,
    )
    port = await _listener(nursery, dispatcher)
    partial = client_hello("x.test")[:30]
    with trio.fail_after(10):
        stalled = []
        for _ in range(6):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.send_all(partial)
            stalled.append(s)
            await trio.testing.wait_all_tasks_blocked()  # taken in, in this order
        # The first two were evicted to make room for the last two: closed at once.
        for s in stalled[:2]:
            with pytest.raises(trio.BrokenResourceError):
                await s.receive_some(10)
        assert stats.ssl_handshake_evicted == 2
        # The other four time out.
        for s in stalled[2:]:
            with pytest.raises(trio.BrokenResourceError):
                await s.receive_some(10)
        assert stats.ssl_handshake_timeout == 4
        # A client that finishes its bytes is served.
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET / HTTP/1.1\r\n")
        assert await s.receive_some(10) == b"ok"
    assert len(dispatcher.slots) == 0


# ----------------------------------------------------------------------------- with TLS


class OneContext:
    """A ``ServerTls`` stand-in: one context for every name."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx

    def select(self, sni: str | None) -> ssl.SSLContext:
        return self.ctx


def server_context(pki: Any, *, mutual: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    if mutual:
        ctx.load_verify_locations(str(pki.ca.cert))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _tls_echo(conn: Connection) -> None:
    while data := await conn.stream.receive_some(1000):
        tls = conn.tls
        assert tls is not None
        await conn.stream.send_all(f"{tls.sni}:".encode() + data)


def _tls_dispatcher(pki: Any, stats: ListenerStats, **kw: Any) -> ChainDispatcher:
    chains = [
        Chain(0, None, OneContext(server_context(pki, mutual=kw.pop("mutual", False))), _tls_echo)
    ]
    return ChainDispatcher(
        "t",
        chains,
        inspector=kw.pop("inspector", False),
        handshake_timeout=kw.pop("timeout", 5),
        max_handshakes=kw.pop("max_handshakes", 8),
        stats=stats,
    )


async def _client(port: int, pki: Any, cert: Any = None) -> trio.SSLStream[trio.SocketStream]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    await stream.do_handshake()
    return stream


async def test_tls_handshake_and_the_stream_swapped(nursery, pki) -> None:
    stats = ListenerStats()
    port = await _listener(nursery, _tls_dispatcher(pki, stats))
    with trio.fail_after(10):
        stream = await _client(port, pki)
        await stream.send_all(b"hi")
        assert await stream.receive_some(100) == b"localhost:hi"
        await stream.aclose()
    assert stats.ssl_handshake == 1


@pytest.mark.parametrize("who", ["none", "stranger", "expired"])
async def test_client_certificate_failures_counted(nursery, pki, who) -> None:
    stats = ListenerStats()
    port = await _listener(nursery, _tls_dispatcher(pki, stats, mutual=True))
    cert = {"none": None, "stranger": pki.stranger, "expired": pki.expired_client}[who]
    with trio.fail_after(10):
        # TLS 1.3: the client finishes first; the server's refusal comes with the next read.
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            stream = await _client(port, pki, cert)
            await stream.send_all(b"hi")
            await stream.receive_some(100)
        while stats.ssl_connection_error == 0:
            await trio.testing.wait_all_tasks_blocked()
    assert stats.ssl_handshake == 0
    if who == "none":
        assert stats.ssl_fail_verify_no_cert == 1
    else:
        assert stats.ssl_fail_verify_error == 1
    good = await _client(port, pki, pki.client)
    await good.send_all(b"hi")
    assert await good.receive_some(100) == b"localhost:hi"


async def test_stalled_hello_flood_with_tls(nursery, pki) -> None:
    stats = ListenerStats()
    dispatcher = _tls_dispatcher(pki, stats, max_handshakes=64, timeout=30)
    port = await _listener(nursery, dispatcher)
    hello = client_hello("localhost")
    stalled = []
    try:
        with trio.fail_after(60):
            for _ in range(1000):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.send_all(hello)
                stalled.append(s)
            await trio.testing.wait_all_tasks_blocked()
            assert stats.ssl_handshake_evicted == 1000 - 64
            assert len(dispatcher.slots) == 64
        with trio.fail_after(2):
            stream = await _client(port, pki)
            await stream.send_all(b"hi")
            assert await stream.receive_some(100) == b"localhost:hi"
    finally:
        for s in stalled:
            s.socket.close()
    assert stats.ssl_handshake == 1
