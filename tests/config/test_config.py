"""Configuration loading: files, MOSN's JSON, warnings, errors with their paths, parsers."""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from attrs import frozen
from hypothesis import example, given
from hypothesis import strategies as st

import trio_mesh
from trio_mesh.config import (
    Address,
    ClusterType,
    ConfigError,
    LbType,
    MeshConfig,
    NetworkFilterConfig,
    TcpProxyConfig,
    parse_config,
    read_config,
    register_filter_config,
)
from trio_mesh.config import filter_configs as filter_registry
from trio_mesh.config.duration import format_duration, parse_duration
from trio_mesh.config.filter_configs import known_filters
from trio_mesh.config.scalars import PositiveInt, cluster_ref
from trio_mesh.config.values import parse_address

# --------------------------------------------------------------------------- files

SAMPLE_YAML = """\
servers:
  - default_log_level: warn
    listeners:
      - name: ingress
        address: "[::1]:0"
        connection_idle_timeout: 250ms
        max_connections: 64
        filter_chains:
          - filters:
              - type: tcp_proxy
                config:
                  cluster: backend
                  idle_timeout: 1m30s
                  max_connect_attempts: 3
                  stat_prefix: ing
      - name: plain
        address: 127.0.0.1:8080
        bind_port: false
        filter_chains:
          - filters:
              - type: echo
cluster_manager:
  clusters:
    - name: backend
      type: STATIC
      lb_type: LB_WEIGHTED_ROUNDROBIN
      connect_timeout: 250ms
      idle_timeout: 1m30s
      max_request_per_conn: 10
      circuit_breakers:
        - max_connections: 100
          max_pending_requests: 5
          max_requests: 50
          max_retries: 0
      hosts:
        - address: 10.0.0.1:9000
          hostname: a.backend
          weight: 3
          metadata:
            Zone: eu-1
            labels: {Tier: gold}
        - address: "[2001:db8::1]:9001"
"""


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def sample_file(tmp_path: Path, suffix: str) -> Path:
    if suffix == ".json":
        return write(tmp_path, "mesh.json", json.dumps(yaml.safe_load(SAMPLE_YAML), indent=2))
    return write(tmp_path, f"mesh{suffix}", SAMPLE_YAML)


def assert_sample(config: MeshConfig) -> None:
    assert isinstance(config, MeshConfig)
    assert len(config.servers) == 1
    assert config.servers[0].default_log_level == "WARN"

    ingress, plain = config.listeners
    assert ingress.name == "ingress"
    assert ingress.address == Address(host="::1", port=0)
    assert str(ingress.address) == "[::1]:0"
    assert ingress.bind_port is True
    assert ingress.connection_idle_timeout == 0.25
    assert ingress.max_connections == 64
    assert ingress.stream_filters == ()
    (chain,) = ingress.filter_chains
    (proxy,) = chain.filters
    assert isinstance(proxy, NetworkFilterConfig)
    assert proxy.type == "tcp_proxy"
    assert proxy.config == TcpProxyConfig(
        cluster="backend", idle_timeout=90.0, max_connect_attempts=3, stat_prefix="ing"
    )

    assert plain.name == "plain"
    assert plain.address == Address(host="127.0.0.1", port=8080)
    assert plain.bind_port is False
    assert plain.connection_idle_timeout == 90.0  # MOSN's default
    assert plain.max_connections is None
    assert [(f.type, f.config) for f in plain.filter_chains[0].filters] == [("echo", None)]

    (backend,) = config.cluster_manager.clusters
    assert config.cluster("backend") is backend
    assert config.cluster("nope") is None
    assert backend.type is ClusterType.STATIC
    assert backend.lb_type is LbType.LB_WEIGHTED_ROUNDROBIN
    assert backend.connect_timeout == 0.25
    assert backend.idle_timeout == 90.0
    assert backend.max_request_per_conn == 10
    limits = backend.thresholds()
    assert limits is backend.circuit_breakers[0]
    assert (
        limits.priority,
        limits.max_connections,
        limits.max_pending_requests,
        limits.max_requests,
        limits.max_retries,
    ) == ("DEFAULT", 100, 5, 50, 0)

    first, second = backend.hosts
    assert first.address == Address(host="10.0.0.1", port=9000)
    assert first.hostname == "a.backend"
    assert first.weight == 3
    assert first.metadata == {"Zone": "eu-1", "labels": {"Tier": "gold"}}  # kept as written
    assert second.address == Address(host="2001:db8::1", port=9001)
    assert second.hostname is None
    assert second.weight == 1
    assert second.metadata == {}
    assert config.admin is None


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_load_config_reads_each_format(tmp_path: Path, suffix: str) -> None:
    path = sample_file(tmp_path, suffix)
    assert_sample(trio_mesh.load_config(path))
    assert_sample(trio_mesh.load_config(str(path)))


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_read_config_returns_config_and_no_warnings(tmp_path: Path, suffix: str) -> None:
    loaded = read_config(sample_file(tmp_path, suffix))
    assert loaded.warnings == ()
    assert_sample(loaded.config)


