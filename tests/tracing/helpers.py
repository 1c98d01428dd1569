"""Configs with tracing on, for the tracing tests."""

from __future__ import annotations

from typing import Any

import attrs

from trio_mesh.config import MeshConfig
from trio_mesh.config.observability import TracingConfig

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def traced(config: MeshConfig, endpoint: str, **settings: Any) -> MeshConfig:
    """``config`` with the OpenTelemetry driver exporting to ``endpoint`` (a short delay)."""
    return attrs.evolve(
        config,
        tracing=TracingConfig(
            enable=True,
            driver="opentelemetry",
            config={"endpoint": endpoint, "schedule_delay": "50ms", **settings},
        ),
    )


def traceparent(header: str) -> tuple[str, str, str, str]:
    version, trace, span, flags = header.split("-")
    return version, trace, span, flags
