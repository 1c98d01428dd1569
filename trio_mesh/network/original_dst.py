"""The original destination of a connection an iptables REDIRECT sent to the proxy.

Linux keeps it in the connection tracking entry; ``getsockopt(SOL_IP, SO_ORIGINAL_DST)``
(``SOL_IPV6, IP6T_SO_ORIGINAL_DST`` for IPv6, the same number) returns it as a sockaddr.
A connection that was not redirected answers with its own local address.
"""

from __future__ import annotations

import socket

#: ``SO_ORIGINAL_DST`` (linux/netfilter_ipv4.h) and ``IP6T_SO_ORIGINAL_DST``: both 80.
SO_ORIGINAL_DST = 80
_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28

Address = tuple[str, int]


def parse_sockaddr(raw: bytes) -> Address | None:
    """``(host, port)`` from a ``sockaddr_in`` or ``sockaddr_in6``; ``None`` for anything
    else (too short, another family). The family is in host byte order, the port in
    network order."""
    if len(raw) < 4:
        return None
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


def read_original_dst(sock: socket.socket) -> Address | None:
    """The connection's original destination, or ``None`` where the kernel has none
    (no netfilter, not a TCP socket)."""
    if sock.family == socket.AF_INET6:
        level, size = _SOL_IPV6, _SOCKADDR_IN6
    else:
        level, size = _SOL_IP, _SOCKADDR_IN
    try:
        raw = sock.getsockopt(level, SO_ORIGINAL_DST, size)
    except OSError:
        return None
    return parse_sockaddr(raw)


def is_loop(dst: Address, local: Address | None, listener: Address) -> bool:
    """Whether forwarding to ``dst`` would come back to this listener: the connection was
    not redirected (``dst`` is its own local address), or ``dst`` is the listener's port on
    its address (any address for a wildcard listener)."""
    if local is not None and dst == (local[0], local[1]):
        return True
    host, port = listener
    return dst[1] == port and host in (dst[0], "0.0.0.0", "::", "")
