"""TlsStream against a peer that floods: ``readable_now`` (the HTTP/1 pool's idle check, the
listener's drain check) is synchronous; it must not read all a peer sends into memory."""

from __future__ import annotations

import os
import socket

import trio

from tests.network.test_tls_stream import tls_pair  # noqa: F401  (a fixture)
from trio_mesh.network.tls import RAW_CHUNK, TlsStream


async def test_readable_now_reads_a_bounded_amount(
    tls_pair: tuple[trio.SSLStream[trio.SocketStream], TlsStream],  # noqa: F811
) -> None:
    peer, ours = tls_pair
    # the peer's own socket (a duplicate descriptor): bytes written under its TLS
    raw_peer = socket.socket(fileno=os.dup(peer.transport_stream.socket.fileno()))
    raw_peer.setblocking(False)
    raw_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sent = 0
    chunk = b"\x17\x03\x03\x40\x00" + b"x" * (RAW_CHUNK - 5)  # not even valid records
    while True:
        try:
            sent += raw_peer.send(chunk)
        except BlockingIOError:
            break
    assert sent > 8 * RAW_CHUNK  # the kernel holds more than the bound below
    assert ours.readable_now()  # something is there: an idle connection with it is dead
    # ... told from at most a few chunks, the rest left in the kernel: a peer sending as
    # fast as it can cannot keep this loop (and the memory it fills) going
    assert ours._in.pending <= 4 * RAW_CHUNK
    assert ours.socket.recv(1, socket.MSG_PEEK) in (b"x", b"\x17")
    raw_peer.close()
