"""The ``tracing`` block checked and turned into the settings the tracer is built from.

MOSN writes ``tracing: {enable, driver, config}`` (``tracer``: the old name of ``driver``).
The driver here is OpenTelemetry (``opentelemetry``, ``otel``; any case): spans go to an
OTLP/HTTP collector. MOSN's other drivers (``SOFATracer``, ``SkyWalking``, ``jaeger``,
``zipkin``...) load with a warning and tracing off: tracing changes neither security nor
access. An unknown key in ``config`` or a bad value is an error naming its path.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

from .duration import parse_duration
from .errors import at
from .model import MeshConfig
from .observability import TracingConfig

OTEL_DRIVERS = frozenset({"opentelemetry", "otel"})
DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/traces"


@frozen(kw_only=True)
class TracingSettings:
    """What the tracer and its exporter run with (``tracing.config``, checked)."""

    endpoint: str = DEFAULT_ENDPOINT
    service_name: str = "trio-mesh"
    #: Percent of requests without a sampling decision that start a sampled trace.
    random_sampling: float = 100.0
    max_queue_size: int = 4096
    max_export_batch_size: int = 1024
    schedule_delay: float = 5.0
    export_timeout: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()


_DEFAULTS = TracingSettings()
_KEYS = (
    "endpoint",
    "service_name",
    "random_sampling",
    "max_queue_size",
    "max_export_batch_size",
    "schedule_delay",
    "export_timeout",
    "headers",
)


def _driver(tracing: TracingConfig) -> str:
    return tracing.driver or tracing.tracer


def _is_otel(tracing: TracingConfig) -> bool:
    return _driver(tracing).lower() in OTEL_DRIVERS


def check_tracing(config: MeshConfig) -> list[str]:
    """Errors of an enabled ``tracing`` block with the OpenTelemetry driver (or none)."""
    tracing = config.tracing
    if tracing is None or not tracing.enable:
        return []
    if not _driver(tracing):
        return [at("tracing.driver", "expected a driver (opentelemetry) with enable: true")]
    if not _is_otel(tracing):
        return []  # another driver: a warning (tracing_warnings), tracing off
    errors: list[str] = []
    _settings(tracing.config, errors)
    return errors


def tracing_warnings(config: MeshConfig) -> list[str]:
    tracing = config.tracing
    if tracing is None or not tracing.enable or not _driver(tracing) or _is_otel(tracing):
        return []
    key = "tracing.driver" if tracing.driver else "tracing.tracer"
    return [
        at(
            key,
            f"{_driver(tracing)} not supported (opentelemetry is): tracing off",
        )
    ]


def tracing_settings(tracing: TracingConfig | None) -> TracingSettings | None:
    """The settings of an enabled OpenTelemetry ``tracing`` block (checked by
    ``check_tracing``), ``None`` when tracing is off."""
    if tracing is None or not tracing.enable or not _is_otel(tracing):
        return None
    errors: list[str] = []
    settings = _settings(tracing.config, errors)
    if errors:  # the configuration was checked: only a config built in code gets here
        raise ValueError("\n".join(errors))
    return settings


def _settings(raw: dict[str, Any], errors: list[str]) -> TracingSettings:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"tracing.config.{key}"
        if key not in _KEYS:
            errors.append(at(path, f"unknown key (known: {', '.join(_KEYS)})"))
            continue
        try:
            values[key] = _CHECKS[key](value)
        except (TypeError, ValueError) as exc:
            errors.append(at(path, str(exc)))
    if not errors:
        batch = values.get("max_export_batch_size", _DEFAULTS.max_export_batch_size)
        queue = values.get("max_queue_size", _DEFAULTS.max_queue_size)
        if batch > queue:
            errors.append(
                at(
                    "tracing.config.max_export_batch_size",
                    f"{batch} is over max_queue_size ({queue})",
                )
            )
    return TracingSettings(**values) if not errors else _DEFAULTS


def _endpoint(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected an http(s) URL, got {type(value).__name__}")
    # The error shows the URL without its user part: it may hold a collector's credentials.
    shown = repr(re.sub(r"//[^/@]*@", "//[redacted]@", value))
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"expected an http(s) URL, got {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {shown}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"expected a percentage from 0 to 100, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValueError(f"expected a count from 1 to 1000000, got {value!r}")
    return value


def _duration(value: Any) -> float:
    seconds = (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else parse_duration(value)
    )
    if not 0 < seconds <= 3600:
        raise ValueError(f"expected a duration over 0 and at most 1h, got {value!r}")
    return seconds


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and "\n" not in v and "\r" not in v
        for k, v in value.items()
    ):
        raise ValueError("expected a mapping of header names to one-line string values")
    return tuple(value.items())


_CHECKS = {
    "endpoint": _endpoint,
    "service_name": _name,
    "random_sampling": _percent,
    "max_queue_size": _count,
    "max_export_batch_size": _count,
    "schedule_delay": _duration,
    "export_timeout": _duration,
    "headers": _headers,
}
