"""The cluster ``health_check`` key: defaults, the per-protocol ``check_config``, and
errors and warnings at their paths."""

from __future__ import annotations

from typing import Any

import pytest

from trio_mesh.config import parse_config
from trio_mesh.config.errors import ConfigError
from trio_mesh.config.health_check import HttpCheck, RpcCheck, TcpCheck, parse_check

HC = "cluster_manager.clusters[0].health_check"


def load(hc: Any):
    doc = {
        "cluster_manager": {
            "clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}], "health_check": hc}]
        }
    }
    return parse_config(doc)


def errors(hc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(hc)
    return info.value.errors


def test_mosn_keys_load_with_durations():
    loaded = load(
        {
            "protocol": "HTTP",
            "timeout": "500ms",
            "interval": "1s",
            "interval_jitter": "100ms",
            "initial_delay_seconds": "2s",
            "healthy_threshold": 2,
            "unhealthy_threshold": 3,
            "check_config": {
                "path": "/healthz",
                "host": "svc.local",
                "expected_statuses": [204, {"start": 200, "end": 300}],
            },
        }
    )
    assert loaded.warnings == ()
    hc = loaded.config.cluster_manager.clusters[0].health_check
    assert (hc.timeout, hc.interval, hc.interval_jitter, hc.initial_delay_seconds) == (
        0.5,
        1.0,
        0.1,
        2.0,
    )
    spec, errs = parse_check(hc, HC)
    assert errs == [] and isinstance(spec, HttpCheck)
    assert spec.path == "/healthz" and spec.host == "svc.local"
    assert spec.passes(204) and spec.passes(299) and not spec.passes(300)


def test_http_defaults_to_get_slash_expecting_200():
    hc = load({"protocol": "http"}).config.cluster_manager.clusters[0].health_check
    spec, _ = parse_check(hc, HC)
    assert spec == HttpCheck("/", None, ((200, 201),))
    assert not spec.passes(204)


def test_tcp_send_expect_hex():
    hc = load({"check_config": {"send": "50494e47", "expect": "504f4e47"}})
    spec, _ = parse_check(hc.config.cluster_manager.clusters[0].health_check, HC)
    assert spec == TcpCheck(b"PING", b"PONG")


def test_errors_name_their_paths():
    errs = errors(
        {
            "protocol": "http",
            "timeout": "0",
            "check_config": {"path": "/a b", "nope": 1, "expected_statuses": [99]},
        }
    )
    assert f"{HC}.timeout: expected a positive duration" in errs
    assert any(e.startswith(f"{HC}.check_config.nope: unknown key for http") for e in errs)
    assert any(e.startswith(f"{HC}.check_config.path: ") for e in errs)
    assert any(e.startswith(f"{HC}.check_config.expected_statuses[0]: ") for e in errs)
    assert errors({"interval": "soon"})[0].startswith(f"{HC}.interval: expected a duration")
    assert errors({"unhealthy_threshold": 0})[0].startswith(f"{HC}.unhealthy_threshold: ")
    assert errors({"bogus": 1})[0].startswith(f"{HC}.bogus: unknown key")


def test_attacker_header_injection_in_path_or_host_is_refused():
    for key, value in (("path", "/x HTTP/1.1\r\nX-Evil: 1"), ("host", "a\r\nX-Evil: 1")):
        (err,) = errors({"protocol": "http", "check_config": {key: value}})
        assert err.startswith(f"{HC}.check_config.{key}: ")


def test_tcp_payload_budget():
    (err,) = errors({"check_config": {"expect": "00" * 5000}})
    assert err.startswith(f"{HC}.check_config.expect: at most 4096 bytes")
    (err,) = errors({"check_config": {"send": "zz"}})
    assert err.startswith(f"{HC}.check_config.send: expected hex")


def test_an_unchecked_protocol_warns_not_enforced():
    loaded = load({"protocol": "thrift"})
    (warning,) = loaded.warnings
    assert warning.startswith(f"{HC}.protocol: 'thrift' health checks are not enforced")
    hc = loaded.config.cluster_manager.clusters[0].health_check
    assert parse_check(hc, HC) == (None, [])


@pytest.mark.parametrize(
    ("protocol", "codec"),
    [("bolt", "bolt"), ("dubbo", "dubbo"), ("Bolt", "bolt"), ("SofaRpc", "bolt")],
)
def test_rpc_heartbeat_checks_load_without_a_warning(protocol: str, codec: str):
    loaded = load({"protocol": protocol})
    assert not loaded.warnings
    hc = loaded.config.cluster_manager.clusters[0].health_check
    assert parse_check(hc, HC) == (RpcCheck(codec), [])


def test_rpc_heartbeat_checks_take_no_check_config():
    (err,) = errors({"protocol": "dubbo", "check_config": {"path": "/"}})
    assert err.startswith(f"{HC}.check_config.path: unknown key for dubbo (known keys: none)")
