"""The address this host is reached at, written into the registry's provider URLs."""

from __future__ import annotations

import ipaddress
import socket

# TEST-NET-1 (RFC 5737): never routed anywhere, so nothing could answer even if a datagram
# left; connecting a UDP socket sends nothing, it only asks the kernel for a route.
_PROBE = ("192.0.2.1", 9)
FALLBACK_IP = "127.0.0.1"


def primary_ip() -> str:
    """The host's first non-loopback IPv4 address, as MOSN's ``trace.GetIp`` gives it: the
    source address of the default route, or ``127.0.0.1`` without one. No DNS is asked, and
    nothing blocks (a route lookup in the kernel)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(_PROBE)
            host = s.getsockname()[0]
    except OSError:  # no IPv4 route at all (a network namespace with lo only)
        return FALLBACK_IP
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return FALLBACK_IP
    if ip.is_loopback or ip.is_unspecified:
        return FALLBACK_IP
    return str(ip)
