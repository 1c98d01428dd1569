"""An upstream host as the balancers and pools see it."""

from __future__ import annotations

from typing import Any

from ..config import Address
from ..config import Host as HostConfig


class Host:
    """One endpoint of a cluster. ``active_requests`` is what least-request balances on."""

    __slots__ = (
        "active_requests",
        "address",
        "host",
        "label",
        "label_bytes",
        "metadata",
        "port",
        "weight",
    )

    def __init__(self, address: Address, weight: int = 1, metadata: dict[str, Any] | None = None):
        self.address = address
        self.host = address.host
        self.port = address.port
        # "host:port" for logs and Host rewriting, made once here rather than per request.
        self.label = str(address)
        self.label_bytes = self.label.encode("latin-1")
        self.weight = weight
        self.metadata = metadata or {}
        self.active_requests = 0

    @classmethod
    def from_config(cls, cfg: HostConfig) -> Host:
        return cls(cfg.address, cfg.weight, cfg.metadata)

    def __repr__(self) -> str:
        return f"Host({self.address}, weight={self.weight})"
