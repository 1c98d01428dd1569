"""The configuration's scalar types (NewTypes the converter parses, host:port addresses) and the
field helpers that mark references; every config module builds on these, so they import nothing
from the package."""

from __future__ import annotations

from typing import Any, NewType

import attrs
from attrs import frozen

#: Seconds, written in configuration files as ``"3s"``, ``"250ms"``, ``"1m"``.
Duration = NewType("Duration", float)
#: A host weight, 1-128 as in MOSN.
Weight = NewType("Weight", int)
#: An integer of at least 1.
PositiveInt = NewType("PositiveInt", int)
#: An integer of at least 0.
NonNegativeInt = NewType("NonNegativeInt", int)
#: A log level name as MOSN writes it (``WARN``, ``TRACE``...) or as Python does.
LogLevel = NewType("LogLevel", str)
#: An access log format: ``%variable%`` text or ``json`` (see ``config.logformat``).
LogFormat = NewType("LogFormat", str)


def cluster_ref() -> Any:
    """A field naming a cluster; load fails if no cluster has that name."""
    return attrs.field(metadata={"refers_to": "cluster"})


def router_ref() -> Any:
    """A field naming a router config (``servers[].routers[].router_config_name``)."""
    return attrs.field(metadata={"refers_to": "router"})


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@frozen
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


MIN_HOST_WEIGHT = 1
MAX_HOST_WEIGHT = 128
