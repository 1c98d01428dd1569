"""Validation of MOSN's ``metrics`` block: its sinks (``prometheus`` is served) and the keys
that load but are not enforced."""

from __future__ import annotations

from typing import Any

from .admin_check import is_loopback
from .block import structure_block
from .errors import at
from .model import MeshConfig
from .normalize import Report
from .observability import MetricsConfig, PrometheusSinkConfig

#: ``metrics`` keys of MOSN's that change nothing here yet (they warn when set).
_UNENFORCED = ("stats_matcher", "shm_zone", "shm_size", "flush_mosn", "lazy_flush", "sample")


def structure_sink(raw: Any, path: str) -> tuple[PrometheusSinkConfig | None, Report]:
    """A prometheus sink's ``config`` mapping as ``PrometheusSinkConfig``, with its errors and
    warnings at ``path`` (``metrics.sinks[0].config``)."""
    sink, report = structure_block(raw, PrometheusSinkConfig, path)
    if sink is None:
        return None, report
    report.errors += _check_sink(sink, path)
    return sink, report


def _check_sink(sink: PrometheusSinkConfig, path: str) -> list[str]:
    errors = []
    if not 0 <= sink.port <= 65535:
        errors.append(at(f"{path}.port", f"expected a port number (0-65535), got {sink.port}"))
    if not sink.endpoint.startswith("/") or any(c in sink.endpoint for c in "?# \t\r\n"):
        errors.append(
            at(f"{path}.endpoint", f"expected a path such as /metrics, got {sink.endpoint!r}")
        )
    if not sink.allow_non_loopback and not is_loopback(sink.address):
        errors.append(
            at(
                f"{path}.address",
                f"{sink.address} is not a loopback address; the metrics show the proxy's"
                " clusters and traffic: set allow_non_loopback: true to serve them there",
            )
        )
    return errors


def prometheus_sinks(config: MeshConfig) -> list[PrometheusSinkConfig]:
    """The prometheus sinks of a validated configuration, structured."""
    out = []
    for i, s in enumerate(_sinks(config.metrics)):
        if s.type == "prometheus":
            sink, _ = structure_sink(s.config, f"metrics.sinks[{i}].config")
            if sink is not None:
                out.append(sink)
    return out


def check_metrics(config: MeshConfig) -> list[str]:
    errors: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for i, s in enumerate(_sinks(config.metrics)):
        if s.type != "prometheus":
            continue
        path = f"metrics.sinks[{i}].config"
        sink, report = structure_sink(s.config, path)
        errors += report.errors
        if sink is None or sink.port == 0:
            continue
        key = (sink.address, sink.port)
        if key in seen:
            errors.append(at(f"{path}.port", f"the same address and port as {seen[key]}"))
        seen.setdefault(key, path)
    return errors


def metrics_warnings(config: MeshConfig) -> list[str]:
    metrics = config.metrics
    if metrics is None:
        return []
    warnings = [
        at(f"metrics.{key}", "not enforced: ignored")
        for key in _UNENFORCED
        if getattr(metrics, key) not in (None, "", False, {})
    ]
    for i, s in enumerate(metrics.sinks):
        path = f"metrics.sinks[{i}]"
        if s.type != "prometheus":
            warnings.append(at(f"{path}.type", f"{s.type!r}: only prometheus sinks are served"))
            continue
        sink, report = structure_sink(s.config, f"{path}.config")
        warnings += report.warnings
        if sink is None:
            continue
        if sink.percentiles:
            warnings.append(
                at(
                    f"{path}.config.percentiles",
                    "not enforced: latencies are exported as histograms (Envoy's buckets),"
                    " not as summaries with percentiles",
                )
            )
        if sink.disable_passive_flush:
            warnings.append(at(f"{path}.config.disable_passive_flush", "not enforced: ignored"))
    return warnings


def _sinks(metrics: MetricsConfig | None) -> tuple[Any, ...]:
    return () if metrics is None else metrics.sinks
