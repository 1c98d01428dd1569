"""Outbound TCP connections with a connect timeout, failures mapped to one error type."""

from __future__ import annotations

import socket
import struct

import trio


class ConnectError(Exception):
    """Connecting upstream failed; ``timeout`` tells a timeout from a refusal or an error."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


async def connect_tcp(host: str, port: int, timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ConnectError(
            f"connect to {host}:{port} timed out after {timeout}s", timeout=True
        ) from None
    except OSError as exc:
        raise ConnectError(f"connect to {host}:{port} failed: {exc.strerror or exc}") from None


def abort(stream: trio.SocketStream) -> None:
    """Close with RST instead of FIN, so the peer learns the other side was reset."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed or never connected: a plain close is all there is
    stream.socket.close()
