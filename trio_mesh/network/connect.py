"""Outbound TCP connections with a connect timeout, failures mapped to one error type."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

import trio

from .stream import Stream


class ConnectError(Exception):
    """Connecting upstream failed; ``timeout`` tells a timeout from a refusal or an error."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


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