def test_file_suffix_is_case_insensitive(tmp_path: Path) -> None:
    assert_sample(read_config(write(tmp_path, "MESH.YML", SAMPLE_YAML)).config)


def test_defaults_of_a_minimal_document() -> None:
    config = parse_config(minimal_doc()).config
    (listener,) = config.listeners
    assert listener.bind_port is True
    assert listener.connection_idle_timeout == 90.0  # MOSN's default
    (cluster,) = config.cluster_manager.clusters
    assert cluster.type is ClusterType.SIMPLE
    assert cluster.lb_type is LbType.LB_ROUNDROBIN
    assert cluster.connect_timeout == 3.0
    assert cluster.idle_timeout is None
    assert cluster.max_request_per_conn == 0
    assert cluster.circuit_breakers == ()
    unlimited = cluster.thresholds()
    assert (unlimited.max_connections, unlimited.max_requests) == (None, None)
    tcp = listener.filter_chains[0].filters[0].config
    assert tcp == TcpProxyConfig(cluster="up")
    assert (tcp.idle_timeout, tcp.max_connect_attempts, tcp.stat_prefix) == (None, 1, None)


# --------------------------------------------------------------------------- MOSN JSON

MOSN_JSON = """\
{
  "servers": [
    {
      "default_log_level": "DEBUG",
      "Listeners": [
        {
          "Name": "serverListener",
          "address": "0.0.0.0:2045",
          "bind_port": true,
          "filter_chains": [
            {
              "filters": [
                {
                  "type": "tcp_proxy",
                  "config": {
                    "Cluster": "serverCluster",
                    "IDLE_TIMEOUT": "90s",
                    "max_connect_attempts": 2
                  }
                }
              ]
            }
          ]
        }
      ]
    }
  ],
  "cluster_manager": {
    "clusters": [
      {
        "Name": "serverCluster",
        "type": "SIMPLE",
        "lb_type": "LB_RANDOM",
        "Connect_Timeout": "1s",
        "max_request_per_conn": 1024,
        "circuit_breakers": [{"max_connections": 100}],
        "hosts": [
          {"address": "127.0.0.1:20880", "weight": 100},
          {"Address": "127.0.0.1:20881", "Hostname": "second", "Weight": 1}
        ]
      }
    ]
  },
  "admin": {
    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 34901}},
    "allow_non_loopback": true
  }
}
"""


def test_mosn_json_with_mixed_case_keys_loads(tmp_path: Path) -> None:
    loaded = read_config(write(tmp_path, "mosn.json", MOSN_JSON))
    config = loaded.config
    assert config.servers[0].default_log_level == "DEBUG"

    (listener,) = config.listeners
    assert listener.name == "serverListener"
    assert listener.address == Address(host="0.0.0.0", port=2045)
    assert listener.bind_port is True
    (proxy,) = listener.filter_chains[0].filters
    assert proxy.type == "tcp_proxy"
    assert proxy.config == TcpProxyConfig(
        cluster="serverCluster", idle_timeout=90.0, max_connect_attempts=2
    )

    cluster = config.cluster("serverCluster")
    assert cluster is not None
    assert cluster.type is ClusterType.SIMPLE
    assert cluster.lb_type is LbType.LB_RANDOM
    assert cluster.connect_timeout == 1.0
    assert cluster.max_request_per_conn == 1024
    assert cluster.thresholds().max_connections == 100
    assert [(str(h.address), h.hostname, h.weight) for h in cluster.hosts] == [
        ("127.0.0.1:20880", None, 100),
        ("127.0.0.1:20881", "second", 1),
    ]

    assert config.admin is not None
    assert config.admin.address == Address(host="0.0.0.0", port=34901)
    assert config.admin.allow_non_loopback is True
    assert loaded.warnings == ()


def test_admin_address_may_be_a_plain_string() -> None:
    doc = minimal_doc()
    doc["admin"] = {"address": "[::1]:34901"}
    assert parse_config(doc).config.admin.address == Address(host="::1", port=34901)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "10.1.2.3", "example.com"])
