"""Outbound connections with a connect timeout, failures mapped to one error type.

``connect`` is the one way upstream: TCP, then (when given a context) the TLS handshake,
both within the same timeout; a handshake that fails is a connect failure
(``TlsConnectError``, with OpenSSL's reason for the reply and the log).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
from typing import Any, cast

import trio

from .stream import Stream
from .tls import TlsError, TlsStream


class ConnectError(Exception):
    """Connecting upstream failed; ``timeout`` tells a timeout from a refusal or an error."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class TlsConnectError(ConnectError):
    """The TCP connection was made but the TLS handshake failed: ``reason`` is OpenSSL's,
    ``kind`` the ``TlsError`` kind (``"verify"``: the upstream's certificate did not verify)."""

    def __init__(self, message: str, reason: str, kind: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind


async def connect(
    host: str,
    port: int,
    timeout: float,
    ctx: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Stream:
    """A connection to ``host:port``: TCP, then TLS over it when ``ctx`` is given (SNI and the
    name verified: ``server_hostname``), both within ``timeout`` seconds. A ``TlsStream``
    has the interface of ``Stream`` (typed as one: its users need not tell them apart)."""
    if ctx is None:
        return await connect_tcp(host, port, timeout)
    deadline = trio.current_time() + timeout
    stream = await connect_tcp(host, port, timeout)
    try:
        with trio.fail_at(deadline):
            return cast("Stream", await TlsStream.connect(stream, ctx, server_hostname))
    except trio.TooSlowError:
        stream.abort()
        raise ConnectError(
            f"TLS handshake with {host}:{port} timed out after {timeout}s", timeout=True
        ) from None
    except TlsError as exc:
        stream.close()  # a plain close: the alert OpenSSL sent goes first
        raise TlsConnectError(
            f"TLS handshake with {host}:{port} failed: {exc}", str(exc), exc.kind
        ) from None
    except BaseException:
        stream.abort()
        raise


async def connect_tcp(host: str, port: int, timeout: float) -> Stream:
    """Connect to one address (a name resolves to its first address; no happy eyeballs:
    upstream hosts are addresses in a mesh, and one syscall path keeps errors exact)."""
    try:
        with trio.fail_after(timeout):
            family, sockaddr = await _resolve(host, port)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                err = sock.connect_ex(sockaddr)
                if err == errno.EINPROGRESS:
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
            except BaseException:
                sock.close()
                raise
    except trio.TooSlowError:
        raise ConnectError(
            f"connect to {host}:{port} timed out after {timeout}s", timeout=True
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConnectError(f"connect to {host}:{port} failed: {reason}") from None
    return Stream(sock)


async def _resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return infos[0][0], infos[0][4]
    return (socket.AF_INET6, (host, port)) if ip.version == 6 else (socket.AF_INET, (host, port))
