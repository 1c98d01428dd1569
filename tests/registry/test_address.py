"""The host's primary address, the default ``advertise_ip`` of published providers."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from trio_mesh.registry import address
from trio_mesh.registry.address import primary_ip


def test_primary_ip_is_a_local_ipv4_address() -> None:
    ip = primary_ip()
    parsed = ipaddress.IPv4Address(ip)
    if ip != "127.0.0.1":
        assert not parsed.is_loopback
    # it is this host's: a socket can be bound to it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))


def test_primary_ip_without_a_route_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoRoute(socket.socket):
        def connect(self, addr: object) -> None:
            raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(address.socket, "socket", NoRoute)
    assert primary_ip() == "127.0.0.1"


def test_primary_ip_never_answers_a_loopback_source(monkeypatch: pytest.MonkeyPatch) -> None:
    class LoopbackRoute(socket.socket):
        def connect(self, addr: object) -> None:
            super().connect(("127.0.0.2", 9))

    monkeypatch.setattr(address.socket, "socket", LoopbackRoute)
    assert primary_ip() == "127.0.0.1"
