"""TlsStream against peers that misbehave: floods of records without data, renegotiation,
broken and oversized records, resets, stalls, and its own callers racing each other.

The peer is real OpenSSL (``tls_attacker.Attacker``: Python's ``ssl`` plus the calls Python
does not expose); the server side is built by the proxy's own context builder."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing

from tests.network.test_tls_stream import socket_pair
from tests.network.tls_attacker import (
    SSL_KEY_UPDATE_NOT_REQUESTED,
    SSL_KEY_UPDATE_REQUESTED,
    Attacker,
)
from tests.tls_pki import Pki
from trio_mesh.config.model import FilterChain
from trio_mesh.config.tls import TlsConfig
from trio_mesh.network.stream import Stream
from trio_mesh.network.tls import MAX_IDLE_CIPHERTEXT, RAW_CHUNK, TlsStream
from trio_mesh.network.tls_context import server_tls


def proxy_ctx(pki: Pki) -> ssl.SSLContext:
    """The server context as the proxy builds it (no renegotiation, no tickets)."""
    config = TlsConfig(
        status=True, cert_chain=str(pki.server.cert), private_key=str(pki.server.key)
    )
    built = server_tls(FilterChain(tls_context=config), "chain", default_alpn=())
    assert built is not None
    return built.default


async def attacked(
    pki: Pki, *, tls12: bool = False, big_buffers: bool = False
) -> tuple[Attacker, TlsStream]:
    csock, ssock = await socket_pair()
    if big_buffers:  # a whole flood fits in the kernel: it is all ready at the first read
        ssock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        csock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    attacker = Attacker(csock, ctx, "localhost")
    result: list[TlsStream] = []

    async def accept() -> None:
        result.append(await TlsStream.accept(Stream(ssock), proxy_ctx(pki)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await trio.to_thread.run_sync(attacker.handshake)
    return attacker, result[0]


async def assert_reset(sock: socket.socket) -> None:
    """The peer reads what was sent, then a reset (not a clean end)."""

    def drain() -> None:
        sock.settimeout(5)
        while sock.recv(1 << 20):
            pass

    with pytest.raises(ConnectionResetError):
        await trio.to_thread.run_sync(drain)


class Ticker:
    """Counts how often another task got to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await trio.sleep(0)


async def test_key_update_flood_yields_and_is_cut_off(pki: Pki) -> None:
    attacker, ours = await attacked(pki, big_buffers=True)
    flood = attacker.key_updates(20_000, SSL_KEY_UPDATE_REQUESTED)
    assert len(flood) > MAX_IDLE_CIPHERTEXT + RAW_CHUNK
    attacker.obj.write(b"data after the flood")
    flood += attacker.outgoing.read()
    await trio.to_thread.run_sync(attacker.sock.sendall, flood)
    ticker = Ticker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.sleep(0)
        before = ticker.ticks
        with pytest.raises(trio.BrokenResourceError, match="without data"):
            await ours.receive_some()
        # Other tasks ran while the records were read (one round per raw chunk).
        assert ticker.ticks - before >= 2
        nursery.cancel_scope.cancel()
    # The flooder is reset, not left holding a connection.
    await assert_reset(attacker.sock)


async def test_a_few_key_updates_are_fine(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    burst = attacker.key_updates(100, SSL_KEY_UPDATE_NOT_REQUESTED)
    attacker.obj.write(b"hello")
    await trio.to_thread.run_sync(attacker.sock.sendall, burst + attacker.outgoing.read())
    assert await ours.receive_some() == b"hello"
    await ours.send_all(b"world")
    data = await trio.to_thread.run_sync(attacker.sock.recv, 65536)
    attacker.incoming.write(data)
    assert attacker.obj.read() == b"world"
    ours.close()


async def test_renegotiation_is_refused_and_the_peer_told(pki: Pki) -> None:
    attacker, ours = await attacked(pki, tls12=True)
    hello = attacker.renegotiation_hellos(1)
    await trio.to_thread.run_sync(attacker.sock.sendall, hello)
    outcome: list[BaseException | bytes] = []

    async def server() -> None:
        try:
            outcome.append(await ours.receive_some())
        except trio.BrokenResourceError as exc:
            outcome.append(exc)

    def client() -> str:
        attacker.sock.settimeout(5)  # the bug: no answer at all, the client waits
        try:
            attacker.handshake()
        except ssl.SSLError as exc:
            attacker.flush()  # its fatal alert
            return str(exc.reason)
        return "renegotiated"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        assert await trio.to_thread.run_sync(client) == "NO_RENEGOTIATION"
    # The client's fatal alert ends the server's read: no handshake was run.
    assert outcome == [b""] or isinstance(outcome[0], trio.BrokenResourceError), outcome
    assert ours.info.version == "TLSv1.2"
    ours.close()


async def test_a_waiting_sender_is_not_told_its_bytes_went(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    outcome: list[object] = []
    first_scope = trio.CancelScope()

    async def first() -> None:
        with first_scope:
            await ours.send_all(b"x" * (4 << 20))  # the peer does not read: blocks

    async def second() -> None:
        try:
            await ours.send_all(b"a small record that must not be lost silently")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            outcome.append(exc)
        else:
            outcome.append("returned as if sent")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        # `first` is cancelled part-way: the stream is aborted (never half a record), and
        # `second`, whose record was queued behind it, learns it never went.
        first_scope.cancel()
    assert len(outcome) == 1 and isinstance(outcome[0], trio.BrokenResourceError), outcome
    await assert_reset(attacker.sock)
