"""TLS on the proxy's own stream: OpenSSL through ``ssl.SSLObject`` and two memory BIOs.

Not ``trio.SSLStream``: it checkpoints on every call and refuses concurrent use of one
direction; the proxy's streams try the syscall first (``stream.py``), and the HTTP/2 and RPC
connections read in one task while others write. Here a read and a write may run at once:
they share only the ciphertext OpenSSL produces, which goes to the socket in the order it was
made, through one buffer that one task at a time sends (``_flush``).

A peer that closes without ``close_notify`` reads as EOF, as HTTPS clients treat it (the
framing of HTTP and the RPC protocols tells a truncated message apart).
"""

from __future__ import annotations

import errno
import math
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from .stream import Stream, _mapped

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
#: Ciphertext read from the socket per syscall: several full TLS records.
RAW_CHUNK = 64 * 1024
#: Ciphertext one receive takes without any plaintext before the peer counts as abusive: far
#: more than the records a polite peer sends without data (session tickets, a KeyUpdate, a
#: record split in pieces: 16 KiB at most), little next to a flood (BoringSSL's limit is 32
#: KeyUpdates).
MAX_IDLE_CIPHERTEXT = 256 * 1024

_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


class TlsError(Exception):
    """A handshake failed. ``kind``: ``"no_cert"`` (the peer gave no certificate where one
    is required), ``"verify"`` (its certificate did not verify), ``"closed"`` (it went away
    mid-handshake) or ``"protocol"`` (anything else OpenSSL refused: a version, a cipher, bytes
    that are not TLS)."""

    def __init__(self, reason: str, kind: str = "protocol") -> None:
        super().__init__(reason)
        self.kind = kind


def _rdn(value: str) -> str:
    """One attribute value escaped as RFC 2253 asks."""
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def format_name(name: tuple[tuple[tuple[str, str], ...], ...] | None) -> str | None:
    """A distinguished name from ``getpeercert()`` as Envoy prints it: RFC 2253, most
    specific first (``CN=client,O=example``)."""
    if not name:
        return None
    parts = []
    for rdn in reversed(name):
        parts.append("+".join(f"{_RDN_NAMES.get(k, k)}={_rdn(v)}" for k, v in rdn))
    return ",".join(parts)


class TlsInfo:
    """What a finished handshake tells, for access logs, filters and ``x-forwarded-client-cert``.

    The peer's certificate is decoded on first use: a connection nobody asks about (no log
    variable, no XFCC) costs nothing more than its handshake. ``peer_*`` are those of a
    certificate that verified (``None`` / empty without one); ``peer_cert_der`` is there
    whenever the peer sent one.
    """

    __slots__ = (
        "_obj",
        "_peer",
        "alpn",
        "cipher",
        "local_subject",
        "local_uri_sans",
        "sni",
        "version",
    )

    def __init__(
        self,
        obj: ssl.SSLObject,
        *,
        sni: str | None = None,
        local_subject: str | None = None,
        local_uri_sans: tuple[str, ...] = (),
    ) -> None:
        self._obj = obj
        self._peer: dict[str, object] | None = None
        self.version: str = obj.version() or ""
        cipher = obj.cipher()
        self.cipher: str = cipher[0] if cipher else ""
        self.alpn: str | None = obj.selected_alpn_protocol()
        self.sni = sni if sni is not None else (None if obj.server_side else obj.server_hostname)
        self.local_subject = local_subject
        self.local_uri_sans = local_uri_sans

    def _decoded(self) -> dict[str, object]:
        if self._peer is None:
            try:
                self._peer = dict(self._obj.getpeercert() or {})
            except ValueError:  # the object is gone (the stream closed): nothing to tell
                self._peer = {}
        return self._peer

    def _sans(self, kind: str) -> tuple[str, ...]:
        sans = self._decoded().get("subjectAltName") or ()
        return tuple(v for k, v in sans if k == kind)  # type: ignore[attr-defined]

    @property
    def peer_subject(self) -> str | None:
        return format_name(self._decoded().get("subject"))  # type: ignore[arg-type]

    @property
    def peer_issuer(self) -> str | None:
        return format_name(self._decoded().get("issuer"))  # type: ignore[arg-type]

    @property
    def peer_uri_sans(self) -> tuple[str, ...]:
        return self._sans("URI")

    @property
    def peer_dns_sans(self) -> tuple[str, ...]:
        return self._sans("DNS")

    @property
    def peer_serial(self) -> str | None:
        serial = self._decoded().get("serialNumber")
        return str(serial).lower() if serial else None

    @property
    def peer_cert_der(self) -> bytes | None:
        try:
            return self._obj.getpeercert(binary_form=True)
        except ValueError:
            return None

    @property
    def peer_verified(self) -> bool:
        """The peer sent a certificate and it verified."""
        return bool(self._decoded())


