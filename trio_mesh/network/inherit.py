"""Listening sockets this process did not bind itself: systemd's socket activation
(``LISTEN_FDS``, ``trio_mesh.systemd.listen_fds``) or the old process of a hot upgrade
(``trio_mesh.upgrade``).

A listener takes the socket that matches it (by name, then by address) instead of binding;
what nobody takes is closed with a warning once the server has started. No Trio here: the
workers' supervisor uses it too."""

from __future__ import annotations

import ipaddress
import logging
import socket
import weakref
from collections.abc import Iterable

import attrs

from ..config import Address
from ..config.scalars import format_hostport
from ..errors import StartupError

log = logging.getLogger("trio_mesh.inherit")

_INET = (socket.AF_INET, socket.AF_INET6)


#: Sockets a process outside ours holds too: systemd keeps its LISTEN_FDS sockets for the
#: next start. A drain closes our descriptor but never shuts one down (that would stop the
#: port for systemd's copy: nothing accepted after a restart). Per process: a fork copies
#: the mark, a hot upgrade hands it over with the socket.
_SHARED: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def mark_shared(sock: socket.socket) -> None:
    _SHARED.add(sock)


def is_shared(sock: socket.socket) -> bool:
    """A socket systemd passed (to us, or to the process we took it over from)."""
    return sock in _SHARED


def address_key(host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` compared as addresses, as ``getsockname()`` gives them: an IP literal
    in one spelling (``::1`` and ``[0:0::1]`` are one; a scope ``%eth0`` is dropped; an
    IPv4-mapped IPv6 address is its IPv4 form); a name stays as written (it matches only the
    same name, never what it resolves to)."""
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return host, port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed, port


def sockname(sock: socket.socket) -> tuple[str, int]:
    """A bound IP socket's local address as an ``address_key``."""
    name = sock.getsockname()
    return address_key(name[0], name[1])


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
                    key = sockname(sock)
                except OSError:
                    continue
                inherited.by_address.setdefault(key, sock)
        return inherited

    def merge(self, other: InheritedSockets) -> None:
        """Add ``other``'s sockets (a hot upgrade's, to systemd's): ours win a name or an
        address both have; one of ``other``'s left in neither map is closed (a copy of a
        port we hold already)."""
        for sock in other.leftovers():
            names = [n for n, s in other.by_name.items() if s is sock]
            keys = [k for k, s in other.by_address.items() if s is sock]
            kept = False
            for n in names:
                kept = self.by_name.setdefault(n, sock) is sock or kept
            for k in keys:
                kept = self.by_address.setdefault(k, sock) is sock or kept
            if not kept:
                sock.close()
        other.by_name.clear()
        other.by_address.clear()

    def take(self, name: str, address: Address) -> socket.socket | None:
        """The socket for listener ``name`` on ``address`` (removed from both maps, made
        non-blocking), or ``None`` (bind one). A configured port 0 never matches by address;
        a wildcard host (``0.0.0.0``, ``::``) matches only itself. ``StartupError`` (naming
        the listener) if the matching socket is not a listening TCP socket."""
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
            stream = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
            kind = f"{socket.AddressFamily(sock.family).name}/" + (
                "SOCK_STREAM" if stream else socket.SocketKind(sock.type).name
            )
        except (OSError, ValueError) as exc:
            sock.close()
            raise StartupError(
                f"listener {name!r}: the socket handed over for it is unusable: {exc}"
            ) from None
        if sock.family not in _INET or not stream or not listening:
            sock.close()
            raise StartupError(
                f"listener {name!r}: the socket handed over for it is not a listening TCP "
                f"socket ({kind}{'' if listening else ', not listening'})"
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
        """``'name' (host:port)``, or the address alone for an unnamed socket."""
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
