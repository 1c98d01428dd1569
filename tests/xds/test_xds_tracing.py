"""Envoy's HCM ``tracing`` (real envoy-data-plane messages) -> the proxy's ``tracing``, through
parse_config to `effective_tracing`: what maps, what warns and is off, what is refused."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest

from trio_mesh.config.filter_configs import ProxyConfig
from trio_mesh.config.load import parse_config
from trio_mesh.config.observability import TracingConfig
from trio_mesh.config.proxy_tracing import ProxyTracing, effective_tracing
from trio_mesh.xds import types as t
from trio_mesh.xds.envoy_import import envoy_import
from trio_mesh.xds.translate import ConvertError, listener_doc, route_config_doc

from .test_xds_translate import hcm, listener, vhost

with envoy_import():
    from envoy_data_plane.envoy.config.core.v3 import (
        GrpcService,
        GrpcServiceEnvoyGrpc,
        TypedExtensionConfig,
    )
    from envoy_data_plane.envoy.config.trace.v3 import ZipkinConfig
    from envoy_data_plane.envoy.type.tracing.v3 import CustomTag, CustomTagLiteral

OTLP = "http://127.0.0.1:4318/v1/traces"
HCM_AT = "Listener 'ingress': filter_chains[0].filters[0].typed_config.tracing"
GLOBAL = TracingConfig(
    enable=True, driver="opentelemetry", config={"endpoint": "http://global:4318/v1/traces"}
)


def pct(value: float) -> t.Percent:
    return t.Percent(value=value)


def otel(**kw: Any) -> t.TracingHttp:
    """Envoy's OpenTelemetry tracer over OTLP/HTTP, as Envoy's docs configure it."""
    kw.setdefault(
        "http_service",
        t.HttpService(http_uri=t.HttpUri(uri=OTLP, cluster="otel", timeout=_secs(0.25))),
    )
    return t.TracingHttp(
        name="envoy.tracers.opentelemetry",
        typed_config=t.Any.pack(t.OpenTelemetryConfig(**kw)),
    )


def _secs(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


def traced(tracing: t.HttpConnectionManagerTracing | None) -> dict[str, Any]:
    """The ``tracing`` of the proxy filter translated from an HCM with ``tracing``."""
    parts = listener_doc(listener("ingress", 8080, hcm(tracing=tracing)))
    config = parts.listener["filter_chains"][0]["filters"][0]["config"]
    return config["tracing"]


def composed(tracing: t.HttpConnectionManagerTracing | None) -> tuple[ProxyConfig, tuple]:
    """The translated listener through parse_config: its proxy config and the warnings."""
    rc = t.RouteConfiguration(
        name="main_routes",
        virtual_hosts=[
            vhost(
                t.Route(
                    match=t.RouteMatch(prefix="/"),
                    direct_response=t.DirectResponseAction(status=200),
                )
            )
        ],
    )
    parts = listener_doc(listener("ingress", 8080, hcm(tracing=tracing)))
    loaded = parse_config(
        {"servers": [{"listeners": [parts.listener], "routers": [route_config_doc(rc)]}]}
    )
    proxy = loaded.config.listeners[0].filter_chains[0].filters[0].config
    assert isinstance(proxy, ProxyConfig)
    return proxy, loaded.warnings


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_mesh.xds" and r.levelno == logging.WARNING
    ]


# --------------------------------------------------------------------------- what maps


def test_opentelemetry_over_http_becomes_the_listener_provider(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing = t.HttpConnectionManagerTracing(
        random_sampling=pct(12.5),
        provider=otel(
            service_name="ingress-gw",
            http_service=t.HttpService(
                http_uri=t.HttpUri(uri=OTLP, cluster="otel", timeout=_secs(0.25)),
                request_headers_to_add=[
                    t.HeaderValueOption(header=t.HeaderValue(key="X-Tenant", value="a")),
                    t.HeaderValueOption(header=t.HeaderValue(key="x-tenant", value="b")),
                    t.HeaderValueOption(
                        header=t.HeaderValue(key="authorization", raw_value=b"Bearer t")
                    ),
                    t.HeaderValueOption(header=t.HeaderValue(key="x-empty")),  # not added
                    t.HeaderValueOption(header=t.HeaderValue(key="x-kept"), keep_empty_value=True),
                ],
            ),
        ),
    )
    with caplog.at_level(logging.WARNING, logger="trio_mesh.xds"):
        proxy, warnings = composed(tracing)
    assert warnings == ()
    assert proxy.tracing == ProxyTracing(
        random_sampling=12.5,
        provider=TracingConfig(
            enable=True,
            driver="opentelemetry",
            config={
                "endpoint": OTLP,
                "export_timeout": "250ms",
                "headers": {"x-tenant": "a, b", "authorization": "Bearer t", "x-kept": ""},
                "service_name": "ingress-gw",
            },
        ),
    )
    # Envoy's http_uri.cluster is required there; here the exporter goes to the uri itself
    assert warnings_of(caplog) == [
        f"{HCM_AT}.provider.typed_config.http_service.http_uri.cluster: 'otel': not enforced:"
        " spans go to the uri's host directly (its scheme decides TLS), not through the"
        " cluster nor its transport socket: ignored"
    ]
    # the tracer the server builds: the listener's provider, its sampling in the provider's config
    built = effective_tracing(proxy, GLOBAL)
    assert built is not None and built.config["random_sampling"] == 12.5
    assert built.config["endpoint"] == OTLP


def test_tracing_without_a_provider_uses_the_top_level_one() -> None:
    """Envoy falls back on the bootstrap's tracer; trio-mesh's is the top-level ``tracing``."""
    assert traced(t.HttpConnectionManagerTracing(random_sampling=pct(0))) == {
        "random_sampling": 0.0
    }
    proxy, warnings = composed(t.HttpConnectionManagerTracing())
    assert warnings == ()
    assert effective_tracing(proxy, GLOBAL) is GLOBAL
    assert effective_tracing(proxy, None) is None
    sampled, _ = composed(t.HttpConnectionManagerTracing(random_sampling=pct(1)))
    built = effective_tracing(sampled, GLOBAL)
    assert built is not None and built.config == {**GLOBAL.config, "random_sampling": 1.0}


def test_an_hcm_without_tracing_is_not_traced_even_with_a_top_level_provider() -> None:
    """Envoy traces an HCM only when it has ``tracing``."""
    assert traced(None) == {"provider": {"enable": False}}
    proxy, warnings = composed(None)
    assert warnings == ()
    assert effective_tracing(proxy, GLOBAL) is None


def test_sampling_at_envoy_defaults_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    tracing = t.HttpConnectionManagerTracing(
        client_sampling=pct(100),
        overall_sampling=pct(100),
        provider=otel(http_service=t.HttpService(http_uri=t.HttpUri(uri=OTLP))),
    )
    with caplog.at_level(logging.WARNING, logger="trio_mesh.xds"):
        assert traced(tracing) == {
            "provider": {"enable": True, "driver": "opentelemetry", "config": {"endpoint": OTLP}}
        }
    assert warnings_of(caplog) == []


# --------------------------------------------------------------------------- warned


def test_fields_not_enforced_warn_with_their_envoy_path(caplog: pytest.LogCaptureFixture) -> None:
    tracing = t.HttpConnectionManagerTracing(
        client_sampling=pct(5),
        overall_sampling=pct(50),
        verbose=True,
        max_path_tag_length=64,
        custom_tags=[CustomTag(tag="env", literal=CustomTagLiteral(value="prod"))],
        spawn_upstream_span=True,
        operation="%REQ(:path)%",
        provider=otel(
            http_service=t.HttpService(
                http_uri=t.HttpUri(uri=OTLP),
                formatters=[TypedExtensionConfig(name="f", typed_config=t.Any.pack(t.Router()))],
            ),
            max_cache_size=10,
            sampler=TypedExtensionConfig(name="s", typed_config=t.Any.pack(t.Router())),
        ),
    )
    with caplog.at_level(logging.WARNING, logger="trio_mesh.xds"):
        out = traced(tracing)
    assert out["provider"]["enable"] is True  # still traced: none of these is security
    p = f"{HCM_AT}.provider.typed_config"
    assert warnings_of(caplog) == [
        f"{HCM_AT}.client_sampling: 5: not enforced: x-client-trace-id forces no trace here:"
        " ignored",
        f"{HCM_AT}.overall_sampling: 50: not enforced: random_sampling alone decides which"
        " requests start a trace: ignored",
        f"{HCM_AT}.verbose: not enforced: spans get no stream event logs yet: ignored",
        f"{HCM_AT}.max_path_tag_length: not enforced: spans carry no path tag to truncate: ignored",
        f"{HCM_AT}.custom_tags: not enforced: spans get no custom tags yet: ignored",
        f"{HCM_AT}.spawn_upstream_span: not enforced: one server span per request, no upstream"
        " span: ignored",
        f"{HCM_AT}.operation: not enforced: span names are not configurable yet: ignored",
        f"{p}.sampler: not enforced: random_sampling alone decides which requests start a"
        " trace: ignored",
        f"{p}.max_cache_size: not enforced: the exporter's queue is bounded by the top-level"
        " config: ignored",
        f"{p}.http_service.formatters: not enforced: header values are sent as written: ignored",
    ]
    # what is not enforced is not carried into the config either
    assert set(out) == {"provider"}


@pytest.mark.parametrize(
    ("provider", "path", "reason"),
    [
        pytest.param(
            t.TracingHttp(
                name="envoy.tracers.zipkin",
                typed_config=t.Any.pack(
                    ZipkinConfig(collector_cluster="zipkin", collector_endpoint="/api/v2/spans")
                ),
            ),
            "provider.typed_config",
            "envoy.tracers.zipkin (type.googleapis.com/envoy.config.trace.v3.ZipkinConfig)",
            id="zipkin",
        ),
        pytest.param(
            t.TracingHttp(name="envoy.tracers.datadog"),
            "provider.typed_config",
            "envoy.tracers.datadog (no typed_config)",
            id="name-only",
        ),
        pytest.param(
            otel(
                http_service=None,
                grpc_service=GrpcService(
                    envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name="otel-collector")
                ),
            ),
            "provider.typed_config.grpc_service",
            "OTLP over gRPC",
            id="otlp-grpc",
        ),
        pytest.param(
            otel(http_service=None),
            "provider.typed_config.http_service",
            "none",
            id="no-service",
        ),
    ],
)
def test_a_tracer_trio_mesh_cannot_export_to_turns_the_listener_tracing_off(
    caplog: pytest.LogCaptureFixture, provider: t.TracingHttp, path: str, reason: str
) -> None:
    """Tracing is neither security nor access: the listener still serves, untraced, and the
    warning says why (refusing it would take its traffic down for a tracer)."""
    tracing = t.HttpConnectionManagerTracing(random_sampling=pct(10), provider=provider)
    with caplog.at_level(logging.WARNING, logger="trio_mesh.xds"):
        proxy, warnings = composed(tracing)
    assert warnings_of(caplog) == [
        f"{HCM_AT}.{path}: {reason}: not supported by trio-mesh (only"
        " envoy.tracers.opentelemetry with an http_service): tracing is off for this listener"
    ]
    assert warnings == ()
    assert effective_tracing(proxy, GLOBAL) is None  # not even the top-level provider


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        pytest.param(
            t.HttpConnectionManagerTracing(random_sampling=pct(100.5)),
            f"{HCM_AT}.random_sampling.value: expected a percentage from 0 to 100, got 100.5",
            id="over-100",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(overall_sampling=pct(-1)),
            f"{HCM_AT}.overall_sampling.value: expected a percentage from 0 to 100, got -1",
            id="negative",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(client_sampling=pct(float("nan"))),
            f"{HCM_AT}.client_sampling.value: expected a percentage from 0 to 100, got nan",
            id="nan",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(
                provider=otel(http_service=t.HttpService(http_uri=t.HttpUri(cluster="otel")))
            ),
            f"{HCM_AT}.provider.typed_config.http_service.http_uri.uri: a uri is required",
            id="no-uri",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(
                provider=otel(http_service=t.HttpService(http_uri=t.HttpUri(uri="otel:4318")))
            ),
            f"{HCM_AT}.provider.typed_config.http_service.http_uri.uri: expected an http:// or"
            " https:// URL, got 'otel:4318'",
            id="not-a-url",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(
                provider=otel(
                    http_service=t.HttpService(http_uri=t.HttpUri(uri=OTLP, timeout=_secs(0)))
                )
            ),
            f"{HCM_AT}.provider.typed_config.http_service.http_uri.timeout: expected a positive"
            " duration, got 0.0s",
            id="zero-timeout",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(
                provider=otel(
                    http_service=t.HttpService(
                        http_uri=t.HttpUri(uri=OTLP),
                        request_headers_to_add=[
                            t.HeaderValueOption(
                                header=t.HeaderValue(key="x-a", value="1\r\nx-admin: yes")
                            )
                        ],
                    )
                )
            ),
            f"{HCM_AT}.provider.typed_config.http_service.request_headers_to_add[0].header:"
            " header value may not contain CR, LF or NUL, got '1\\r\\nx-admin: yes'",
            id="header-injection",
        ),
        pytest.param(
            t.HttpConnectionManagerTracing(
                provider=otel(
                    http_service=t.HttpService(
                        http_uri=t.HttpUri(uri=OTLP),
                        request_headers_to_add=[
                            t.HeaderValueOption(header=t.HeaderValue(key="bad name", value="1"))
                        ],
                    )
                )
            ),
            f"{HCM_AT}.provider.typed_config.http_service.request_headers_to_add[0].header:"
            " invalid header name 'bad name'",
            id="bad-header-name",
        ),
    ],
)
def test_a_malformed_tracing_is_refused_with_its_envoy_path(
    tracing: t.HttpConnectionManagerTracing, message: str
) -> None:
    """What Envoy itself would reject is a NACK naming the field, as elsewhere."""
    with pytest.raises(ConvertError) as info:
        traced(tracing)
    assert str(info.value) == message


def test_tracing_received_over_the_wire_converts_the_same() -> None:
    tracing = t.HttpConnectionManagerTracing(random_sampling=pct(3), provider=otel())
    lst = listener("ingress", 8080, hcm(tracing=tracing))
    resp = t.DiscoveryResponse(type_url=t.LDS, resources=[t.Any.pack(lst)])
    (again,) = (a.unpack() for a in t.DiscoveryResponse.parse(bytes(resp)).resources)
    assert listener_doc(again) == listener_doc(lst)
    assert (
        listener_doc(again).listener["filter_chains"][0]["filters"][0]["config"]["tracing"][
            "random_sampling"
        ]
        == 3.0
    )
