"""Scalar value types of the configuration and their parsers (each raises ``ValueError``)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from .duration import parse_duration
from .logformat import validate_log_format
from .scalars import MAX_HOST_WEIGHT, MIN_HOST_WEIGHT, Address

_LOG_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
}


def parse_int(value: Any) -> int:
    # JSON and YAML both give real ints; a string or a float here is a mistake in the file.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def parse_positive_int(value: Any) -> int:
    n = parse_int(value)
    if n < 1:
        raise ValueError(f"expected an integer of at least 1, got {n}")
    return n


def parse_non_negative_int(value: Any) -> int:
    n = parse_int(value)
    if n < 0:
        raise ValueError(f"expected an integer of at least 0, got {n}")
    return n


def parse_weight(value: Any) -> int:
    n = parse_int(value)
    if not MIN_HOST_WEIGHT <= n <= MAX_HOST_WEIGHT:
        raise ValueError(f"expected a weight from {MIN_HOST_WEIGHT} to {MAX_HOST_WEIGHT}, got {n}")
    return n


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def log_level_number(name: str) -> int:
    """The ``logging`` level of a validated level name."""
    return _LOG_LEVELS[name.upper()]


def parse_log_level(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return value.upper()


def parse_address(value: Any) -> Address:
    """``host:port`` or ``[v6]:port``; Envoy's ``{socket_address: {address, port_value}}`` too."""
    if isinstance(value, dict) and isinstance(value.get("socket_address"), dict):
        sa = value["socket_address"]
        host, port = sa.get("address"), sa.get("port_value", 0)
        if isinstance(port, str) and port.isascii() and port.isdigit():
            port = int(port)  # proto3 JSON writes 32-bit integers as numbers or strings
        if (
            not isinstance(host, str)
            or not host
            or isinstance(port, bool)
            or not isinstance(port, int)
        ):
            raise ValueError(f"expected socket_address with address and port_value, got {value!r}")
        return _checked(host, port, value)
    if not isinstance(value, str):
        raise ValueError(f"expected host:port, got {value!r}")
    if value.startswith(("unix:", "/", "@")):
        raise ValueError(
            f"unix domain socket addresses are not supported, got {value!r}: use host:port"
        )
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if sep and ":" not in host:
            raise ValueError(f"brackets are for IPv6 hosts only, got {value!r}")
    else:
        host, sep, port_text = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"expected host:port with an IPv6 host in brackets, got {value!r}")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"expected host:port, got {value!r}")
    return _checked(host, int(port_text), value)


def _checked(host: str, port: int, original: Any) -> Address:
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range 0-65535 in {original!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {original!r}") from None
    return Address(host=host, port=port)


def parse_duration_value(value: Any) -> float:
    return parse_duration(value)


def parse_log_format(value: Any) -> str:
    text = parse_str(value)
    validate_log_format(text)
    return text
