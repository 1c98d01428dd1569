"""TlsStream against peers that misbehave: floods of records without data, renegotiation,
broken and oversized records, resets, stalls, and its own callers racing each other.

The peer is real OpenSSL (``tls_attacker.Attacker``: Python's ``ssl`` plus the calls Python
does not expose); the server side is built by the proxy's own context builder."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess

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
    pki: Pki, *, tls12: bool = False, big_buffers: bool = False, unix: bool = False
) -> tuple[Attacker, TlsStream]:
    # unix: a socketpair, whose buffers fill and stay full (TCP on loopback frees room as
    # acknowledgements come back and the receive buffer grows).
    csock, ssock = socket.socketpair() if unix else await socket_pair()
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


def _record(attacker: Attacker, data: bytes) -> bytes:
    attacker.obj.write(data)
    return attacker.outgoing.read()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # cleartext after the handshake
        b"\x17\x03\x03\x50\x00" + b"\x00" * 0x5000,  # a record longer than TLS allows
        b"\x17\x03\x03\x00\x20" + b"\x01" * 0x20,  # a record that does not decrypt
        b"\x16\x03\x03\x00\x04\x00\x00\x00\x00",  # a cleartext handshake message
    ],
)
async def test_garbage_after_the_handshake_breaks_the_stream(pki: Pki, garbage: bytes) -> None:
    attacker, ours = await attacked(pki)
    await trio.to_thread.run_sync(attacker.sock.sendall, _record(attacker, b"ok") + garbage)
    assert await ours.receive_some() == b"ok"
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_some()
    ours.close()
    attacker.sock.close()


async def test_a_record_split_byte_by_byte(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    record = _record(attacker, b"x" * 1000)

    def dribble() -> None:
        attacker.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(record)):
            attacker.sock.send(record[i : i + 1])

    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, dribble)
        while len(got) < 1000:
            chunk = await ours.receive_some()
            assert chunk
            got += chunk
    assert got == b"x" * 1000
    ours.close()
    attacker.sock.close()


async def test_close_notify_then_more_data(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    try:
        attacker.obj.unwrap()
    except ssl.SSLWantReadError:
        pass
    after = b"\x17\x03\x03\x00\x20" + b"\x01" * 0x20
    await trio.to_thread.run_sync(attacker.sock.sendall, attacker.outgoing.read() + after)
    assert await ours.receive_some() == b""
    assert await ours.receive_some() == b""  # EOF stays EOF: nothing after it is read
    ours.close()
    attacker.sock.close()


async def test_a_reset_mid_record(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    record = _record(attacker, b"y" * 5000)
    attacker.sock.sendall(record[:2000])
    attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    attacker.sock.close()
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive_some()
    ours.close()


async def test_readable_now_with_a_partial_record(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    record = _record(attacker, b"z" * 100)
    attacker.sock.sendall(record[:50])
    await trio.lowlevel.wait_readable(ours.socket)
    assert not ours.readable_now()  # half a record: nothing to read yet
    attacker.sock.sendall(record[50:])
    with trio.fail_after(5):
        assert await ours.receive_after_wait() == b"z" * 100
    ours.close()
    attacker.sock.close()


async def test_readable_now_on_a_stream_of_unasked_data(pki: Pki) -> None:
    attacker, ours = await attacked(pki, big_buffers=True)
    flood = b"".join(_record(attacker, b"u" * 16384) for _ in range(64))  # 1 MiB
    await trio.to_thread.run_sync(attacker.sock.sendall, flood)
    assert ours.readable_now()
    assert ours._in.pending <= 4 * RAW_CHUNK  # read a bounded amount, not all of it
    ours.close()
    attacker.sock.close()


async def test_a_stalled_handshake_ends_with_the_callers_scope(pki: Pki) -> None:
    csock, ssock = await socket_pair()
    hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello, cut short
    csock.send(hello_start)
    with trio.move_on_after(0.2) as scope:
        await TlsStream.accept(Stream(ssock), proxy_ctx(pki))
    assert scope.cancelled_caught
    # The socket is the caller's to close; nothing else holds it.
    assert ssock.fileno() != -1
    ssock.close()
    csock.close()


async def test_close_while_others_wait_in_receive_and_send(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await ours.receive_some()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async def writer() -> None:
        try:
            await ours.send_all(b"w" * (4 << 20))
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert not ours.send_nowait(b"never interleaved")  # a send is in progress
            ours.close()
    assert len(errors) == 2
    attacker.sock.close()


async def test_many_senders_while_the_peer_reads_slowly(pki: Pki) -> None:
    attacker, ours = await attacked(pki)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    messages = [bytes([48 + i]) * (1000 + i) for i in range(50)]  # a byte of its own each
    expected = b"".join(messages)
    got = bytearray()

    def slow_reader() -> None:
        attacker.sock.settimeout(10)
        while len(got) < len(expected):
            data = attacker.sock.recv(1024)
            assert data
            attacker.incoming.write(data)
            while True:
                try:
                    got.extend(attacker.obj.read(65536))
                except ssl.SSLWantReadError:
                    break

    async def send(message: bytes) -> None:
        await ours.send_all(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, slow_reader)
        for message in messages:
            nursery.start_soon(send, message)
            await trio.sleep(0)
        # Memory: what the callers handed in, and no more.
        assert len(ours._unsent) <= len(expected) + 50 * 64
    # Each message arrives whole, never interleaved with another (in whatever order the
    # scheduler ran the senders).
    runs = [m.group() for m in re.finditer(rb"(.)\1*", bytes(got), re.S)]
    assert sorted(runs) == sorted(messages)
    ours.close()
    attacker.sock.close()


async def test_openssl_s_client_renegotiation_is_refused(pki: Pki) -> None:
    """``openssl s_client -legacy_renegotiation`` and its ``R`` command: told no at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2"]
    command += ["-legacy_renegotiation", "-CAfile", str(pki.ca.cert)]
    command += ["-servername", "localhost"]
    read: list[bytes | BaseException] = []
    got_hello = trio.Event()

    async def serve() -> None:
        await trio.lowlevel.wait_readable(listener)
        sock, _ = listener.accept()
        ours = await TlsStream.accept(Stream(sock), proxy_ctx(pki))
        try:
            while data := await ours.receive_some():
                read.append(data)
                got_hello.set()
        except trio.BrokenResourceError as exc:
            read.append(exc)
        ours.close()

    with trio.move_on_after(5):  # the bug: the client waited for an answer that never came
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert process.stdin is not None and process.stdout is not None
            output = b""
            try:
                while b"Verify return code: 0 (ok)" not in output:
                    output += await process.stdout.receive_some()
                # s_client takes "R" as a command only alone in one read of its input.
                await process.stdin.send_all(b"hello\n")
                await got_hello.wait()
                await process.stdin.send_all(b"R\n")
                while chunk := await process.stdout.receive_some():
                    output += chunk
                await process.wait()
            finally:
                process.kill()
                await process.wait()
    listener.close()
    assert b"RENEGOTIATING" in output
    assert b"no renegotiation" in output.lower() or b"NO_RENEGOTIATION" in output
    assert read[0] == b"hello\n"


async def test_a_deadline_holds_behind_the_readers_answer(pki: Pki) -> None:
    """The reader answers a renegotiation (an alert) into a socket the peer stopped reading;
    a writer queued behind it still times out at its deadline, and the stream is reset."""
    attacker, ours = await attacked(pki, tls12=True, unix=True)
    try:  # fill the socket (the peer reads nothing; what the bytes are does not matter)
        while True:
            ours.socket.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    await trio.to_thread.run_sync(attacker.sock.sendall, attacker.renegotiation_hellos(1))
    blocked: list[bool] = []

    async def reader() -> None:
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await ours.receive_some()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert ours._sending  # the reader is sending its alert
            with pytest.raises(trio.TooSlowError):
                await ours.send_all_until(
                    b"response", trio.current_time() + 0.2, lambda: blocked.append(True)
                )
    assert blocked
    assert ours.socket.fileno() == -1  # reset: the queued response never goes out late
    attacker.sock.close()
