"""Listener limits that must hold against an attacker: ``max_connections`` under a burst,
the default downstream idle timeout, and the rate-limited accept back-off log."""

from __future__ import annotations

import socket

import trio

from .conftest import tcp_proxy_config
from .http_helpers import start_proxy


async def _served(sock: socket.socket) -> bool:
    """Whether the proxy relays a byte on this connection (else it closed or reset it)."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    try:
        await stream.send_all(b"x")
        return await stream.receive_some(10) == b"x"
    except trio.BrokenResourceError:
        return False


async def test_max_connections_holds_against_a_burst(nursery, echo_port):
    server, port = await start_proxy(
        nursery, tcp_proxy_config([echo_port], listener={"max_connections": 2})
    )
    stats = server.listeners["ingress"].stats
    with trio.fail_after(10):
        # Six handshakes done by the kernel before the accept loop runs once: one burst.
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        served = [s for s in burst if await _served(s)]
        assert len(served) == 2
        assert (stats.downstream_cx_overflow, stats.downstream_cx_active) == (4, 2)
        for s in burst:
            s.close()
        await server.listeners["ingress"].wait_closed()  # the proxy saw them go
        assert stats.downstream_cx_active == 0
        again = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        assert [await _served(s) for s in again] == [True, True]
        for s in again:
            s.close()
