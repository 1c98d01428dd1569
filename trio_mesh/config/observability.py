"""Observability configuration: the admin API, metrics sinks, tracing (MOSN's top-level keys).

- ``admin``: Envoy's shape, as MOSN writes it: ``{address: {socket_address: {address,
  port_value}}}`` (or ``"host:port"``). Off unless configured. A non-loopback address is a
  config error unless ``allow_non_loopback: true`` (the admin API changes the proxy's state:
  log levels, health, draining).
- ``metrics``: MOSN's ``MetricsConfig``; ``sinks: [{type: prometheus, config: {port,
  endpoint, percentiles}}]`` serves the Prometheus exposition on its own port.
- ``tracing``: MOSN's ``TracingConfig``: ``{enable, driver, config}``; the driver here is
  ``opentelemetry`` (OTLP/HTTP).
"""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import field, frozen

from .scalars import Address


@frozen(kw_only=True)
class AdminConfig:
    """MOSN and Envoy write ``{"address": {"socket_address": {"address", "port_value"}}}``;
    a plain ``"host:port"`` string is accepted too."""

    address: Address
    #: Required to serve the admin API on an address other than loopback.
    allow_non_loopback: bool = False

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset({"access_log_path", "profile_path"})


@frozen(kw_only=True)
class PrometheusSinkConfig:
    """MOSN's prometheus sink ``config``. MOSN listens on every interface; here ``address``
    (default loopback) says where, and a non-loopback one needs ``allow_non_loopback``."""

    port: int = 34903
    endpoint: str = "/metrics"
    address: str = "127.0.0.1"
    allow_non_loopback: bool = False
    #: MOSN's summary percentiles; the exposition here has histograms (Envoy's buckets).
    percentiles: tuple[int, ...] = ()
    disable_collect_go: bool = False
    disable_collect_process: bool = False
    disable_passive_flush: bool = False


@frozen(kw_only=True)
class MetricsSink:
    type: str
    config: dict[str, Any] = field(factory=dict)


@frozen(kw_only=True)
class MetricsConfig:
    """MOSN's ``metrics`` block."""

    sinks: tuple[MetricsSink, ...] = ()
    stats_matcher: dict[str, Any] = field(factory=dict)
    shm_zone: str = ""
    shm_size: Any = None
    flush_mosn: bool = False
    lazy_flush: bool = False
    sample: dict[str, Any] = field(factory=dict)


@frozen(kw_only=True)
class TracingConfig:
    """MOSN's ``tracing`` block. ``driver: opentelemetry``; its ``config``:

    - ``endpoint``: the OTLP/HTTP traces URL (``http://127.0.0.1:4318/v1/traces``);
    - ``service_name`` (``trio-mesh``), ``random_sampling`` (percent, 0-100, default 100);
    - ``max_queue_size`` (4096 spans; over it spans are dropped and counted),
      ``max_export_batch_size`` (1024, as Envoy's ``max_cache_size``), ``schedule_delay``
      (a duration, ``5s``), ``export_timeout`` (``10s``), ``headers`` (extra HTTP headers to
      the collector).
    """

    enable: bool = False
    driver: str = ""
    tracer: str = ""  # MOSN's deprecated name of ``driver``
    config: dict[str, Any] = field(factory=dict)


__all__ = [
    "AdminConfig",
    "MetricsConfig",
    "MetricsSink",
    "PrometheusSinkConfig",
    "TracingConfig",
]
