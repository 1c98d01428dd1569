"""conf/observability.yaml, the shipped example of the admin API, metrics and tracing."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import run_cli
from trio_mesh.config import read_config
from trio_mesh.config.metrics_check import prometheus_sinks
from trio_mesh.config.observability import PrometheusSinkConfig
from trio_mesh.config.scalars import Address

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "observability.yaml"


def test_validate_accepts_the_example() -> None:
    result = run_cli("validate", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLE}: valid: 2 listener(s), 1 cluster(s), ")
    # Nothing of the admin API or the metrics is left unenforced.
    assert "admin" not in result.stderr and "metrics" not in result.stderr


def test_the_example_has_every_part() -> None:
    config = read_config(EXAMPLE).config
    assert config.admin is not None
    assert config.admin.address == Address("127.0.0.1", 34901)
    assert prometheus_sinks(config) == [PrometheusSinkConfig(port=34903, endpoint="/metrics")]
    assert config.tracing is not None and config.tracing.enable
    assert config.tracing.driver == "opentelemetry"
    assert config.tracing.config["endpoint"] == "http://127.0.0.1:4318/v1/traces"
    assert config.tracing.config["random_sampling"] == 100