class TlsStream:
    """A TLS connection with the interface of :class:`~trio_mesh.network.stream.Stream`.

    Made by :meth:`accept` (server side) or :meth:`connect` (client side) once the handshake
    is done. ``socket`` is the raw socket: for addresses and options, never for I/O.
    """

    __slots__ = (
        "_app",
        "_closed",
        "_eof",
        "_failed",
        "_in",
        "_out",
        "_raw",
        "_sending",
        "_sent",
        "_ssl",
        "_c",
        "_unsent",
        "info",
        "socket",
    )

    def __init__(
        self, raw: Stream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ):
        self._raw = raw
        self.socket = raw.socket
        self._ssl = obj
        # The C object under the SSLObject: read, write and pending without the Python
        # wrapper's frame (the same methods; the wrapper only forwards).
        self._c: Any = getattr(obj, "_sslobj", obj)
        self._in = incoming
        self._out = outgoing
        #: Ciphertext made but not sent yet, in order; ``_sending``: a task is sending it.
        self._unsent = bytearray()
        self._sending = False
        self._sent = trio.lowlevel.ParkingLot()
        #: Plaintext read by ``readable_now``, returned by the next receive.
        self._app = b""
        self._eof = False
        #: OpenSSL refused a record read ahead (``_read_more``): the next receive says so.
        self._failed = ""
        self._closed = False
        self.info: TlsInfo

    @classmethod
    async def accept(
        cls,
        stream: Stream,
        ctx: ssl.SSLContext,
        initial: bytes = b"",
        *,
        sni: str | None = None,
        local_subject: str | None = None,
        local_uri_sans: tuple[str, ...] = (),
    ) -> TlsStream:
        """The server side of a handshake on ``stream``; ``initial``: bytes of it already read
        from the socket (the ClientHello a listener looked at). The caller bounds the time."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self = cls(stream, ctx.wrap_bio(incoming, outgoing, server_side=True), incoming, outgoing)
        if initial:
            incoming.write(initial)
        await self._handshake()
        self.info = TlsInfo(
            self._ssl, sni=sni, local_subject=local_subject, local_uri_sans=local_uri_sans
        )
        return self

    @classmethod
    async def connect(
        cls, stream: Stream, ctx: ssl.SSLContext, server_hostname: str | None
    ) -> TlsStream:
        """The client side of a handshake on ``stream`` (SNI and the name verified:
        ``server_hostname``, as ``ctx.check_hostname`` says). The caller bounds the time."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        self = cls(stream, obj, incoming, outgoing)
        await self._handshake()
        self.info = TlsInfo(self._ssl)
        return self

    async def _handshake(self) -> None:
        obj = self._ssl
        while True:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                await self._send_alert()
                raise TlsError(
                    f"certificate verify failed: {exc.verify_message}", "verify"
                ) from None
            except ssl.SSLError as exc:
                await self._send_alert()
                raise _handshake_error(exc) from None
            else:
                try:
                    await self._flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise TlsError("the peer went away during the handshake", "closed") from None
                return
            try:
                await self._flush()
                data = await self._raw.receive_some(RAW_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise TlsError("the peer went away during the handshake", "closed") from None
            if not data:
                raise TlsError("the peer closed the connection during the handshake", "closed")
            self._in.write(data)

    async def _send_alert(self) -> None:
        """Send the alert OpenSSL made for a failed handshake, if the socket takes it now."""
        self._take()
        if self._unsent:
            try:
                self.socket.send(self._unsent)
            except OSError:
                pass
            self._unsent.clear()

    def _take(self) -> None:
        if self._out.pending:
            self._unsent += self._out.read()

    async def _flush(
        self, deadline: float = math.inf, on_block: Callable[[], None] | None = None
    ) -> None:
        """Send every byte of ciphertext made so far. Another task sending already sends
        ours too (they follow its bytes): wait for it instead."""
        self._take()
        while self._sending:
            if deadline == math.inf:
                await self._sent.park()
                continue
            # Queued behind another task's send (the reader's answer to the peer, say): the
            # deadline holds here too, or a peer that stops reading makes it wait forever.
            if on_block is not None:
                on_block()
            with trio.move_on_at(deadline) as scope:
                await self._sent.park()
            if scope.cancelled_caught:
                self._raw.abort()  # our records would go after the caller gave up on them
                raise trio.TooSlowError
        if self.socket.fileno() == -1:
            # The task that was sending our bytes failed, or the stream was closed: they
            # never went, and the caller must not be told they did.
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed")
            raise trio.BrokenResourceError("the TLS stream broke while sending")
        if not self._unsent:
            return
        self._sending = True
        sock = self.socket
        unsent = self._unsent
        try:
            while unsent:
                try:
                    sent = sock.send(unsent)
                except BlockingIOError:
                    if on_block is not None:
                        on_block()
                    if deadline == math.inf:
                        await _wait_writable(sock)
                    else:
                        with trio.move_on_at(deadline) as scope:
                            await _wait_writable(sock)
                        if scope.cancelled_caught:
                            raise trio.TooSlowError from None
                    continue
                except OSError as exc:
                    raise _mapped(exc) from exc
                del unsent[:sent]
                self._take()
        except BaseException:
            if unsent:
                # Records lost, or half of one on the wire: nothing after them can be read.
                unsent.clear()
                self._raw.abort()
            raise
        finally:
            self._sending = False
            self._sent.unpark_all()

    def receive_some(self, max_bytes: int = 65536) -> Coroutine[Any, Any, bytes]:
        return self._receive(max_bytes, False)

    def receive_after_wait(self, max_bytes: int = 65536) -> Coroutine[Any, Any, bytes]:
        """For a read that cannot be ready yet: wait for the socket first, unless bytes
        already read wait in OpenSSL."""
        return self._receive(max_bytes, True)

    async def _receive(self, max_bytes: int, wait_first: bool) -> bytes:
        # (One coroutine for both reads, its syscall inline: each layer of awaits costs
        # about what OpenSSL's decryption of a small request does.)
        if self._app:
            app, self._app = self._app, b""
            return app
        obj = self._c
        incoming = self._in
        sock = self.socket
        # Ciphertext taken in this call without any plaintext: records that carry no data
        # (KeyUpdate, empty records, refused renegotiations). Bounded, and a yield per round
        # after the first: a peer streaming them cannot hold the loop (or the CPU) forever.
        idle = 0
        while True:
            if incoming.pending or obj.pending():
                try:
                    data: bytes = obj.read(max_bytes)
                except ssl.SSLWantReadError:
                    if self._out.pending:  # an alert or answer the peer waits for
                        await self._flush()
                except ssl.SSLZeroReturnError:  # close_notify
                    self._eof = True
                    return b""
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(f"TLS error: {exc.reason or exc}") from None
                else:
                    if incoming.pending and len(data) < max_bytes:
                        data = self._read_more(data, max_bytes)
                    if self._out.pending:  # a post-handshake message asked for an answer
                        await self._flush()
                    return data
            if self._eof:
                return b""
            if self._failed:
                raise trio.BrokenResourceError(self._failed)
            if idle:
                if idle > MAX_IDLE_CIPHERTEXT:
                    self.abort()
                    raise trio.BrokenResourceError("TLS: the peer sends records without data")
                await trio.lowlevel.checkpoint()
            if wait_first:
                wait_first = False
                await _wait_readable(sock)
            try:
                raw = sock.recv(RAW_CHUNK)
            except BlockingIOError:
                await _wait_readable(sock)
                continue
            except OSError as exc:
                raise _mapped(exc) from exc
            if not raw:
                self._eof = True
                return b""
            idle += len(raw)
            incoming.write(raw)

    def _read_more(self, data: bytes, max_bytes: int) -> bytes:
        """``data`` and the plaintext of the other records already received, up to
        ``max_bytes``: as a socket read returns all it has. ``SSLObject.read`` returns one
        record; one left in the buffer would be invisible to a reader that judges a
        connection by what it read (an HTTP/1 upstream's bytes after its response in a record
        of their own: the pool would reuse the connection and hand them to the next request)."""
        obj = self._c
        parts = [data]
        size = len(data)
        while size < max_bytes and (self._in.pending or obj.pending()):
            try:
                more = obj.read(max_bytes - size)
            except ssl.SSLWantReadError:  # a partial record: the next receive completes it
                break
            except ssl.SSLZeroReturnError:  # close_notify: the next receive says EOF
                self._eof = True
                break
            except ssl.SSLError as exc:  # a broken record: the next receive fails
                self._failed = f"TLS error: {exc.reason or exc}"
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        obj = self._c
        try:
            view = memoryview(data)
            while view:
                view = view[obj.write(view) :]
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc.reason or exc}") from None
        self._take()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        unsent = self._unsent
        if self._sending or unsent:
            self._encrypt(data)
            await self._flush()
            return
        # The common case: nothing queued, and the socket takes the records at once (a
        # memory BIO takes all of the plaintext in one write: no partial writes).
        try:
            self._c.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc.reason or exc}") from None
        out = self._out.read()
        try:
            sent = self.socket.send(out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _mapped(exc) from exc
        if sent != len(out):
            unsent += memoryview(out)[sent:]
            await self._flush()

    async def send_all_until(
        self,
        data: bytes | bytearray | memoryview,
        deadline: float,
        on_block: Callable[[], None] | None = None,
    ) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        self._encrypt(data)
        await self._flush(deadline, on_block)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """All of ``data`` went to the socket without waiting (else the caller aborts)."""
        if self._closed or self._sending:
            return False
        try:
            self._encrypt(data)
            sent = self.socket.send(self._unsent)
        except (OSError, trio.BrokenResourceError):
            return False
        done = sent == len(self._unsent)
        del self._unsent[:sent]
        return done

    def readable_now(self) -> bool:
        """Data or EOF waits: for an idle pooled connection, it is dead. TLS records that carry
        no data (a TLS 1.3 session ticket) are read and do not count."""
        if self._app or self._eof or self._failed or self._ssl.pending():
            return True
        sock = self.socket
        for _ in range(4):
            try:
                raw = sock.recv(RAW_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                return True
            if not raw:
                self._eof = True
                return True
            self._in.write(raw)
        else:
            # Bytes keep coming, unasked for: not an idle connection (and reading on would
            # buffer without bound, in a loop that never yields).
            return True
        if not self._in.pending:
            return False
        try:
            self._app = self._ssl.read(RAW_CHUNK)
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError:  # close_notify, or a broken record
            self._eof = True
            return True
        return True

    async def send_eof(self) -> None:
        """``close_notify``, then the TCP half-close (TLS 1.3 lets the peer go on sending)."""
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # it waits for the peer's close_notify: ours is made
        await self._flush()
        await self._raw.send_eof()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._sending and not self._unsent:
            # close_notify, if the socket takes it now: the peer learns this was no truncation.
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._take()
            if self._unsent:
                try:
                    self.socket.send(self._unsent)
                except OSError:
                    pass
        self._unsent.clear()
        self._raw.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        self._closed = True
        self._unsent.clear()
        self._raw.abort()


def _handshake_error(exc: ssl.SSLError) -> TlsError:
    reason = exc.reason or str(exc)
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        return TlsError(reason, "no_cert")
    if "CERTIFICATE" in reason and (
        "VERIFY" in reason or "UNKNOWN_CA" in reason or "BAD" in reason
    ):
        return TlsError(reason, "verify")
    if exc.errno == errno.ECONNRESET:
        return TlsError(reason, "closed")
    return TlsError(reason, "protocol")