def test_admin_off_loopback_needs_allow_non_loopback(host: str) -> None:
    doc = minimal_doc()
    doc["admin"] = {"address": f"{host}:34901"}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    (line,) = info.value.errors
    assert line.startswith("admin.address: ")
    assert "not a loopback address" in line and "admin.allow_non_loopback: true" in line
    doc["admin"]["allow_non_loopback"] = True
    assert parse_config(doc).config.admin is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_admin_on_loopback_is_fine(host: str) -> None:
    doc = minimal_doc()
    doc["admin"] = {"address": f"{host}:0"}
    loaded = parse_config(doc)
    assert loaded.config.admin is not None and loaded.warnings == ()


def test_enum_values_match_case_insensitively() -> None:
    doc = minimal_doc()
    cluster(doc).update(type="static", lb_type="lb_least_request")
    (c,) = parse_config(doc).config.cluster_manager.clusters
    assert (c.type, c.lb_type) == (ClusterType.STATIC, LbType.LB_LEAST_REQUEST)


@pytest.mark.parametrize(
    ("written", "level"),
    [("TRACE", "TRACE"), ("warn", "WARN"), ("Warning", "WARNING"), ("fatal", "FATAL")],
)
def test_log_level_names_are_upper_cased(written: str, level: str) -> None:
    doc = minimal_doc()
    doc["servers"][0]["default_log_level"] = written
    assert parse_config(doc).config.servers[0].default_log_level == level


# --------------------------------------------------------------------------- pending keys


def pending_doc() -> dict[str, Any]:
    doc = minimal_doc()
    listener(doc)["log_level"] = "INFO"
    cluster(doc)["Conn_Buffer_Limit_Bytes"] = 32768
    doc["pprof"] = {"debug": True}
    return doc


PENDING_WARNINGS = (
    "servers[0].listeners[0].log_level: known MOSN key, not implemented yet: ignored",
    "cluster_manager.clusters[0].conn_buffer_limit_bytes: known MOSN key, not implemented yet:"
    " ignored",
    "pprof: known MOSN key, not implemented yet: ignored",
)


def test_pending_mosn_keys_load_with_one_warning_each(tmp_path: Path) -> None:
    loaded = read_config(write(tmp_path, "pending.json", json.dumps(pending_doc())))
    assert loaded.warnings == PENDING_WARNINGS
    (lst,) = loaded.config.listeners
    without = lst
    assert attrs.evolve(loaded.config, servers=()) == attrs.evolve(
        parse_config(minimal_doc()).config, servers=()
    )
    assert without == parse_config(minimal_doc()).config.listeners[0]


def test_pending_keys_inside_hosts_warn_with_paths_and_a_disabled_tls_context_is_silent() -> None:
    doc = minimal_doc()
    listener(doc)["filter_chains"][0]["tls_context"] = {}  # off: nothing is ignored
    host(doc)["tls_disable"] = True  # a key of its own now
    host(doc)["hostname"] = "h"
    doc["cluster_manager"]["auto_discovery"] = True
    loaded = parse_config(doc)
    assert loaded.warnings == (
        "cluster_manager.auto_discovery: known MOSN key, not implemented yet: ignored",
    )
    assert loaded.config.cluster_manager.clusters[0].hosts[0].tls_disable is True


def test_load_config_logs_each_warning_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "pending.yaml", yaml.safe_dump(pending_doc(), sort_keys=False))
    with caplog.at_level(logging.WARNING, logger="trio_mesh.config"):
        config = trio_mesh.load_config(path)
    assert config.cluster("up") is not None
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "trio_mesh.config"]
    assert logged == [(logging.WARNING, w) for w in PENDING_WARNINGS]


# --------------------------------------------------------------------------- bad input


def minimal_doc() -> dict[str, Any]:
    """One listener ``l`` relaying with tcp_proxy to cluster ``up`` of one host."""
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "l",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [{"type": "tcp_proxy", "config": {"cluster": "up"}}]}
                        ],
                    }
                ]
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }


