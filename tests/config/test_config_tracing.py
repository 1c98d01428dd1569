"""A ``proxy`` filter's ``tracing`` (Envoy's HCM tracing, MOSN-shaped): loading, errors with
their paths, warnings for what is not enforced, and the tracing a listener ends up with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from trio_mesh.config import ConfigError, parse_config, read_config
from trio_mesh.config.filter_configs import ProxyConfig
from trio_mesh.config.observability import TracingConfig
from trio_mesh.config.proxy_tracing import ProxyTracing, effective_tracing

PCT = "expected a percentage from 0 to 100, got"
T = "servers[0].listeners[0].filter_chains[0].filters[0].config.tracing"
OTEL = {
    "enable": True,
    "driver": "opentelemetry",
    "config": {"endpoint": "http://127.0.0.1:4318/v1/traces", "service_name": "ingress"},
}


def doc(tracing: Any, **top: Any) -> dict[str, Any]:
    """One HTTP listener whose proxy filter has ``tracing``."""
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {"router_config_name": "r", "tracing": tracing},
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "v",
                                "domains": ["*"],
                                "routers": [
                                    {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
        **top,
    }


def proxy_of(loaded: Any) -> ProxyConfig:
    config = loaded.config.servers[0].listeners[0].filter_chains[0].filters[0].config
    assert isinstance(config, ProxyConfig)
    return config


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return info.value.errors


def test_a_listener_tracing_block_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc({"random_sampling": 12.5, "provider": OTEL})))
    loaded = read_config(path)
    assert loaded.warnings == ()
    assert proxy_of(loaded).tracing == ProxyTracing(
        random_sampling=12.5,
        provider=TracingConfig(
            enable=True,
            driver="opentelemetry",
            config={"endpoint": "http://127.0.0.1:4318/v1/traces", "service_name": "ingress"},
        ),
    )


def test_no_tracing_block_is_none_and_an_empty_one_changes_nothing() -> None:
    plain = doc(None)
    del plain["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["tracing"]
    assert proxy_of(parse_config(plain)).tracing is None
    empty = parse_config(doc({}))
    assert empty.warnings == ()
    assert proxy_of(empty).tracing == ProxyTracing()


@pytest.mark.parametrize(
    ("tracing", "error"),
    [
        (
            {"random_sampling": 100.5},
            f"{T}.random_sampling: {PCT} 100.5",
        ),
        ({"random_sampling": -1}, f"{T}.random_sampling: {PCT} -1.0"),
        ({"random_sampling": float("nan")}, f"{T}.random_sampling: {PCT} nan"),
        ({"random_sampling": "ten"}, f"{T}.random_sampling: expected a number, got 'ten'"),
        ({"random_sampling": True}, f"{T}.random_sampling: expected a number, got True"),
        ({"client_sampling": 200}, f"{T}.client_sampling: {PCT} 200.0"),
        ({"overall_sampling": -0.1}, f"{T}.overall_sampling: {PCT} -0.1"),
        (
            {"max_path_tag_length": 0},
            f"{T}.max_path_tag_length: expected an integer of at least 1, got 0",
        ),
        (
            {"provider": {"enable": True, "driver": "zipkin"}},
            f"{T}.provider.driver: expected opentelemetry, got 'zipkin'",
        ),
        (
            {"provider": {"enable": True}},
            f"{T}.provider.driver: expected opentelemetry, got nothing",
        ),
        (
            {"provider": {"enable": True, "tracer": "SOFATracer"}},
            f"{T}.provider.tracer: expected opentelemetry, got 'sofatracer'",
        ),
        (
            {"provider": {**OTEL, "config": {"endpoint": "file:///etc/passwd"}}},
            f"{T}.provider.config.endpoint: expected an http:// or https:// URL,"
            " got 'file:///etc/passwd'",
        ),
        (
            {"provider": {**OTEL, "config": {"service_name": ""}}},
            f"{T}.provider.config.service_name: expected a name, got ''",
        ),
        (
            {"provider": {**OTEL, "config": {"headers": {"x-token": 5}}}},
            f"{T}.provider.config.headers: expected a mapping of names to strings,"
            " got {'x-token': 5}",
        ),
        (
            {"provider": {**OTEL, "config": {"headers": {"x-a": "1\r\nx-admin: yes"}}}},
            f"{T}.provider.config.headers.x-a: header value may not contain CR, LF or NUL,"
            " got '1\\r\\nx-admin: yes'",
        ),
        (
            {"provider": {**OTEL, "config": {"headers": {"bad name": "1"}}}},
            f"{T}.provider.config.headers.bad name: invalid header name 'bad name'",
        ),
        (
            {"provider": {**OTEL, "config": {"random_sampling": 101}}},
            f"{T}.provider.config.random_sampling: {PCT} 101",
        ),
        (
            {"provider": {**OTEL, "config": {"random_sampling": True}}},
            f"{T}.provider.config.random_sampling: {PCT} True",
        ),
        (
            {"sampling": 10},
            f"{T}.sampling: unknown key (known keys: client_sampling, custom_tags,"
            " max_path_tag_length, overall_sampling, provider, random_sampling, verbose)",
        ),
        ({"verbose": "loud"}, f"{T}.verbose: expected true or false, got 'loud'"),
        ("on", f"{T}: expected a mapping, got 'on'"),
    ],
)
def test_bad_tracing_values_name_their_path(tracing: Any, error: str) -> None:
    assert errors_of(doc(tracing)) == [error]


def test_a_disabled_provider_is_not_checked_but_warns() -> None:
    loaded = parse_config(doc({"provider": {"driver": "zipkin", "config": {"endpoint": 5}}}))
    assert loaded.warnings == (
        f"{T}.provider.enable: false: this listener is not traced (enable: true uses this"
        " provider)",
    )


def test_fields_not_enforced_warn_once_each_with_their_path() -> None:
    loaded = parse_config(
        doc(
            {
                "client_sampling": 5,
                "overall_sampling": 50,
                "custom_tags": [{"tag": "env", "literal": {"value": "prod"}}],
                "verbose": True,
                "max_path_tag_length": 64,
                "random_sampling": 0,  # enforced: no warning
            }
        )
    )
    assert loaded.warnings == (
        f"{T}.client_sampling: 5: not enforced: x-client-trace-id forces no trace here: ignored",
        f"{T}.overall_sampling: 50: not enforced: random_sampling alone decides which requests"
        " start a trace: ignored",
        f"{T}.custom_tags: spans get no custom tags yet: ignored",
        f"{T}.verbose: spans get no stream event logs yet: ignored",
        f"{T}.max_path_tag_length: spans carry no path tag to truncate: ignored",
    )
    # Envoy's defaults written out are not warned about
    defaults = {"client_sampling": 100, "overall_sampling": 100.0, "verbose": False}
    assert parse_config(doc(defaults)).warnings == ()


# --------------------------------------------------------------------------- effective_tracing

GLOBAL = TracingConfig(
    enable=True,
    driver="opentelemetry",
    config={"endpoint": "http://collector:4318/v1/traces", "random_sampling": 10},
)


def proxy(tracing: dict[str, Any] | None) -> ProxyConfig:
    document = doc(tracing if tracing is not None else {})
    if tracing is None:
        del document["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"][
            "tracing"
        ]
    return proxy_of(parse_config(document))


def test_effective_tracing_without_a_listener_block_is_the_global_one_if_enabled() -> None:
    assert effective_tracing(proxy(None), GLOBAL) is GLOBAL
    assert effective_tracing(proxy(None), None) is None
    off = TracingConfig(enable=False, driver="opentelemetry")
    assert effective_tracing(proxy(None), off) is None
    assert effective_tracing(proxy({}), GLOBAL) is GLOBAL


def test_effective_tracing_listener_sampling_overrides_the_global_one() -> None:
    got = effective_tracing(proxy({"random_sampling": 0}), GLOBAL)
    assert got == TracingConfig(
        enable=True,
        driver="opentelemetry",
        config={"endpoint": "http://collector:4318/v1/traces", "random_sampling": 0.0},
    )
    assert GLOBAL.config["random_sampling"] == 10  # not changed in place
    # sampling alone does not turn tracing on
    assert effective_tracing(proxy({"random_sampling": 50}), None) is None


def test_effective_tracing_listener_provider_wins_and_a_disabled_one_turns_it_off() -> None:
    own = effective_tracing(proxy({"provider": OTEL, "random_sampling": 25}), GLOBAL)
    assert own == TracingConfig(
        enable=True,
        driver="opentelemetry",
        config={
            "endpoint": "http://127.0.0.1:4318/v1/traces",
            "service_name": "ingress",
            "random_sampling": 25.0,
        },
    )
    # the listener's own provider needs no global one; its sampling is its own
    alone = effective_tracing(proxy({"provider": OTEL}), None)
    assert alone is not None and alone.config == OTEL["config"]
    assert effective_tracing(proxy({"provider": {"enable": False}}), GLOBAL) is None


def test_mosn_json_loads_the_same_as_yaml(tmp_path: Path) -> None:
    tracing = {"random_sampling": 1, "provider": OTEL}
    (tmp_path / "mesh.json").write_text(json.dumps(doc(tracing)))
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(doc(tracing)))
    from_json = proxy_of(read_config(tmp_path / "mesh.json")).tracing
    assert from_json == proxy_of(read_config(tmp_path / "mesh.yaml")).tracing
    assert from_json is not None and from_json.random_sampling == 1.0
