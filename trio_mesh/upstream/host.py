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
        "cx_active",
        "cx_connect_fail",
        "cx_total",
        "ejected",
        "failed_active_hc",
        "host",
        "hostname",
        "label",
        "label_bytes",
        "metadata",
        "od_5xx",
        "od_ejected_at",
        "od_ejections",
        "od_gateway",
        "od_local",
        "od_unejected_at",
        "port",
        "protocol",
        "rq_total",
        "tls_disable",
        "usable",
        "weight",
    )

    def __init__(
        self,
        address: Address,
        weight: int = 1,
        metadata: dict[str, Any] | None = None,
        *,
        hostname: str | None = None,
        tls_disable: bool = False,
    ):
        self.address = address
        self.host = address.host
        self.port = address.port
        # "host:port" for logs and Host rewriting, made once here rather than per request.
        self.label = str(address)
        self.label_bytes = self.label.encode("latin-1")
        self.weight = weight
        self.metadata = metadata or {}
        self.active_requests = 0
        # Envoy's per-host counters (the admin's /clusters): plain increments.
        self.rq_total = 0
        self.cx_total = 0
        #: Open connections to this host (what LB_LEAST_CONNECTION compares).
        self.cx_active = 0
        self.cx_connect_fail = 0
        #: The name TLS sends as SNI and verifies when the cluster names none.
        self.hostname = hostname
        #: Cleartext to this host although its cluster has TLS.
        self.tls_disable = tls_disable
        #: ``upstream_protocol: Auto`` over TLS: what this host's ALPN answer was ("h2" or
        #: "http/1.1"), learned by the first connection; ``None`` until then.
        self.protocol: str | None = None
        #: The active health checker found it down (upstream/health.py).
        self.failed_active_hc = False
        #: Outlier detection ejected it.
        self.ejected = False
        #: Neither: the balancers offer it (outside panic). Kept by ``set_health`` so that
        #: rebuilding a balancer reads one attribute.
        self.usable = True
        # Outlier detection (upstream/outlier.py): consecutive failures by kind, the
        # ejection multiplier, when the last ejection began and ended (trio clock).
        self.od_5xx = 0
        self.od_gateway = 0
        self.od_local = 0
        self.od_ejections = 0
        self.od_ejected_at = 0.0
        self.od_unejected_at = 0.0

    def set_health(
        self, *, failed_active_hc: bool | None = None, ejected: bool | None = None
    ) -> bool:
        """Update the health flags given; returns whether ``usable`` changed (the caller then
        calls its cluster's ``host_health_changed``)."""
        if failed_active_hc is not None:
            self.failed_active_hc = failed_active_hc
        if ejected is not None:
            self.ejected = ejected
        usable = not self.failed_active_hc and not self.ejected
        changed = usable != self.usable
        self.usable = usable
        return changed

    def health_flags(self) -> str:
        """Envoy's ``/clusters`` form: ``healthy``, or the failures joined by ``/``, each
        with a leading ``/`` (``/failed_active_hc/failed_outlier_check``)."""
        if self.usable:
            return "healthy"
        flags = ""
        if self.failed_active_hc:
            flags += "/failed_active_hc"
        if self.ejected:
            flags += "/failed_outlier_check"
        return flags

    @classmethod
    def from_config(cls, cfg: HostConfig) -> Host:
        return cls(
            cfg.address,
            cfg.weight,
            cfg.metadata,
            hostname=cfg.hostname,
            tls_disable=cfg.tls_disable,
        )

    def same_transport(self, cfg: HostConfig) -> bool:
        """Whether ``cfg`` connects as this host does (a host whose TLS use or name changed
        is a new host: its pooled connections are not reused)."""
        return self.tls_disable == cfg.tls_disable and self.hostname == cfg.hostname

    def __repr__(self) -> str:
        return f"Host({self.address}, weight={self.weight})"