def listener(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return doc["servers"][0]["listeners"][i]


def filters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return listener(doc)["filter_chains"][0]["filters"]


def cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["cluster_manager"]["clusters"][0]


def host(doc: dict[str, Any]) -> dict[str, Any]:
    return cluster(doc)["hosts"][0]


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def assert_errors(doc: Any, expected: list[str]) -> None:
    """Exactly these lines, each once; their order is not part of the contract tested here."""
    errors = errors_of(doc)
    assert sorted(errors) == sorted(expected)
    assert len(set(errors)) == len(errors)


L0 = "servers[0].listeners[0]"
F0 = f"{L0}.filter_chains[0].filters"
C0 = "cluster_manager.clusters[0]"
LISTENER_KEYS = (
    "access_logs, address, bind_port, connection_idle_timeout, filter_chains, inspector, "
    "listener_buffer_limit_bytes, listener_filters, listener_filters_timeout, "
    "max_concurrent_handshakes, max_connections, name, "
    "per_connection_buffer_limit_bytes, stream_filters, tls_handshake_timeout, use_original_dst"
)
DURATION = "expected a duration such as '3s' or '250ms', got"
LB_CHOICES = (
    "LB_RANDOM, LB_ROUNDROBIN, LB_WEIGHTED_ROUNDROBIN, LB_LEAST_REQUEST, LB_LEAST_CONNECTION,"
    " LB_REQUEST_ROUNDROBIN, LB_MAGLEV, LB_RING_HASH, LB_ORIGINAL_DST"
)
NO_UP = "unknown cluster 'up' (defined: none)"

BAD_DOCUMENTS = [
    pytest.param(
        lambda d: listener(d).update(address="80"),
        [f"{L0}.address: expected host:port, got '80'"],
        id="address-without-port",
    ),
    pytest.param(
        lambda d: listener(d).update(address="127.0.0.1:70000"),
        [f"{L0}.address: port out of range 0-65535 in '127.0.0.1:70000'"],
        id="port-out-of-range",
    ),
    pytest.param(
        lambda d: listener(d).update(address="::1:8080"),
        [f"{L0}.address: expected host:port with an IPv6 host in brackets, got '::1:8080'"],
        id="ipv6-without-brackets",
    ),
    pytest.param(
        lambda d: listener(d).update(address="[fe80::zz]:80"),
        [f"{L0}.address: invalid IPv6 address in '[fe80::zz]:80'"],
        id="invalid-ipv6",
    ),
    pytest.param(
        lambda d: host(d).update(address=8080),
        [f"{C0}.hosts[0].address: expected host:port, got 8080"],
        id="address-not-a-string",
    ),
    pytest.param(
        lambda d: listener(d).update(adress="127.0.0.1:1"),
        [f"{L0}.adress: unknown key (known keys: {LISTENER_KEYS})"],
        id="unknown-key",
    ),
    pytest.param(
        lambda d: listener(d).update(Name="other"),
        [f"{L0}.name: duplicate key (also given as 'name')"],
        id="same-key-in-two-cases",
    ),
    pytest.param(
        lambda d: filters(d)[0].update(type="tcpproxy"),
        [
            f"{F0}[0].type: unknown network filter type 'tcpproxy'"
            f" (known: {', '.join(known_filters('network'))})"
        ],
        id="unknown-filter-type",
    ),
    pytest.param(
        lambda d: filters(d)[0].pop("type"),
        [f"{F0}[0].type: required field missing"],
        id="filter-without-type",
    ),
    pytest.param(
        lambda d: filters(d)[0].update(type="echo"),
        [f"{F0}[0].config: filter 'echo' takes no config"],
        id="config-for-a-filter-without-one",
    ),
    pytest.param(
        lambda d: filters(d)[0]["config"].update(route=[]),
        [
            f"{F0}[0].config.route: unknown key "
            "(known keys: cluster, idle_timeout, max_connect_attempts, stat_prefix)"
        ],
        id="unknown-key-in-filter-config",
    ),
    pytest.param(
        lambda d: filters(d)[0]["config"].update(cluster="down"),
        [f"{F0}[0].config.cluster: unknown cluster 'down' (defined: up)"],
        id="undefined-cluster",
    ),
    pytest.param(
        lambda d: filters(d)[0]["config"].update(max_connect_attempts=0),
        [f"{F0}[0].config.max_connect_attempts: expected an integer of at least 1, got 0"],
        id="zero-connect-attempts",
    ),
    pytest.param(
        lambda d: d["cluster_manager"]["clusters"].append({"Name": "up"}),
        ["cluster_manager.clusters[1].name: duplicate cluster name 'up'"],
        id="duplicate-cluster",
    ),
    pytest.param(
        lambda d: d["servers"].append({"listeners": [copy.deepcopy(listener(d))]}),
        ["servers[1].listeners[0].name: duplicate listener name 'l'"],
        id="duplicate-listener-across-servers",
    ),
    pytest.param(
        lambda d: cluster(d).pop("name"),
        [f"{C0}.name: required field missing", f"{F0}[0].config.cluster: {NO_UP}"],
        id="cluster-without-name",
    ),
    pytest.param(
        lambda d: host(d).update(weight=0),
        [f"{C0}.hosts[0].weight: expected a weight from 1 to 128, got 0"],
        id="weight-0",
    ),
    pytest.param(
        lambda d: host(d).update(weight=129),
        [f"{C0}.hosts[0].weight: expected a weight from 1 to 128, got 129"],
        id="weight-129",
    ),
    pytest.param(
        lambda d: cluster(d).update(connect_timeout="3x"),
        [f"{C0}.connect_timeout: {DURATION} '3x'"],
        id="bad-duration-unit",
    ),
    pytest.param(
        lambda d: cluster(d).update(connect_timeout=3),
        [f"{C0}.connect_timeout: {DURATION} 3"],
        id="number-for-duration",
    ),
    pytest.param(
        lambda d: listener(d).update(connection_idle_timeout="-1s"),
        [f"{L0}.connection_idle_timeout: {DURATION} '-1s'"],
        id="negative-duration",
    ),
    pytest.param(
        lambda d: cluster(d).update(lb_type="LB_MAGIC"),
        [f"{C0}.lb_type: expected one of {LB_CHOICES}, got 'LB_MAGIC'"],
        id="unknown-lb-type",
    ),
    pytest.param(
        lambda d: cluster(d).update(type="EDS"),
        [
            f"{C0}.type: expected one of SIMPLE, STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST,"
            " got 'EDS'"
        ],
        id="unknown-cluster-type",
    ),
    pytest.param(
        lambda d: cluster(d).update(max_request_per_conn="80"),
        [f"{C0}.max_request_per_conn: expected an integer, got '80'"],
        id="string-for-integer",
    ),
    pytest.param(
        lambda d: cluster(d).update(max_request_per_conn=True),
        [f"{C0}.max_request_per_conn: expected an integer, got True"],
        id="bool-for-integer",
    ),
    pytest.param(
        lambda d: cluster(d).update(circuit_breakers=[{"max_connections": 0}]),
        [f"{C0}.circuit_breakers[0].max_connections: expected an integer of at least 1, got 0"],
        id="zero-circuit-breaker",
    ),
    pytest.param(
        lambda d: listener(d).update(bind_port="yes"),
        [f"{L0}.bind_port: expected true or false, got 'yes'"],
        id="string-for-bool",
    ),
    pytest.param(
        lambda d: cluster(d).update(name=5),
        [f"{C0}.name: expected a string, got 5", f"{F0}[0].config.cluster: {NO_UP}"],
        id="number-for-string",
    ),
    pytest.param(
        lambda d: d["servers"][0].update(default_log_level="LOUD"),
        [
            "servers[0].default_log_level: expected one of TRACE, DEBUG, INFO, WARN, WARNING, "
            "ERROR, FATAL, CRITICAL, got 'LOUD'"
        ],
        id="unknown-log-level",
    ),
    pytest.param(
        lambda d: listener(d).pop("filter_chains"),
        [f"{L0}.filter_chains: a listener needs one filter chain"],
        id="no-filter-chain",
    ),
    pytest.param(
        lambda d: listener(d)["filter_chains"].append({"filters": [{"type": "echo"}]}),
        [
            f"{L0}.filter_chains[1].filter_chain_match: a second chain without a match"
            f" ({L0}.filter_chains[0] has none): give each chain but one a filter_chain_match"
            " that tells them apart"
        ],
        id="two-filter-chains",
    ),
    pytest.param(
        lambda d: listener(d)["filter_chains"][0].update(filters=[]),
        [f"{F0}: a filter chain needs at least one network filter"],
        id="empty-filter-chain",
    ),
    pytest.param(
        lambda d: filters(d).append({"type": "echo"}),
        [f"{F0}[0].type: 'tcp_proxy' must be the last filter"],
        id="terminal-filter-not-last",
    ),
    pytest.param(
        lambda d: [
            listener(d).update(address="127.0.0.1:7000"),
            d["servers"][0]["listeners"].append({**listener(d), "name": "l2"}),
        ],
        ["servers[0].listeners[1].address: duplicate listener address '127.0.0.1:7000'"],
        id="two-listeners-on-one-fixed-address",
    ),
    pytest.param(
        lambda d: listener(d).update(address="127.0.0.1:\u0663"),
        [f"{L0}.address: expected host:port, got '127.0.0.1:\u0663'"],
        id="non-ascii-digit-port",
    ),
    pytest.param(
        lambda d: host(d).update(address="[abc]:80"),
        [f"{C0}.hosts[0].address: brackets are for IPv6 hosts only, got '[abc]:80'"],
        id="brackets-around-a-name",
    ),
    pytest.param(
        lambda d: filters(d)[0].update(config=[1]),
        [f"{F0}[0].config: expected a mapping, got [1]"],
        id="filter-config-not-a-mapping",
    ),
    pytest.param(
        lambda d: cluster(d).update(connect_timeout="9" * 30 + "h"),
        [
            f"{C0}.connect_timeout: duration out of range (at most about 292 years), "
            f"got '{'9' * 30}h'"
        ],
        id="duration-out-of-range",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_DOCUMENTS)
def test_bad_document_reports_path_and_reason(mutate, expected: list[str]) -> None:
    doc = minimal_doc()
    parse_config(doc)  # the base document is valid: only the mutation can fail it
    mutate(doc)
    assert_errors(doc, expected)


def test_two_listeners_on_port_zero_do_not_clash() -> None:
    doc = minimal_doc()
    doc["servers"][0]["listeners"].append({**listener(doc), "name": "l2"})
    assert len(parse_config(doc).config.listeners) == 2


def test_mosn_tcpproxy_sample_keys_warn() -> None:
    # MOSN's examples/codes/tcpproxy-sample writes these; they are MOSN's, not typos.
    doc = minimal_doc()
    listener(doc)["log_path"] = "./logs/mosn.log"
    filters(doc)[0]["config"]["routes"] = [{"cluster": "up"}]
    assert sorted(parse_config(doc).warnings) == [
        f"{F0}[0].config.routes: known MOSN key, not implemented yet: ignored",
        f"{L0}.log_path: known MOSN key, not implemented yet: ignored",
    ]


def test_bad_document_in_a_file_reports_the_same_lines(tmp_path: Path) -> None:
    doc = minimal_doc()
    listener(doc)["address"] = "80"
    path = write(tmp_path, "bad.yaml", yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        trio_mesh.load_config(path)
    assert info.value.errors == [f"{L0}.address: expected host:port, got '80'"]


def test_several_errors_are_reported_together() -> None:
    doc = minimal_doc()
    doc["bogus"] = 1
    listener(doc)["address"] = "80"
    listener(doc)["connection_idle_timeout"] = "soon"
    filters(doc)[0]["config"].update(idle_timeout=5, cluster="gone")
    cluster(doc)["lb_type"] = "LB_MAGIC"
    cluster(doc)["max_request_per_conn"] = "80"
    host(doc)["weight"] = 0
    assert_errors(
        doc,
        [
            "bogus: unknown key (known keys: admin, cluster_manager, disable_upgrade,"
            " dynamic_resources, extends, inherit_old_mosnconfig, metrics, node, servers,"
            " static_resources, tracing, xds)",
            f"{L0}.address: expected host:port, got '80'",
            f"{F0}[0].config.idle_timeout: {DURATION} 5",
            f"{F0}[0].config.cluster: unknown cluster 'gone' (defined: up)",
            f"{L0}.connection_idle_timeout: {DURATION} 'soon'",
            f"{C0}.lb_type: expected one of {LB_CHOICES}, got 'LB_MAGIC'",
            f"{C0}.hosts[0].weight: expected a weight from 1 to 128, got 0",
            f"{C0}.max_request_per_conn: expected an integer, got '80'",
        ],
    )


def test_several_validation_errors_are_reported_together() -> None:
    doc = minimal_doc()
    doc["cluster_manager"]["clusters"].append({"name": "up"})
    doc["servers"][0]["listeners"].append(copy.deepcopy(listener(doc)))
    listener(doc, 1)["filter_chains"][0]["filters"] = [
        {"type": "echo"},
        {"type": "tcp_proxy", "config": {"cluster": "gone"}},
    ]
    assert_errors(
        doc,
        [
            "cluster_manager.clusters[1].name: duplicate cluster name 'up'",
            "servers[0].listeners[1].filter_chains[0].filters[0].type: "
            "'echo' must be the last filter",
            "servers[0].listeners[1].name: duplicate listener name 'l'",
            "servers[0].listeners[1].filter_chains[0].filters[1].config.cluster: "
            "unknown cluster 'gone' (defined: up)",
        ],
    )


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "servers: [\n  a: b: c\n")
    with pytest.raises(ConfigError) as info:
        read_config(path)
    (line,) = info.value.errors
    assert line.startswith(f"{path}:2:")
    assert ": invalid YAML: " in line
    assert f'in "{path}", line 2' in line


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{\n  "servers": [}\n')
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert info.value.errors == [f"{path}:2:15: invalid JSON: Expecting value"]


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "mesh.toml", "[servers]\n")
    with pytest.raises(ConfigError) as info:
        trio_mesh.load_config(path)
    assert info.value.errors == [
        f"{path}: unknown config format '.toml' (use .yaml, .yml or .json)"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "latin1.yaml", b"servers: []\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert info.value.errors == [f"{path}: not UTF-8 text: invalid continuation byte"]


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("list.yaml", "- servers: []\n", "list"),
        ("list.json", "[]", "list"),
        ("scalar.yml", "just text\n", "str"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert info.value.errors == [f"{path}: expected a mapping at the top level, got {kind}"]


@pytest.mark.parametrize(("name", "text"), [("empty.yaml", ""), ("null.json", "null")])
def test_an_empty_file_is_named(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert info.value.errors == [f"{path}: empty configuration file"]


# --------------------------------------------------------------------------- filter registry


@frozen(kw_only=True)
class MirrorConfig:
    cluster: str = cluster_ref()
    percent: PositiveInt = PositiveInt(100)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are undone after it."""
    tables = {kind: dict(table) for kind, table in filter_registry._CONFIG_CLASSES.items()}
    monkeypatch.setattr(filter_registry, "_CONFIG_CLASSES", tables)
    monkeypatch.setattr(filter_registry, "_TERMINAL", set(filter_registry._TERMINAL))
    register_filter_config("network", "tap", None)
    register_filter_config("stream", "t_mirror", MirrorConfig)


def proxy_doc() -> dict[str, Any]:
    """``minimal_doc`` with the ``proxy`` filter (stream filters run in it)."""
    doc = minimal_doc()
    filters(doc)[:] = [{"type": "proxy", "config": {"router_config_name": "r"}}]
    doc["servers"][0]["routers"] = [{"router_config_name": "r"}]
    return doc


def test_non_terminal_filter_before_a_terminal_one_loads(registry: None) -> None:
    doc = minimal_doc()
    filters(doc).insert(0, {"type": "tap"})
    chain = parse_config(doc).config.listeners[0].filter_chains[0]
    assert [f.type for f in chain.filters] == ["tap", "tcp_proxy"]


def test_chain_must_end_with_a_terminal_filter(registry: None) -> None:
    doc = minimal_doc()
    filters(doc)[:] = [{"type": "tap"}]
    assert errors_of(doc) == [
        f"{F0}[0].type: the last filter must end the chain (such as tcp_proxy), got 'tap'"
    ]


def test_registered_filter_is_listed_among_known_ones(registry: None) -> None:
    doc = minimal_doc()
    filters(doc)[0]["type"] = "nope"
    assert errors_of(doc) == [
        f"{F0}[0].type: unknown network filter type 'nope'"
        f" (known: {', '.join(known_filters('network'))})"
    ]
    assert "tap" in known_filters("network")


def test_registering_another_class_under_a_taken_name_fails(registry: None) -> None:
    with pytest.raises(ValueError, match="network filter 'tcp_proxy' is already registered"):
        register_filter_config("network", "tcp_proxy", MirrorConfig)
    register_filter_config("network", "tcp_proxy", TcpProxyConfig, terminal=True)  # same: fine


def test_stream_filter_config_is_key_matched_and_structured(registry: None) -> None:
    doc = proxy_doc()
    listener(doc)["Stream_Filters"] = [
        {"type": "t_mirror", "config": {"Cluster": "up", "PERCENT": 5}}
    ]
    (mirror,) = parse_config(doc).config.listeners[0].stream_filters
    assert (mirror.type, mirror.config) == ("t_mirror", MirrorConfig(cluster="up", percent=5))


def test_stream_filter_config_errors_have_paths(registry: None) -> None:
    doc = proxy_doc()
    listener(doc)["stream_filters"] = [
        {"type": "t_mirror", "config": {"cluster": "shadow", "percent": 0}},
        {"type": "gzipp"},
    ]
    assert_errors(
        doc,
        [
            f"{L0}.stream_filters[0].config.percent: expected an integer of at least 1, got 0",
            f"{L0}.stream_filters[0].config.cluster: unknown cluster 'shadow' (defined: up)",
            f"{L0}.stream_filters[1].type: unknown stream filter type 'gzipp'"
            f" (known: {', '.join(known_filters('stream'))})",
        ],
    )


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("2h45m", 9900.0),
        (" 3s ", 3.0),
        ("1500000ns", 0.0015),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),
    ],
)
def test_parse_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["", "s", "1", "1.5", "-1s", "+1s", "1S", "1e3s", "0.0", "3x", "1h 2m", "h1"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {text!r}")):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "90s"), (5400, "90m"), (7200, "2h"), (0.25, "250ms"), (0.0005, "500us")],
)
def test_format_duration_examples(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- fixed bugs


@pytest.mark.parametrize(
    ("section", "value"),
    [("cluster_manager", []), ("cluster_manager", "x"), ("servers", "abc"), ("servers", ["x"])],
)
def test_section_of_the_wrong_type_is_an_error(section: str, value: Any) -> None:
    doc = {section: value}
    errors = errors_of(doc)
    assert errors and all(e.startswith(f"{section}") for e in errors)


def test_format_duration_is_exact_for_milliseconds() -> None:
    seconds = parse_duration("11s370ms")
    assert parse_duration(format_duration(seconds)) == seconds


def test_thresholds_lookup_is_case_insensitive() -> None:
    doc = minimal_doc()
    cluster(doc)["circuit_breakers"] = [{"priority": "high", "max_connections": 3}]
    (c,) = parse_config(doc).config.cluster_manager.clusters
    assert c.thresholds("high").max_connections == 3


# --------------------------------------------------------------------------- properties

counts = st.integers(min_value=0, max_value=10_000)


@given(h=counts, m=counts, s=counts, ms=counts)
@example(h=0, m=1, s=30, ms=0)
@example(h=0, m=0, s=11, ms=370)
def test_format_duration_round_trips(h: int, m: int, s: int, ms: int) -> None:
    written = f"{h}h{m}m{s}s{ms}ms"
    seconds = parse_duration(written)
    assert math.isclose(seconds, h * 3600 + m * 60 + s + ms / 1000, rel_tol=1e-12)
    text = format_duration(seconds)
    assert math.isclose(parse_duration(text), seconds, rel_tol=1e-12, abs_tol=1e-12)
    assert re.fullmatch(r"[0-9]+(h|m|s|ms|us|ns)", text)


@given(h=counts, m=counts, s=counts)
def test_format_duration_round_trips_whole_seconds_exactly(h: int, m: int, s: int) -> None:
    seconds = float(h * 3600 + m * 60 + s)
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    if seconds:
        # the largest unit that divides the duration is chosen
        n, unit = int(text[:-1]), text[-1]
        scale = {"h": 3600, "m": 60, "s": 1}[unit]
        assert n * scale == seconds
        assert all(seconds % bigger for bigger in (3600, 60) if bigger > scale)


@given(n=st.integers(min_value=0, max_value=10**6), unit=st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_of_one_part(n: int, unit: str) -> None:
    scale = {"ms": Fraction(1, 1000), "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == float(n * scale)  # the nearest float, exactly


ports = st.integers(min_value=0, max_value=65535)


@given(host=st.ip_addresses(v=4), port=ports)
def test_parse_address_ipv4(host: ipaddress.IPv4Address, port: int) -> None:
    address = parse_address(f"{host}:{port}")
    assert address == Address(host=str(host), port=port)
    assert parse_address(str(address)) == address


@given(host=st.ip_addresses(v=6), port=ports)
def test_parse_address_ipv6(host: ipaddress.IPv6Address, port: int) -> None:
    address = parse_address(f"[{host}]:{port}")
    assert address == Address(host=str(host), port=port)
    assert str(address) == f"[{host}]:{port}"
    assert parse_address(str(address)) == address
    with pytest.raises(ValueError, match="brackets"):
        parse_address(f"{host}:{port}")


@given(host=st.ip_addresses(), port=ports)
def test_parse_address_socket_address_form(
    host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    value = {"socket_address": {"address": str(host), "port_value": port}}
    assert parse_address(value) == Address(host=str(host), port=port)


@given(port=st.integers(min_value=65536, max_value=10**9))
def test_parse_address_rejects_large_ports(port: int) -> None:
    with pytest.raises(ValueError, match="port out of range"):
        parse_address(f"127.0.0.1:{port}")


garbage = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.:[]abcdefhmnsu\u00b5 -+"),
    st.lists(
        st.tuples(
            st.text(alphabet="0123456789.", max_size=4),
            st.sampled_from(["ns", "us", "\u00b5s", "ms", "s", "m", "h", "x", ""]),
        ),
        max_size=4,
    ).map(lambda parts: "".join(n + u for n, u in parts)),
)


@given(text=garbage)
def test_parse_duration_of_garbage_returns_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert isinstance(seconds, float)
        assert seconds >= 0


@given(text=st.one_of(garbage, st.from_regex(r"\[?[0-9a-f:.]{0,20}\]?:[0-9]{0,6}")))
def test_parse_address_of_garbage_returns_or_raises_value_error(text: str) -> None:
    try:
        address = parse_address(text)
    except ValueError:
        pass
    else:
        assert isinstance(address, Address)
        assert 0 <= address.port <= 65535
        assert address.host


def test_access_log_format_is_checked_at_load_time() -> None:
    doc = minimal_doc()
    listener(doc)["access_logs"] = [
        {"log_path": "stdout", "log_format": "%start_time% %response_code%"},
        {"log_path": "stdout", "log_format": "%start_time% %respone_code%"},
    ]
    (line,) = errors_of(doc)
    assert line.startswith(
        f"{L0}.access_logs[1].log_format: unknown access log variable %respone_code% (known: "
    )
