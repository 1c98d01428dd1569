"""A listener's connections sorted onto its filter chains, TLS terminated (Envoy's
tls_inspector and filter chain match, MOSN's inspector).

A listener with one plaintext chain and nothing to match never comes here: its chain's handler
is the listener's handler, and a connection costs no read and no parse more than before. The
others get a `ChainDispatcher` as their handler. For each new connection it

1. reads the first bytes until they are a ClientHello or plainly not TLS (``tls_hello``);
2. selects the chain (``chains``) from the server name, transport and ALPN offers;
3. for a TLS chain, runs the handshake (``TlsStream.accept``, fed the bytes already read) and
   puts the TLS stream and its facts on the connection; for a plaintext or pass-through
   chain, wraps the stream so the bytes already read are read again first;
4. runs the chain's handler.

Steps 1 to 3 are "the handshake": bounded in time by the listener's ``tls_handshake_timeout``
and in number by ``max_concurrent_handshakes``. At the bound the oldest handshake in progress
is aborted to make room: a peer that opens connections and stalls them can only ever hold
slots for less time than the newest arrivals, so a real client is not kept out by it.
Failures are counted in the listener's stats and logged at most once a second.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..protocols.tls_hello import NEED_MORE, NOT_TLS, ClientHello, HelloError, parse_client_hello
from ..stats import ListenerStats
from .chains import Chain, ChainSelector
from .connection import DRAIN_IDLE_GRACE
from .stream import Stream
from .throttled_log import ThrottledLog
from .tls import TlsError, TlsStream

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("trio_mesh.listener")

_READ = 16384


class ReplayStream:
    """A stream whose first reads return bytes already read from it (the listener's peek at a
    ClientHello or a plaintext request), then the stream's own. Everything else is the
    stream's."""

    __slots__ = ("_prefix", "_stream", "socket")

    def __init__(self, stream: Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _take(self, max_bytes: int) -> bytes:
        prefix = self._prefix
        if len(prefix) <= max_bytes:
            self._prefix = b""
            return prefix
        self._prefix = prefix[max_bytes:]
        return prefix[:max_bytes]

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            return self._take(max_bytes)
        return await self._stream.receive_some(max_bytes)

    async def receive_after_wait(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            return self._take(max_bytes)
        return await self._stream.receive_after_wait(max_bytes)

    def readable_now(self) -> bool:
        return bool(self._prefix) or bool(self._stream.readable_now())

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_all_until(
        self,
        data: bytes | bytearray | memoryview,
        deadline: float,
        on_block: Callable[[], None] | None = None,
    ) -> None:
        await self._stream.send_all_until(data, deadline, on_block)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        return self._stream.send_nowait(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    def close(self) -> None:
        self._stream.close()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def abort(self) -> None:
        self._stream.abort()


class _Slot:
    __slots__ = ("evicted", "scope")

    def __init__(self, deadline: float) -> None:
        self.scope = trio.CancelScope(deadline=deadline)
        self.evicted = False


class HandshakeSlots:
    """At most ``limit`` handshakes in progress; a new one evicts the oldest at the bound."""

    __slots__ = ("_active", "limit", "stats")

    def __init__(self, limit: int, stats: ListenerStats) -> None:
        self.limit = limit
        self.stats = stats
        self._active: dict[_Slot, None] = {}  # insertion order: the oldest first

    def __len__(self) -> int:
        return len(self._active)

    def admit(self, timeout: float) -> _Slot:
        active = self._active
        while len(active) >= self.limit:
            oldest = next(iter(active))
            del active[oldest]
            oldest.evicted = True
            oldest.scope.cancel()
            self.stats.ssl_handshake_evicted += 1
        slot = _Slot(trio.current_time() + timeout)
        active[slot] = None
        return slot

    def release(self, slot: _Slot) -> None:
        self._active.pop(slot, None)


class ChainDispatcher:
    """The handler of a listener with TLS, several chains or ``inspector``."""

    def __init__(
        self,
        name: str,
        chains: list[Chain],
        *,
        inspector: bool,
        handshake_timeout: float,
        max_handshakes: int,
        stats: ListenerStats,
    ) -> None:
        self.name = name
        self.selector = ChainSelector(chains)
        self.inspector = inspector
        self.handshake_timeout = handshake_timeout
        self.stats = stats
        self.slots = HandshakeSlots(max_handshakes, stats)
        self._log = ThrottledLog(log)

    @property
    def chains(self) -> tuple[Chain, ...]:
        return self.selector.chains

    def __call__(self, conn: Connection) -> Awaitable[None]:
        return self._serve(conn)

    async def _serve(self, conn: Connection) -> None:
        slot = self.slots.admit(self.handshake_timeout)
        handler: Callable[[Connection], Awaitable[None]] | None = None
        try:
            with slot.scope:
                handler = await self._handshake(conn)
        finally:
            conn.busy = False
            self.slots.release(slot)
        if slot.scope.cancelled_caught:
            if slot.evicted:
                self._fail(conn, "handshake aborted: too many in progress")
            else:
                self.stats.ssl_handshake_timeout += 1
                self._fail(conn, "handshake timed out")
            conn.stream.abort()
            return
        if handler is None:
            conn.stream.close()
            return
        if conn.draining:
            # Drained during the handshake: the first request, on its way, is served (with
            # "Connection: close"); a client that sends none is not waited for.
            conn.idle.shorten(DRAIN_IDLE_GRACE)
        await handler(conn)

    async def _handshake(self, conn: Connection) -> Callable[[Connection], Awaitable[None]] | None:
        """Steps 1 to 3; the chain's handler, or None when the connection is to be closed."""
        stream = conn.stream
        buf = b""
        while True:
            try:
                data = await stream.receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None  # gone before saying anything
            if not data:
                return None
            # Begun: a drain (a listener changed or removed, a stop) lets it finish, as it
            # lets a request in flight: its client sends its first request right after it
            # (a certificate rotated by an xDS update must not reset it). Its own timeout
            # bounds it still. A connection that has sent nothing is closed at once.
            conn.busy = True
            buf += data
            try:
                hello = parse_client_hello(buf)
            except HelloError as exc:
                self.stats.ssl_connection_error += 1
                self._fail(conn, f"bad ClientHello: {exc}")
                return None
            if hello is not NEED_MORE:
                break
        if hello is NOT_TLS:
            chain = self.selector.select(None, False)
            if chain is None:
                self._no_chain(conn, None)
                return None
            if chain.tls is not None and not self.inspector:
                # A plaintext client on a TLS-only chain: TLS is not optional here.
                self.stats.ssl_connection_error += 1
                self._fail(conn, "plaintext on a TLS chain")
                return None
            conn.stream = ReplayStream(stream, buf)  # type: ignore[assignment]
            return chain.handler
        assert isinstance(hello, ClientHello)
        chain = self.selector.select(hello.sni, True, hello.alpn)
        if chain is None:
            self._no_chain(conn, hello.sni)
            return None
        server_tls = chain.tls
        if server_tls is None:  # pass-through, or a plaintext chain that gets TLS bytes
            conn.stream = ReplayStream(stream, buf)  # type: ignore[assignment]
            return chain.handler
        ctx = server_tls.select(hello.sni)
        subject, uri_sans = chain.identities.get(ctx, (None, ()))
        try:
            tls = await TlsStream.accept(
                stream,
                ctx,
                initial=buf,
                sni=hello.sni,
                local_subject=subject,
                local_uri_sans=uri_sans,
            )
        except TlsError as exc:
            self._count_failure(exc.kind)
            self._fail(conn, f"TLS handshake failed: {exc}")
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats.ssl_connection_error += 1
            return None
        self.stats.ssl_handshake += 1
        conn.stream = tls  # type: ignore[assignment]
        conn.tls = tls.info
        return chain.handler

    def _count_failure(self, kind: str) -> None:
        stats = self.stats
        stats.ssl_connection_error += 1
        if kind == "no_cert":
            stats.ssl_fail_verify_no_cert += 1
        elif kind == "verify":
            stats.ssl_fail_verify_error += 1

    def _no_chain(self, conn: Connection, sni: str | None) -> None:
        self.stats.no_filter_chain_match += 1
        self._fail(conn, f"no filter chain matches (server name {sni!r})")

    def _fail(self, conn: Connection, what: str) -> None:
        self._log.log(logging.INFO, "listener %r: downstream %s: %s", self.name, conn.remote, what)
