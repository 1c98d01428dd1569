"""The ``tracing`` block: drivers, keys, values, each error naming its path."""

from __future__ import annotations

from typing import Any

import pytest

from tests.config.test_config import minimal_doc
from trio_mesh.config import ConfigError
from trio_mesh.config.load import parse_config
from trio_mesh.config.tracing import TracingSettings, tracing_settings


def with_tracing(tracing: dict[str, Any]) -> dict[str, Any]:
    doc = minimal_doc()
    doc["tracing"] = tracing
    return doc


def errors_of(tracing: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(with_tracing(tracing))
    return info.value.errors


@pytest.mark.parametrize("driver", ["opentelemetry", "otel", "OpenTelemetry"])
def test_otel_driver_and_its_settings(driver: str) -> None:
    loaded = parse_config(
        with_tracing(
            {
                "enable": True,
                "driver": driver,
                "config": {
                    "endpoint": "https://collector:4318/v1/traces",
                    "service_name": "edge",
                    "random_sampling": 12.5,
                    "max_queue_size": 100,
                    "max_export_batch_size": 10,
                    "schedule_delay": "250ms",
                    "export_timeout": "2s",
                    "headers": {"authorization": "Bearer x"},
                },
            }
        )
    )
    assert loaded.warnings == ()
    assert tracing_settings(loaded.config.tracing) == TracingSettings(
        endpoint="https://collector:4318/v1/traces",
        service_name="edge",
        random_sampling=12.5,
        max_queue_size=100,
        max_export_batch_size=10,
        schedule_delay=0.25,
        export_timeout=2.0,
        headers=(("authorization", "Bearer x"),),
    )


def test_mosn_tracer_key_and_defaults() -> None:
    loaded = parse_config(with_tracing({"enable": True, "tracer": "otel"}))
    assert tracing_settings(loaded.config.tracing) == TracingSettings()


def test_disabled_or_absent_is_off() -> None:
    assert tracing_settings(parse_config(minimal_doc()).config.tracing) is None
    loaded = parse_config(with_tracing({"enable": False, "driver": "otel"}))
    assert tracing_settings(loaded.config.tracing) is None


@pytest.mark.parametrize("driver", ["SOFATracer", "SkyWalking", "jaeger", "zipkin"])
def test_other_drivers_warn_and_tracing_is_off(driver: str) -> None:
    loaded = parse_config(
        with_tracing({"enable": True, "driver": driver, "config": {"anything": 1}})
    )
    assert loaded.warnings == (
        f"tracing.driver: {driver} not supported (opentelemetry is): tracing off",
    )
    assert tracing_settings(loaded.config.tracing) is None


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"random_sampling": 101}, "tracing.config.random_sampling: expected a percentage"),
        ({"random_sampling": -1}, "tracing.config.random_sampling: expected a percentage"),
        ({"random_sampling": "50"}, "tracing.config.random_sampling: expected a percentage"),
        ({"endpoint": "ftp://x/v1/traces"}, "tracing.config.endpoint: expected an http(s) URL"),
        ({"endpoint": "http:///v1"}, "tracing.config.endpoint: expected an http(s) URL"),
        ({"endpoint": "http://h:99999/"}, "tracing.config.endpoint: expected an http(s) URL"),
        ({"endpoint": 5}, "tracing.config.endpoint: expected an http(s) URL"),
        ({"max_queue_size": 0}, "tracing.config.max_queue_size: expected a count"),
        ({"max_queue_size": 10}, "tracing.config.max_export_batch_size: 1024 is over"),
        ({"schedule_delay": "0s"}, "tracing.config.schedule_delay: expected a duration"),
        ({"export_timeout": "soon"}, "tracing.config.export_timeout: expected a duration"),
        ({"headers": {"a": "b\r\nc: d"}}, "tracing.config.headers: expected a mapping"),
        ({"service_name": ""}, "tracing.config.service_name: expected a non-empty string"),
        ({"sampler": "always"}, "tracing.config.sampler: unknown key"),
    ],
)
def test_bad_values_name_their_path(config: dict[str, Any], error: str) -> None:
    (line,) = errors_of({"enable": True, "driver": "opentelemetry", "config": config})
    assert line.startswith(error), line


def test_enabled_without_a_driver_is_an_error() -> None:
    assert errors_of({"enable": True}) == [
        "tracing.driver: expected a driver (opentelemetry) with enable: true"
    ]


def test_a_bad_endpoint_error_does_not_show_its_credentials() -> None:
    config = {"endpoint": "ftp://user:s3cret@collector/v1/traces"}
    (line,) = errors_of({"enable": True, "driver": "opentelemetry", "config": config})
    assert "s3cret" not in line and "user" not in line
    assert "ftp://[redacted]@collector/v1/traces" in line
