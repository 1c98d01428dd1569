"""TlsStream over real sockets, against trio's own SSLStream as the independent peer."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

import pytest
import trio

from tests.tls_pki import CLIENT_SPIFFE, Pki
from trio_mesh.network.stream import Stream
from trio_mesh.network.tls import TlsError, TlsStream, format_name


def server_ctx(pki: Pki, *, client_ca: bool = False, required: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.num_tickets = 0  # as the proxy builds it; a ticket left unread makes close a reset
    if client_ca:
        ctx.load_verify_locations(pki.ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return ctx


def client_ctx(pki: Pki, *, ca: object = None, cert: object = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca.cert))
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)  # type: ignore[attr-defined]
    return ctx


async def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (client, server), both non-blocking."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    client = socket.socket()
    client.setblocking(False)
    try:
        client.connect(lsock.getsockname())
    except BlockingIOError:
        pass
    await trio.lowlevel.wait_readable(lsock)
    server, _ = lsock.accept()
    lsock.close()
    await trio.lowlevel.wait_writable(client)
    return client, server


async def trio_peer(sock: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


@pytest.fixture
async def tls_pair(pki: Pki) -> AsyncIterator[tuple[trio.SSLStream[trio.SocketStream], TlsStream]]:
    """Our server side, trio's SSLStream as the client."""
    csock, ssock = await socket_pair()
    peer = trio.SSLStream(await trio_peer(csock), client_ctx(pki), server_hostname="localhost")
    result: list[TlsStream] = []

    async def accept() -> None:
        result.append(await TlsStream.accept(Stream(ssock), server_ctx(pki), sni="localhost"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await peer.do_handshake()
    yield peer, result[0]
    result[0].close()
    await peer.aclose()


async def test_echo_and_info(tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream]) -> None:
    peer, ours = tls_pair
    await peer.send_all(b"hello")
    assert await ours.receive_some() == b"hello"
    await ours.send_all(b"world")
    assert await peer.receive_some() == b"world"
    assert ours.info.version == "TLSv1.3"
    assert ours.info.alpn == "h2"
    assert ours.info.sni == "localhost"
    assert ours.info.peer_subject is None  # no client certificate asked for
    assert ours.info.peer_cert_der is None


async def test_close_notify_reads_as_eof(
    tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream],
) -> None:
    peer, ours = tls_pair
    await peer.send_all(b"x")
    await peer.aclose()
    assert await ours.receive_some() == b"x"
    assert await ours.receive_some() == b""
    assert await ours.receive_some() == b""


async def test_truncation_reads_as_eof(pki: Pki) -> None:
    """A peer that vanishes without close_notify: EOF, as HTTPS clients treat it."""
    csock, ssock = await socket_pair()
    peer = trio.SSLStream(await trio_peer(csock), client_ctx(pki), server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        done: list[TlsStream] = []

        async def accept() -> None:
            done.append(await TlsStream.accept(Stream(ssock), server_ctx(pki)))

        nursery.start_soon(accept)
        await peer.do_handshake()
    await peer.transport_stream.aclose()  # TCP FIN, no close_notify
    assert await done[0].receive_some() == b""
    done[0].close()


async def test_concurrent_reader_and_writers_keep_records_in_order(
    tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream],
) -> None:
    """HTTP/2's pattern: one task reads while several write large messages on one stream;
    the peer must decrypt every byte in order (a record out of order breaks the MAC)."""
    peer, ours = tls_pair
    blocks = [bytes([i]) * 300_000 for i in range(1, 5)]
    upload = b"u" * 2_000_000
    received = bytearray()
    got = bytearray()

    async def peer_reads() -> None:
        while len(received) < sum(map(len, blocks)):
            received.extend(await peer.receive_some(1 << 20))

    async def our_reader() -> None:
        while len(got) < len(upload):
            got.extend(await ours.receive_some())

    async def writer(block: bytes) -> None:
        for i in range(0, len(block), 50_000):
            await ours.send_all(block[i : i + 50_000])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_reads)
        nursery.start_soon(our_reader)
        nursery.start_soon(peer.send_all, upload)
        for block in blocks:
            nursery.start_soon(writer, block)
    assert bytes(got) == upload
    # each writer's chunks arrive whole and in its own order; chunks of writers interleave
    for block in blocks:
        assert received.count(block[:1]) == len(block)
    assert len(received) == sum(map(len, blocks))


async def test_send_all_until_times_out_and_resets(
    tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream],
) -> None:
    """A peer that reads nothing: the deadline passes, the stream is reset, not left with
    half a record that every later byte would follow."""
    peer, ours = tls_pair
    with pytest.raises(trio.TooSlowError):
        await ours.send_all_until(b"z" * 20_000_000, trio.current_time() + 0.2)
    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
        await ours.send_all(b"more")
    with pytest.raises(trio.BrokenResourceError):
        while await peer.receive_some(1 << 20):
            pass


