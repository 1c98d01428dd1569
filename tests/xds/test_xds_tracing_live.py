"""HCM tracing from a real ADS management server (tests/xds_server.py, its own process): a
tracer trio-mesh cannot export to is ACKed and the listener serves untraced; a malformed
percentage is NACKed and traffic stays; an OpenTelemetry provider reaches the listener."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest
import trio

from tests.http_helpers import start_upstream
from tests.xds.test_xds import ads, eds_cluster, endpoints, fetch, listener, routes, start_mesh
from tests.xds.test_xds_client import TIMEOUT
from trio_mesh.config.filter_configs import ProxyConfig
from trio_mesh.config.observability import TracingConfig
from trio_mesh.config.proxy_tracing import effective_tracing

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)
__all__ = ["ads"]  # the fixture, imported for this module's tests

TRACE = "type.googleapis.com/envoy.config.trace.v3."
GLOBAL = TracingConfig(enable=True, driver="opentelemetry", config={"endpoint": "http://g/"})


def traced_listener(tracing: dict[str, Any]) -> dict[str, Any]:
    doc = listener("ingress", "r")
    doc["filterChains"][0]["filters"][0]["typedConfig"]["tracing"] = tracing
    return doc


def proxy_of(server: Any) -> ProxyConfig:
    (lst,) = server.config.listeners
    proxy = lst.filter_chains[0].filters[0].config
    assert isinstance(proxy, ProxyConfig)
    return proxy


async def test_hcm_tracing_over_ads(nursery, ads, caplog: pytest.LogCaptureFixture) -> None:
    a = await start_upstream(nursery)
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", a.port)])
    zipkin = {
        "randomSampling": {"value": 10},
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typedConfig": {
                "@type": TRACE + "ZipkinConfig",
                "collectorCluster": "zipkin",
                "collectorEndpoint": "/api/v2/spans",
            },
        },
    }
    await ads.set("LDS", "1", [traced_listener(zipkin)])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])
    caplog.set_level(logging.WARNING, logger="trio_mesh.xds")
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        # zipkin: ACKed, served, untraced (even with a top-level provider), and said so
        await ads.expect("ACK LDS 1")
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        assert await fetch(port) == 200
        assert effective_tracing(proxy_of(server), GLOBAL) is None
        assert any(
            "tracing.provider.typed_config: envoy.tracers.zipkin" in r.getMessage()
            and "tracing is off for this listener" in r.getMessage()
            for r in caplog.records
        )
        # a percentage Envoy would refuse: NACKed with its path, the old listener serves on
        await ads.set("LDS", "2", [traced_listener({"randomSampling": {"value": 150}})])
        nack = await ads.expect("NACK LDS")
        assert nack.startswith("NACK LDS 1 ")
        assert "tracing.random_sampling.value: expected a percentage from 0 to 100" in nack
        assert await fetch(port) == 200
        # OpenTelemetry over OTLP/HTTP: the listener's tracer is built from its provider
        otel = {
            "randomSampling": {"value": 25},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typedConfig": {
                    "@type": TRACE + "OpenTelemetryConfig",
                    "serviceName": "ingress",
                    "httpService": {
                        "httpUri": {
                            "uri": "http://127.0.0.1:4318/v1/traces",
                            "cluster": "otel",
                            "timeout": "1s",
                        }
                    },
                },
            },
        }
        await ads.set("LDS", "3", [traced_listener(otel)])
        await ads.expect("ACK LDS 3")
        await server.xds.wait_for(lambda: proxy_of(server).tracing.random_sampling == 25)
        assert effective_tracing(proxy_of(server), None) == TracingConfig(
            enable=True,
            driver="opentelemetry",
            config={
                "endpoint": "http://127.0.0.1:4318/v1/traces",
                "export_timeout": "1s",
                "service_name": "ingress",
                "random_sampling": 25.0,
            },
        )
        assert await fetch(server.addresses["ingress"][1]) == 200
    assert len(a.requests) == 3
