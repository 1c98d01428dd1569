"""A TCP stream on a non-blocking stdlib socket, for the proxy's hot path.

``trio.SocketStream`` yields to the scheduler after every successful send and receive (its
"always a checkpoint" rule). A proxy does five or six socket operations per request, and on
CPython each yield costs more than the syscall. This stream tries the syscall first and waits
for readiness only when the kernel says it would block: the same I/O, far fewer task switches.
Callers that loop on data which is always ready must checkpoint themselves now and then
(the HTTP session does once per request, the relay every few chunks).

Errors are trio's: ``BrokenResourceError`` for a reset or broken pipe, ``ClosedResourceError``
for use after close, so code written against ``trio.SocketStream`` works unchanged.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
from collections.abc import Callable

import trio

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_LINGER_ABORT = struct.pack("ii", 1, 0)


class Stream:
    __slots__ = ("socket",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        sock = self.socket
        while True:
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                await _wait_readable(sock)
            except OSError as exc:
                raise _mapped(exc) from exc

    async def receive_after_wait(self, max_bytes: int = 65536) -> bytes:
        """For a read that cannot be ready yet (an answer to what was just sent): wait
        first, and spare the failing syscall and its exception."""
        sock = self.socket
        await _wait_readable(sock)
        while True:
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                await _wait_readable(sock)
            except OSError as exc:
                raise _mapped(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _mapped(exc) from exc
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            await _wait_writable(sock)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _mapped(exc) from exc
            view = view[sent:]

    async def send_all_until(
        self,
        data: bytes | bytearray | memoryview,
        deadline: float,
        on_block: Callable[[], None] | None = None,
    ) -> None:
        """``send_all`` that raises ``trio.TooSlowError`` once ``deadline`` passes while the
        socket takes nothing (``on_block`` is told each time it would block). Cut short after
        part of ``data`` went, the stream is reset: the peer must not read half a frame."""
        sock = self.socket
        view = memoryview(data)
        total = len(view)
        sent = 0
        try:
            while sent < total:
                try:
                    sent += sock.send(view[sent:] if sent else view)
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
                except OSError as exc:
                    raise _mapped(exc) from exc
        except BaseException:
            if 0 < sent < total:
                self.abort()
            raise
        finally:
            view.release()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """All of ``data`` went to the socket without waiting (else the caller aborts)."""
        try:
            return self.socket.send(data) == len(data)
        except OSError:
            return False

    def readable_now(self) -> bool:
        """Bytes or EOF wait to be read (or the socket failed): for an idle connection, the
        peer closed it or broke its protocol. One non-blocking peek (no select(): fds past
        1024)."""
        try:
            self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    async def send_eof(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _mapped(exc) from exc

    def close(self) -> None:
        _notify_closing(self.socket)
        self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Close with RST instead of FIN, so the peer learns the other side was reset."""
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass  # already closed or never connected: a plain close is all there is
        self.close()


def _notify_closing(sock: socket.socket) -> None:
    """Wake any task waiting on this socket (with ClosedResourceError) before its fd number
    can be reused by a new socket, which the waiter would otherwise be left watching."""
    if sock.fileno() != -1:
        try:
            trio.lowlevel.notify_closing(sock)
        except RuntimeError:
            pass  # outside a Trio run (a test closing its own socket): nobody can wait on it


def _mapped(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the stream was closed")
    return trio.BrokenResourceError(f"socket error: {exc.strerror or exc}")