async def test_readable_now_ignores_session_tickets(pki: Pki) -> None:
    """Client side, idle: a TLS 1.3 server sends session tickets after the handshake; they
    carry no data, so the connection is still reusable. Data or close: readable."""
    csock, ssock = await socket_pair()
    sctx = server_ctx(pki)
    sctx.num_tickets = 2
    server = trio.SSLStream(await trio_peer(ssock), sctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        ours = await TlsStream.connect(Stream(csock), client_ctx(pki), "localhost")
    await server.send_all(b"first")  # the tickets go out before it
    assert await ours.receive_some() == b"first"
    assert not ours.readable_now()
    await server.send_all(b"unasked")
    await trio.lowlevel.wait_readable(ours.socket)
    assert ours.readable_now()
    assert await ours.receive_some() == b"unasked"  # what readable_now read is kept
    await server.aclose()
    await trio.lowlevel.wait_readable(ours.socket)
    assert ours.readable_now()
    ours.close()


async def test_client_verifies_server(pki: Pki) -> None:
    csock, ssock = await socket_pair()
    server = trio.SSLStream(await trio_peer(ssock), server_ctx(pki), server_side=True)
    error = await refused_connect(server, csock, client_ctx(pki, ca=pki.other_ca.cert), "localhost")
    assert error.kind == "verify"


async def test_client_checks_the_name(pki: Pki) -> None:
    csock, ssock = await socket_pair()
    server = trio.SSLStream(await trio_peer(ssock), server_ctx(pki), server_side=True)
    error = await refused_connect(server, csock, client_ctx(pki), "wrong.example.test")
    assert error.kind == "verify" and "Hostname mismatch" in str(error)


async def refused_connect(
    server: trio.SSLStream[trio.SocketStream], csock: socket.socket, ctx: ssl.SSLContext, name: str
) -> TlsError:
    errors: list[TlsError] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_swallow, server.do_handshake)
        try:
            await TlsStream.connect(Stream(csock), ctx, name)
        except TlsError as exc:
            errors.append(exc)
    assert errors, "the handshake should have failed"
    return errors[0]


async def _swallow(fn: object) -> None:
    try:
        await fn()  # type: ignore[operator]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def mtls(pki: Pki, cert: object, *, required: bool = True) -> TlsStream | TlsError:
    csock, ssock = await socket_pair()
    peer = trio.SSLStream(
        await trio_peer(csock), client_ctx(pki, cert=cert), server_hostname="localhost"
    )
    out: list[TlsStream | TlsError] = []

    async def accept() -> None:
        try:
            out.append(
                await TlsStream.accept(
                    Stream(ssock), server_ctx(pki, client_ca=True, required=required)
                )
            )
        except TlsError as exc:
            out.append(exc)
            Stream(ssock).close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        try:
            await peer.do_handshake()
            await peer.send_all(b"ping")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await peer.transport_stream.aclose()
    return out[0]


async def test_mtls_peer_identity(pki: Pki) -> None:
    ours = await mtls(pki, pki.client)
    assert isinstance(ours, TlsStream)
    assert ours.info.peer_verified
    assert ours.info.peer_subject == "CN=client,O=trio-mesh tests"
    assert ours.info.peer_issuer == "CN=ca,O=trio-mesh tests"
    assert ours.info.peer_uri_sans == (CLIENT_SPIFFE,)
    assert ours.info.peer_serial
    assert ours.info.peer_cert_der and ours.info.peer_cert_der[:1] == b"\x30"
    ours.close()


async def test_mtls_refusals(pki: Pki) -> None:
    none = await mtls(pki, None)
    assert isinstance(none, TlsError) and none.kind == "no_cert"
    stranger = await mtls(pki, pki.stranger)
    assert isinstance(stranger, TlsError) and stranger.kind == "verify"
    expired = await mtls(pki, pki.expired_client)
    assert isinstance(expired, TlsError) and expired.kind == "verify"
    optional = await mtls(pki, None, required=False)
    assert isinstance(optional, TlsStream) and not optional.info.peer_verified
    optional.close()


async def test_plaintext_is_refused(pki: Pki) -> None:
    csock, ssock = await socket_pair()
    csock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TlsError) as info:
        await TlsStream.accept(Stream(ssock), server_ctx(pki))
    assert info.value.kind == "protocol"
    csock.close()


async def test_peer_gone_mid_handshake(pki: Pki) -> None:
    csock, ssock = await socket_pair()
    csock.close()
    with pytest.raises(TlsError) as info:
        await TlsStream.accept(Stream(ssock), server_ctx(pki))
    assert info.value.kind == "closed"


def test_format_name_escapes() -> None:
    name = ((("organizationName", "A, B"),), (("commonName", " lead"),))
    assert format_name(name) == "CN=\\ lead,O=A\\, B"
    assert format_name(()) is None


async def test_a_broken_record_read_ahead_makes_the_stream_readable(
    tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream],
) -> None:
    """Data, then a record that does not decrypt, in one read: the data is returned, and the
    stream then says so at once: to a pool, readable (dead), not idle-alive; the next read
    fails instead of waiting on the socket."""
    peer, ours = tls_pair
    await peer.send_all(b"ok")
    await peer.transport_stream.send_all(b"\x17\x03\x03\x00\x20" + b"\x01" * 0x20)
    # loopback: both are in our socket's queue once the sends returned
    assert await ours.receive_some() == b"ok"
    assert ours.readable_now()
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_some()
