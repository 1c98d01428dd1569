"""The hot upgrade for ``--workers N``: the supervisor has no Trio loop, so both of its sides
are here, blocking with deadlines (the new one's) or driven by its ``select`` loop (the old
one's). Same protocol and limits as the package's Trio side."""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..config import Address, MeshConfig
from ..errors import StartupError
from ..network.inherit import InheritedSockets
from . import (
    ANSWER_TIMEOUT,
    BYE_TIMEOUT,
    CONNECT_TIMEOUT,
    HELLO_TIMEOUT,
    MAX_DOCUMENT,
    MAX_FDS,
    MAX_LINE,
    READY_TIMEOUT,
    Handed,
    UpgradeError,
    _inherited,
    decode,
    encode,
    listener_entries,
    peer_allowed,
    peer_credentials,
    prepare_directory,
    rights,
)

log = logging.getLogger("trio_mesh.upgrade")


class LinkTimeout(UpgradeError):
    """No answer in time (the peer may still be there, unlike a broken link)."""


class BlockingLink:
    """One end of an upgrade connection on a plain socket; every call has a deadline."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self._buffer = bytearray()
        self.fds: list[int] = []

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = encode(message)
        self.sock.settimeout(BYE_TIMEOUT)
        try:
            if fds:
                rights_ = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                data = data[self.sock.sendmsg([data], rights_) :]
            self.sock.sendall(data)
        except TimeoutError:
            raise UpgradeError("the peer does not read") from None

    def receive(self, timeout: float, limit: int = MAX_LINE) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (line := self._line(limit)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no answer within {timeout:g}s")
            self.sock.settimeout(remaining)
            try:
                self._read()
            except TimeoutError:
                continue
        return decode(line)

    def poll(self) -> dict[str, Any] | None:
        """What is readable now (the supervisor's select said so): a message or ``None``."""
        line = self._line(MAX_LINE)
        if line is None:
            self.sock.setblocking(False)
            try:
                self._read()
            except BlockingIOError:
                return None
            line = self._line(MAX_LINE)
        return None if line is None else decode(line)

    def _line(self, limit: int) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            return line
        if len(self._buffer) > limit:
            raise UpgradeError(f"a line longer than {limit} bytes")
        return None

    def _read(self) -> None:
        data, ancillary, flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
        self.fds.extend(rights(ancillary))
        if flags & socket.MSG_CTRUNC:
            raise UpgradeError(f"more than {MAX_FDS} descriptors")
        if not data:
            raise UpgradeError("the peer closed the link")
        self._buffer += data

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()


# -- the new supervisor ----------------------------------------------------------------------


@attrs.define
class BlockingTakeover:
    link: BlockingLink
    inherited: InheritedSockets
    document: Any = None

    def ready(self) -> bool:
        """False: the link broke before the old supervisor's ``bye`` (it gave up on us, e.g.
        not ready in time, and serves on)."""
        try:
            self.link.send({"op": "ready"})
            bye = self.link.receive(BYE_TIMEOUT)
            log.info("upgrade: the old process (pid %s) is draining", bye.get("pid"))
        except LinkTimeout as exc:
            log.warning("upgrade socket %s: after ready: %s", self.link.path, exc)
        except (UpgradeError, OSError) as exc:
            log.error("upgrade socket %s: after ready: %s", self.link.path, exc)
            return False
        finally:
            self.link.close()
        return True

    def abort(self) -> None:
        self.link.close()
        self.inherited.close_leftovers()


def take_over_blocking(
    path: str, config: MeshConfig, *, want_config: bool
) -> BlockingTakeover | None:
    """``take_over`` for the supervisor: ``None`` when nobody serves ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except TimeoutError:
        sock.close()
        raise StartupError(
            f"upgrade socket {path}: no answer within {CONNECT_TIMEOUT:g}s"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOTDIR):
            return None
        raise StartupError(
            f"upgrade socket {path}: cannot connect: {exc.strerror or exc}"
        ) from None
    link = BlockingLink(sock, path)
    try:
        pid, uid = peer_credentials(sock)  # type: ignore[arg-type]
        if not peer_allowed(uid, os.getuid()):
            raise UpgradeError(f"served by uid {uid} (pid {pid}), not by us")
        link.send({"op": "hello", "config": want_config, "pid": os.getpid()})
        answer = link.receive(ANSWER_TIMEOUT)
        if answer.get("op") != "sockets":
            raise UpgradeError(f"expected sockets, got {answer.get('op')!r}")
        inherited = _inherited(answer.get("listeners"), link, None if want_config else config)
        document = None
        if want_config:
            message = link.receive(ANSWER_TIMEOUT, MAX_DOCUMENT)
            if message.get("op") != "config":
                raise UpgradeError(f"expected config, got {message.get('op')!r}")
            document = message.get("document")
    except (UpgradeError, OSError) as exc:
        link.close()
        raise StartupError(f"upgrade socket {path}: {exc}") from None
    log.info("upgrade: pid %d handed over %d socket(s) (%s)", pid, len(inherited.leftovers()), path)
    return BlockingTakeover(link=link, inherited=inherited, document=document)


# -- the old supervisor ----------------------------------------------------------------------


class BlockingUpgradeServer:
    """The supervisor's upgrade socket, driven by its ``select`` loop: ``waitables()`` to add
    to it, ``handle(sock)`` for each readable one, ``expire()`` now and then. An upgrade that
    completes sets ``handed``. The exchange up to the sockets is done at once (bounded by
    ``HELLO_TIMEOUT``); the wait for ``ready`` is one more socket in the loop."""

    def __init__(
        self,
        path: str,
        sockets: Callable[[], list[tuple[str, socket.socket]]],
        document: Callable[[], Any],
    ) -> None:
        self.path = path
        self.sockets = sockets
        self.document = document
        self.handed: Handed | None = None
        self.listener: socket.socket | None = None
        self._pending: tuple[BlockingLink, int, float] | None = None  # link, pid, deadline
        self._inode: tuple[int, int] | None = None
        #: The supervisor is stopping: no upgrade may start now (its sockets are closing).
        self.closed = False

    @property
    def handing(self) -> bool:
        """A peer holds our sockets and may yet say ready (or did)."""
        return self._pending is not None or self.handed is not None

    def open(self) -> None:
        try:
            prepare_directory(self.path)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(tmp)
                os.chmod(tmp, 0o600)
                sock.listen(8)
                os.rename(tmp, self.path)
            except BaseException:
                sock.close()
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                raise
        except (UpgradeError, OSError) as exc:
            log.error("upgrade socket %s: %s: hot upgrade unavailable", self.path, exc)
            return
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.listener = sock
        log.info("upgrade socket: %s", self.path)

    def waitables(self) -> list[socket.socket]:
        found = [] if self.listener is None else [self.listener]
        if self._pending is not None:
            found.append(self._pending[0].sock)
        return found

    def handle(self, sock: socket.socket) -> None:
        if sock is self.listener:
            try:
                conn, _ = sock.accept()
            except OSError as exc:  # out of descriptors: the next select tries again
                log.warning("upgrade socket %s: accept: %s", self.path, exc.strerror or exc)
                return
            self._start(BlockingLink(conn, self.path))
        elif self._pending is not None and sock is self._pending[0].sock:
            link, pid, _ = self._pending
            try:
                message = link.poll()
                if message is None:
                    return
                if message.get("op") != "ready":
                    raise UpgradeError(f"expected ready, got {message.get('op')!r}")
            except (UpgradeError, OSError) as exc:
                self._fail(pid, exc)
                return
            self._pending = None
            self.handed = Handed(pid=pid, names=[name for name, _ in self.sockets()])
            try:
                link.send({"op": "bye", "pid": os.getpid()})
            except (UpgradeError, OSError):
                pass
            link.close()

    def expire(self) -> None:
        if self._pending is not None and time.monotonic() > self._pending[2]:
            self._fail(self._pending[1], UpgradeError(f"not ready within {READY_TIMEOUT:g}s"))

    def _fail(self, pid: int, exc: Exception) -> None:
        log.error(
            "upgrade by pid %d failed before ready (%s): %s; still serving", pid, self.path, exc
        )
        if self._pending is not None:
            self._pending[0].close()
        self._pending = None

    def _start(self, link: BlockingLink) -> None:
        try:
            pid, uid = peer_credentials(link.sock)  # type: ignore[arg-type]
            if not peer_allowed(uid, os.getuid()):
                log.warning("upgrade socket %s: refused pid %d (uid %d)", self.path, pid, uid)
                link.send({"error": f"uid {uid} may not take these sockets"})
                link.close()
                return
            if self.closed:
                link.send({"error": "this process is stopping"})
                link.close()
                return
            if self._pending is not None or self.handed is not None:
                link.send({"error": "an upgrade is under way"})
                link.close()
                return
            hello = link.receive(HELLO_TIMEOUT)
            if hello.get("op") != "hello":
                raise UpgradeError(f"expected hello, got {hello.get('op')!r}")
            handed = [(name, s) for name, s in self.sockets() if s.fileno() != -1]
            # Pending before the sockets go: a SIGTERM handled from here on keeps them.
            self._pending = (link, pid, time.monotonic() + READY_TIMEOUT)
            link.send(
                {"op": "sockets", "listeners": listener_entries(handed)},
                [s.fileno() for _, s in handed],
            )
            if hello.get("config") is True:
                link.send({"op": "config", "document": self.document()})
        except (UpgradeError, OSError) as exc:
            log.error("upgrade socket %s: %s; still serving", self.path, exc)
            self._pending = None
            link.close()
            return
        log.info(
            "upgrade: handed %d socket(s) to pid %d; waiting for it to be ready", len(handed), pid
        )

    def close(self) -> None:
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass


def bind_listener(name: str, address: Address) -> socket.socket:
    """A listening socket the supervisor holds for its workers (they inherit it by fork)."""
    from ..network.listener import BACKLOG

    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise StartupError(
            f"listener {name!r} cannot listen on {address}: {exc.strerror or exc}"
        ) from None
    return sock
