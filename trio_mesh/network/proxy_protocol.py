"""Envoy's ``proxy_protocol`` listener filter: a connection's PROXY protocol header is read
before anything else (TLS, filter chain match, the chain's filters), and the client address it
carries becomes the connection's ``remote`` (and its destination ``local``): every later user
(``ip_access``, ``X-Forwarded-For``, the access log, routing on the source address) reads
those two attributes only, so they are set once, here.

The header is read within the listener's ``listener_filters_timeout`` (a client that sends
it a byte at a time is closed when it runs out) and is at most a few KiB
(``protocols.proxy_protocol``); bytes read past it are replayed to the chain. A malformed
header, or none when one is required, closes the connection and is counted in
``downstream_cx_proxy_proto_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ..protocols.proxy_protocol import (
    NEED_MORE,
    NOT_PROXY,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)
from ..stats import ListenerStats
from .dispatch import ReplayStream
from .throttled_log import ThrottledLog

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("trio_mesh.listener")

# A v2 header and its TLVs fit in one read; a v1 one is at most 107 bytes.
_READ = 4096


class ProxyProtocolHandler:
    """Wraps a listener's handler (``inner``: the chain's, or a ``ChainDispatcher``)."""

    __slots__ = ("_log", "allow_without", "inner", "name", "stats", "timeout")

    def __init__(
        self,
        name: str,
        inner: Callable[[Connection], Awaitable[None]],
        *,
        timeout: float,
        allow_without: bool,
        stats: ListenerStats,
    ) -> None:
        self.name = name
        self.inner = inner
        self.timeout = timeout
        #: Envoy's ``allow_requests_without_proxy_protocol``: a client that sends no header
        #: is served with its socket's address.
        self.allow_without = allow_without
        self.stats = stats
        self._log = ThrottledLog(log)

    def __call__(self, conn: Connection) -> Awaitable[None]:
        return self._serve(conn)

    async def _serve(self, conn: Connection) -> None:
        with trio.move_on_after(self.timeout) as scope:
            ok = await self._read_header(conn)
        if scope.cancelled_caught:
            self._fail(conn, "PROXY protocol header not received in time")
            conn.stream.abort()
            return
        if ok:
            await self.inner(conn)

    async def _read_header(self, conn: Connection) -> bool:
        """Reads and applies the header; False when the connection is to be closed."""
        stream = conn.stream
        buf = b""
        while True:
            try:
                data = await stream.receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if not data:
                return False  # gone before a whole header
            buf += data
            try:
                header = parse_proxy_header(buf)
            except ProxyProtocolError as exc:
                self._fail(conn, f"bad PROXY protocol header: {exc}")
                stream.close()
                return False
            if header is not NEED_MORE:
                break
        if header is NOT_PROXY:
            if not self.allow_without:
                self._fail(conn, "no PROXY protocol header")
                stream.close()
                return False
            conn.stream = ReplayStream(stream, buf)  # type: ignore[assignment]
            return True
        assert isinstance(header, ProxyHeader)
        if header.source is not None and header.destination is not None:
            conn.remote = _sockaddr(header.source)
            conn.local = _sockaddr(header.destination)
        rest = buf[header.length :]
        if rest:
            conn.stream = ReplayStream(stream, rest)  # type: ignore[assignment]
        return True

    def _fail(self, conn: Connection, what: str) -> None:
        self.stats.downstream_cx_proxy_proto_error += 1
        self._log.log(logging.INFO, "listener %r: downstream %s: %s", self.name, conn.remote, what)


def _sockaddr(addr: tuple[str, int]) -> tuple[str, int] | tuple[str, int, int, int]:
    """The shape ``getpeername`` gives for the address's family."""
    host, port = addr
    return (host, port, 0, 0) if ":" in host else (host, port)
