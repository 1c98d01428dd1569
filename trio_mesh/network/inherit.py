"""Listening sockets this process did not bind itself: handed over by the old process of a hot
upgrade (``trio_mesh.upgrade``) or by systemd (socket activation), taken by the listeners
they match. No Trio here: the workers' supervisor uses it too."""

from __future__ import annotations

import ipaddress
import logging
import socket

import attrs

from ..config import Address
from ..errors import StartupError

log = logging.getLogger("trio_mesh.inherit")


def normalise(host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` as ``getsockname()`` gives it for a bound address: IPv6 compressed, an
    IPv4-mapped IPv6 address as its IPv4 form; a name (``localhost``) stays as written."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host, port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), port
    return str(ip), port


def sockname(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return normalise(name[0], name[1])


def is_listening(sock: socket.socket) -> bool:
    """Still a listening socket (not closed, nor shut down by a drain)."""
    try:
        return sock.fileno() != -1 and bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        return False


@attrs.define
class InheritedSockets:
    """Listening sockets handed to this process (systemd's LISTEN_FDS, or the old process of
    a hot upgrade), taken by the listeners they match; the rest are closed (or given back)."""

    by_name: dict[str, socket.socket] = attrs.field(factory=dict)
    by_address: dict[tuple[str, int], socket.socket] = attrs.field(factory=dict)

    def take(self, name: str, address: Address) -> socket.socket | None:
        """The socket for listener ``name`` on ``address``, or ``None`` (bind one): by name
        first, then by address (a configured port 0 never matches by address; 0.0.0.0 and
        :: match only themselves). It leaves both maps, becomes non-blocking, and must be a
        listening stream socket."""
        sock = self.by_name.get(name)
        if sock is None and address.port != 0:
            sock = self.by_address.get(normalise(address.host, address.port))
        if sock is None:
            return None
        self._forget(sock)
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            stream = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"listener {name!r}: the inherited socket is unusable: {exc}"
            ) from None
        if not (listening and stream):
            sock.close()
            raise StartupError(
                f"listener {name!r}: the inherited socket is not a listening stream socket"
            )
        sock.setblocking(False)
        return sock

    def _forget(self, sock: socket.socket) -> None:
        for table in (self.by_name, self.by_address):
            for key in [k for k, s in table.items() if s is sock]:
                del table[key]  # type: ignore[arg-type]

    def leftovers(self) -> list[socket.socket]:
        """The sockets nobody took (each once)."""
        seen: dict[int, socket.socket] = {}
        for sock in [*self.by_name.values(), *self.by_address.values()]:
            seen.setdefault(id(sock), sock)
        return list(seen.values())

    def close_leftovers(self) -> None:
        for sock in self.leftovers():
            try:
                where = "{}:{}".format(*sockname(sock))
            except OSError:
                where = "?"
            log.info("inherited socket %s: no listener takes it, closed", where)
            sock.close()
        self.by_name.clear()
        self.by_address.clear()
