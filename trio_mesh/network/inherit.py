"""Listening sockets this process did not bind itself: systemd's socket activation
(``LISTEN_FDS``, ``trio_mesh.systemd.listen_fds``) or the old process of a hot upgrade.

A listener takes the socket that matches it (by name, then by address) instead of binding;
what nobody takes is closed with a warning once the server has started."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

import attrs

from ..config import Address
from ..config.scalars import format_hostport
from ..errors import StartupError

log = logging.getLogger("trio_mesh.inherit")

_INET = (socket.AF_INET, socket.AF_INET6)


def address_key(host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` compared as addresses: an IP literal in one spelling (``::1`` and
    ``0:0::1`` are one; a scope ``%eth0`` is dropped); a name stays as written (it matches
    only the same name, never what it resolves to)."""
    try:
        host = ipaddress.ip_address(host.split("%", 1)[0]).compressed
    except ValueError:
        pass
    return host, port


@attrs.define
class InheritedSockets:
    """Listening sockets handed to this process (systemd's LISTEN_FDS, or the old process of
    a hot upgrade), taken by the listeners they match; the rest are closed (or given back)."""

    #: LISTEN_FDNAMES / the old listener's name.
    by_name: dict[str, socket.socket] = attrs.Factory(dict)
    #: getsockname() ``(host, port)``, normalised (``address_key``).
    by_address: dict[tuple[str, int], socket.socket] = attrs.Factory(dict)
    #: The names of every listener about to take: a socket named for one of them is never
    #: taken by another listener's address (the order of the listeners must not matter).
    reserved: set[str] = attrs.Factory(set)

    @classmethod
    def of(cls, sockets: Iterable[tuple[str | None, socket.socket]]) -> InheritedSockets:
        """Index ``(name or None, socket)`` pairs: by name when named, and by address when
        it is an IP socket (a socket can be taken either way, once)."""
        inherited = cls()
        for name, sock in sockets:
            if name:
                inherited.by_name.setdefault(name, sock)
            if sock.family in _INET:
                try:
                    host, port = sock.getsockname()[:2]
                except OSError:
                    continue
                inherited.by_address.setdefault(address_key(host, port), sock)
        return inherited

    def take(self, name: str, address: Address) -> socket.socket | None:
        """The socket for listener ``name`` on ``address`` (removed from both maps, made
        non-blocking), or ``None``. A configured port 0 never matches by address; a wildcard
        host (``0.0.0.0``, ``::``) matches only itself. ``StartupError`` (naming the
        listener) if the matching socket is not a listening TCP socket."""
        sock = self.by_name.get(name)
        if sock is None and address.port != 0:
            sock = self.by_address.get(address_key(address.host, address.port))
            if sock is not None and any(
                s is sock and n in self.reserved for n, s in self.by_name.items()
            ):
                return None  # named for another listener: that one takes it
        if sock is None:
            return None
        self._forget(sock)
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        if sock.family not in _INET or sock.type != socket.SOCK_STREAM or not listening:
            kind = f"{sock.family.name}/{sock.type.name}" + ("" if listening else ", not listening")
            sock.close()
            raise StartupError(
                f"listener {name!r}: the socket handed over for it is not a listening TCP "
                f"socket ({kind})"
            )
        sock.setblocking(False)
        return sock

    def leftovers(self) -> list[socket.socket]:
        """Every socket nobody took, once each."""
        seen: dict[int, socket.socket] = {}
        for sock in [*self.by_name.values(), *self.by_address.values()]:
            seen.setdefault(id(sock), sock)
        return list(seen.values())

    def close_leftovers(self) -> None:
        """Close what nobody took, each with a warning naming it (its name and address)."""
        for sock in self.leftovers():
            log.warning("inherited socket %s matches no listener: closed", self.describe(sock))
            sock.close()
        self.by_name.clear()
        self.by_address.clear()

    def describe(self, sock: socket.socket) -> str:
        names = [n for n, s in self.by_name.items() if s is sock]
        try:
            local = sock.getsockname()
        except OSError:
            local = None
        if isinstance(local, tuple):
            where = format_hostport(local[0], local[1])
        else:
            where = repr(local) if local else f"fd {sock.fileno()}"
        return f"{names[0]!r} ({where})" if names else where

    def _forget(self, sock: socket.socket) -> None:
        for name in [n for n, s in self.by_name.items() if s is sock]:
            del self.by_name[name]
        for key in [k for k, s in self.by_address.items() if s is sock]:
            del self.by_address[key]
