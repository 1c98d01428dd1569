"""Validation of the ``admin`` block: an admin API off loopback must be asked for."""

from __future__ import annotations

import ipaddress

from .model import MeshConfig


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``). ``0.0.0.0``/``::`` and
    every other name or address are not: they can be reached from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin(config: MeshConfig) -> list[str]:
    admin = config.admin
    if admin is None or admin.allow_non_loopback or is_loopback(admin.address.host):
        return []
    return [
        f"admin.address: {admin.address} is not a loopback address; the admin API changes the"
        " proxy's state (health, draining, log levels) and shows its configuration: set"
        " admin.allow_non_loopback: true to serve it there"
    ]
