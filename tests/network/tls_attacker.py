"""A TLS peer that misbehaves: Python's ``ssl`` over memory BIOs, with the OpenSSL calls
Python does not expose (KeyUpdate, renegotiation) made through ctypes on the same ``SSL*``.
The bytes it sends are real OpenSSL records, only more of them than a polite peer sends."""

from __future__ import annotations

import ctypes
import socket
import ssl
import sys

_libssl = ctypes.CDLL("libssl.so.3")
_libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libssl.SSL_renegotiate.argtypes = [ctypes.c_void_p]
_libssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
_libssl.SSL_set_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
_libssl.SSL_set_options.restype = ctypes.c_uint64
SSL_KEY_UPDATE_NOT_REQUESTED = 0
SSL_KEY_UPDATE_REQUESTED = 1
_SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION = 1 << 18


def _ssl_pointer(obj: ssl.SSLObject) -> int:
    # CPython 3.11's PySSLSocket: PyObject_HEAD, PyObject *Socket, SSL *ssl.
    assert sys.version_info[:2] == (3, 11), "the PySSLSocket layout is CPython 3.11's"
    inner = obj._sslobj  # type: ignore[attr-defined]
    head = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    return (
        ctypes.c_void_p.from_address(id(inner) + head + ctypes.sizeof(ctypes.c_void_p)).value or 0
    )


class Attacker:
    """A blocking TLS client on ``sock``; every record it makes goes out at once."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.ptr = _ssl_pointer(self.obj)

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(data)
            else:
                self.flush()
                return

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self.flush()

    def key_updates(self, count: int, kind: int = SSL_KEY_UPDATE_NOT_REQUESTED) -> bytes:
        """``count`` TLS 1.3 KeyUpdate messages, each in its own record (not sent yet)."""
        for _ in range(count):
            assert _libssl.SSL_key_update(self.ptr, kind) == 1
            assert _libssl.SSL_do_handshake(self.ptr) == 1
        return self.outgoing.read()

    def renegotiation_hellos(self, count: int) -> bytes:
        """``count`` TLS 1.2 renegotiation ClientHellos (not sent yet): the client asks again
        and again, never waiting for the answer."""
        _libssl.SSL_set_options(self.ptr, _SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION)
        out = bytearray()
        for _ in range(count):
            assert _libssl.SSL_renegotiate(self.ptr) == 1
            _libssl.SSL_do_handshake(self.ptr)  # wants to read the ServerHello: fine
            out += self.outgoing.read()
        return bytes(out)
