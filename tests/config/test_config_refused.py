"""Keys that change security or access are refused while on, never loaded with a warning;
keys that load without being enforced warn (issue 14, finding 5)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_helpers import CLI, is_free
from trio_mesh.config import ConfigError, parse_config, read_config

TLS_ON = {
    "status": True,
    "server_name": "a.example",
    "cert_chain": "c.pem",
    "private_key": "k.pem",
}


def http_doc(port: int = 0) -> dict[str, Any]:
    """A MOSN v2 document: one HTTP listener routing to cluster ``up``."""
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": f"127.0.0.1:{port}",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {"router_config_name": "r"},
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
                                "routers": [{"route": {"cluster_name": "up"}}],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }


CHAIN = "servers[0].listeners[0].filter_chains[0]"
VHOST = "servers[0].routers[0].virtual_hosts[0]"


def _chain(doc: dict) -> dict:
    return doc["servers"][0]["listeners"][0]["filter_chains"][0]


def _cluster(doc: dict) -> dict:
    return doc["cluster_manager"]["clusters"][0]


def _vhost(doc: dict) -> dict:
    return doc["servers"][0]["routers"][0]["virtual_hosts"][0]


#: (what is set, path of the error, start of its reason)
REFUSED: list[tuple[Callable[[dict], None], str, str]] = [
    (
        lambda d: _chain(d).update(match='{"server_names": ["a.example"]}'),
        f"{CHAIN}.match",
        "MOSN's match string is not supported: the chain would accept every connection",
    ),
    (
        lambda d: _chain(d).update(tls_context={**TLS_ON, "extend_verify": {"x": 1}}),
        f"{CHAIN}.tls_context.extend_verify",
        "MOSN's TLS extension verification is not supported",
    ),
    (
        lambda d: _chain(d).update(tls_context_set=[{**TLS_ON, "sds_source": {"name": "s"}}]),
        f"{CHAIN}.tls_context_set[0].sds_source",
        "SDS (certificates from a secret discovery service) is not supported",
    ),
    (
        lambda d: _cluster(d).update(tls_context={"status": True, "callbacks": ["cb"]}),
        "cluster_manager.clusters[0].tls_context.callbacks",
        "MOSN's TLS context callbacks are not supported",
    ),
    (
        lambda d: _cluster(d).update(cluster_manager_tls=True),
        "cluster_manager.clusters[0].cluster_manager_tls",
        "the cluster manager's shared tls_context is not supported: connections to this"
        " cluster would use cleartext",
    ),
    (
        lambda d: d["cluster_manager"].update(tls_context=TLS_ON),
        "cluster_manager.tls_context",
        "the cluster manager's shared tls_context is not supported: upstream connections"
        " would use cleartext",
    ),
    (
        lambda d: _vhost(d).update(require_tls="ALL"),
        f"{VHOST}.require_tls",
        "require_tls is not enforced yet: requests over cleartext would be served",
    ),
]
IDS = [
    path.rsplit(".", 1)[1] + ("@cm" if path.startswith("cluster_manager.t") else "")
    for _, path, _ in REFUSED
]


def _write(tmp_path: Path, doc: dict, fmt: str) -> Path:
    path = tmp_path / f"mesh.{fmt}"
    text = json.dumps(doc, indent=2) if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize(("turn_on", "path", "reason"), REFUSED, ids=IDS)
def test_enabled_tls_or_access_key_is_a_config_error_naming_its_path(
    tmp_path: Path, fmt: str, turn_on: Callable[[dict], None], path: str, reason: str
) -> None:
    doc = http_doc()
    turn_on(doc)
    with pytest.raises(ConfigError) as exc:
        read_config(_write(tmp_path, doc, fmt))
    (line,) = exc.value.errors
    assert line.startswith(f"{path}: {reason}"), line


@pytest.mark.parametrize(
    "turn_off",
    [
        lambda d: _chain(d).update(tls_context={"status": False, "cert_chain": "c.pem"}),
        lambda d: _chain(d).update(tls_context={}),
        lambda d: _chain(d).update(TLS_Context={"Status": False}),  # MOSN's keys: any case
        lambda d: _chain(d).update(tls_context_set=[{"status": False}, {}]),
        lambda d: _cluster(d).update(tls_context={"status": False}),
        lambda d: _cluster(d).update(cluster_manager_tls=False),
        lambda d: d["cluster_manager"].update(tls_context={}),
        lambda d: d["cluster_manager"].update(tls_context={"status": False, "ca_cert": "x"}),
        lambda d: _vhost(d).update(require_tls="NONE"),
        lambda d: _chain(d).update(match=""),
    ],
)
def test_disabled_tls_context_keeps_loading_silently(turn_off: Callable[[dict], None]) -> None:
    doc = http_doc()
    turn_off(doc)
    loaded = parse_config(doc)
    assert loaded.warnings == ()
    (chain,) = loaded.config.listeners[0].filter_chains
    assert chain.tls_configs() == ()  # cleartext, as the document says
    cluster = loaded.config.cluster_manager.clusters[0]
    assert cluster.tls_context is None or not cluster.tls_context.status


def test_validate_subprocess_reports_each_refused_key(tmp_path: Path) -> None:
    doc = http_doc()
    for turn_on, _, _ in REFUSED:
        turn_on(doc)
    path = _write(tmp_path, doc, "json")
    result = subprocess.run(
        [*CLI, "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    reported = result.stderr.splitlines()
    for _, key_path, reason in REFUSED:
        assert any(line.startswith(f"{key_path}: {reason}") for line in reported), key_path
    assert not any("warning" in line for line in reported)


@pytest.mark.parametrize(
    ("tls", "error"),
    [
        # A file that cannot be read: found only by building the context.
        (
            {**TLS_ON, "cert_chain": "/nonexistent/c.pem", "private_key": "/nonexistent/k.pem"},
            f"{CHAIN}.tls_context.cert_chain: cannot read /nonexistent/c.pem",
        ),
        ({**TLS_ON, "min_version": "TLSv1_1"}, f"{CHAIN}.tls_context.min_version: TLS 1.1"),
    ],
    ids=["unreadable", "tls-1.1"],
)
def test_run_with_a_bad_tls_key_stops_before_binding_any_port(
    tmp_path: Path, tls: dict, error: str
) -> None:
    with socket.socket() as s:  # a free fixed port, released before the run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = http_doc(port)
    _chain(doc)["tls_context"] = tls
    path = _write(tmp_path, doc, "yaml")
    result = subprocess.run(
        [*CLI, "run", str(path)],
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert error in result.stderr
    assert "listening on" not in result.stderr
    assert is_free(port)
    validate = subprocess.run(
        [*CLI, "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    assert validate.returncode == 1 and error in validate.stderr


# --------------------------------------------------------------------------- warnings


def test_unenforced_values_warn_with_their_paths() -> None:
    doc = http_doc()
    _cluster(doc)["circuit_breakers"] = [
        {"priority": "DEFAULT", "max_requests": 5},
        {"priority": "HIGH", "max_requests": 1},
    ]
    config = doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]
    config.update(downstream_protocol="Http2", max_request_body_bytes=1024)
    assert parse_config(doc).warnings == (
        "cluster_manager.clusters[0].circuit_breakers[1].priority: HIGH: routes carry no"
        " priority, only DEFAULT thresholds apply: ignored",
        f"{CHAIN}.filters[0].config.max_request_body_bytes: enforced on HTTP/1 requests"
        " only: HTTP/2 request bodies are not limited yet",
    )
    config["downstream_protocol"] = "Http1"
    del _cluster(doc)["circuit_breakers"][1]
    assert parse_config(doc).warnings == ()


def test_route_retries_warn_on_listeners_that_may_take_rpc_only() -> None:
    doc = http_doc()
    route = _vhost(doc)["routers"][0]["route"]
    route["retry_policy"] = {"retry_on": True, "num_retries": 2}
    assert parse_config(doc).warnings == ()  # HTTP/1: enforced
    config = doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]
    config["downstream_protocol"] = "Http2"
    assert parse_config(doc).warnings == ()  # HTTP/2 and gRPC: enforced
    for protocol in ("Auto", "bolt"):  # RPC requests (Auto detects RPC codecs too) are not
        config["downstream_protocol"] = protocol
        assert parse_config(doc).warnings == (
            f"{VHOST}.routers[0].route.retry_policy: enforced on HTTP requests only: RPC"
            " requests are not retried yet",
        )
