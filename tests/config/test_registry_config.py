"""MOSN's ``extends: [{type: dubbo_registry, config}]``: loading from YAML and MOSN's JSON,
errors with their paths (the whole configuration refused), warnings, the defaults."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from trio_mesh.config import ConfigError, MeshConfig, parse_config, read_config
from trio_mesh.config.registry import (
    DubboRegistryConfig,
    ExtendConfig,
    dubbo_registry_config,
)

P = "extends[0].config"
MOSN_EXAMPLE = {"enable": True, "server_port": 20080, "api_port": 10022, "log_path": "/tmp"}


def doc(registry: Any = MOSN_EXAMPLE, *, port: int = 20080, **top: Any) -> dict[str, Any]:
    """A listener ``dubbo_in`` on ``port`` and MOSN's dubbo_registry example (or ``registry``)."""
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "dubbo_in",
                        "address": f"127.0.0.1:{port}",
                        "filter_chains": [
                            {"filters": [{"type": "tcp_proxy", "config": {"cluster": "up"}}]}
                        ],
                    }
                ]
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:1"}]}]},
        "extends": [{"type": "dubbo_registry", "config": copy.deepcopy(registry)}],
        **top,
    }


def with_(**changes: Any) -> dict[str, Any]:
    return doc({**MOSN_EXAMPLE, **changes})


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return info.value.errors


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_mosns_example_loads_from_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    document = doc()
    path = tmp_path / f"mosn{suffix}"
    path.write_text(json.dumps(document) if suffix == ".json" else yaml.safe_dump(document))
    loaded = read_config(path)
    assert loaded.warnings == ()
    assert loaded.config.extends == (ExtendConfig(type="dubbo_registry", config=MOSN_EXAMPLE),)
    assert dubbo_registry_config(loaded.config) == DubboRegistryConfig(
        enable=True, server_port=20080, api_port=10022, log_path="/tmp"
    )


def test_mosn_json_keys_match_case_insensitively() -> None:
    document = doc()
    document["Extends"] = [
        {"Type": "dubbo_registry", "Config": {"Enable": True, "Server_Port": 20080}}
    ]
    del document["extends"]
    registry = dubbo_registry_config(parse_config(document).config)
    assert registry is not None and registry.server_port == 20080


def test_defaults() -> None:
    registry = dubbo_registry_config(
        parse_config(doc({"enable": True, "server_port": 20080})).config
    )
    assert registry == DubboRegistryConfig(enable=True, server_port=20080)
    assert registry.api_port == 22222  # MOSN's
    assert registry.api_host == "127.0.0.1"
    assert registry.router_config_name == "dubbo"
    assert (registry.registry_timeout, registry.session_timeout) == (5.0, 10.0)
    assert registry.empty_protection is True
    assert registry.advertise_ip is None  # resolved by registry.address.primary_ip


def test_ours_keys_and_durations_as_the_rest_of_the_config_writes_them() -> None:
    config = parse_config(
        doc(
            {
                "enable": True,
                "server_listener": "dubbo_in",
                "api_port": 0,
                "api_host": "::1",
                "advertise_ip": "10.1.2.3",
                "router_config_name": "rpc",
                "registry_timeout": "250ms",
                "session_timeout": "1m",
                "empty_protection": False,
            },
            port=0,
        )
    ).config
    registry = dubbo_registry_config(config)
    assert registry is not None
    assert registry.server_listener == "dubbo_in" and registry.server_port is None
    assert registry.api_port == 0 and registry.api_host == "::1"
    assert (registry.registry_timeout, registry.session_timeout) == (0.25, 60.0)
    assert registry.router_config_name == "rpc" and registry.empty_protection is False


def test_enable_false_loads_and_does_nothing() -> None:
    # MOSN's own parser ignores a disabled block: the listener need not be there.
    loaded = parse_config(doc({"enable": False, "server_port": 20080}, port=1234))
    assert loaded.warnings == ()
    assert dubbo_registry_config(loaded.config) is None
    assert dubbo_registry_config(parse_config(doc({})).config) is None


def test_no_extends_is_no_registry() -> None:
    document = doc()
    del document["extends"]
    config = parse_config(document).config
    assert config.extends == ()
    assert dubbo_registry_config(config) is None
    assert dubbo_registry_config(MeshConfig()) is None


def test_an_unknown_extension_warns_and_is_ignored() -> None:
    document = doc()
    document["extends"].append({"type": "holmes", "config": {"anything": [1, 2]}})
    loaded = parse_config(document)
    assert loaded.warnings == ("extends[1].type: 'holmes' is not a known extension: ignored",)
    assert dubbo_registry_config(loaded.config) is not None


def test_server_port_without_its_listener_only_warns_when_xds_brings_listeners() -> None:
    loaded = parse_config(doc(port=1234, xds={"address": "127.0.0.1:15010", "node_id": "n"}))
    assert loaded.warnings == (
        f"{P}.server_port: no listener here on port 20080: the control plane must send it",
    )


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            with_(api_port=70000),
            [f"{P}.api_port: expected a port number (0-65535), got 70000"],
        ),
        (
            with_(api_port=-1),
            [f"{P}.api_port: expected a port number (0-65535), got -1"],
        ),
        (
            with_(server_port=0),
            [f"{P}.server_port: expected a port number (1-65535), got 0"],
        ),
        (
            with_(server_port=65536),
            [f"{P}.server_port: expected a port number (1-65535), got 65536"],
        ),
        (
            with_(api_port="10022"),
            [f"{P}.api_port: expected an integer, got '10022'"],
        ),
        (
            with_(enable="yes"),
            [f"{P}.enable: expected true or false, got 'yes'"],
        ),
        (
            doc({"enable": True, "api_port": 10022}),
            [
                f"{P}.server_port: required with enable: true: the port of the proxy's listener"
                " that published providers are reached at (or name that listener with"
                " server_listener)"
            ],
        ),
        (
            with_(server_listener="dubbo_in", server_port=20081),
            [
                f"{P}.server_port: 20081 is not the port of listener 'dubbo_in' (20080):"
                " give one of the two"
            ],
        ),
        (
            with_(server_listener="nope"),
            [f"{P}.server_listener: unknown listener 'nope' (defined: dubbo_in)"],
        ),
        (
            with_(server_port=20081),
            [
                f"{P}.server_port: no listener on port 20081: published providers would be"
                " unreachable"
            ],
        ),
        (
            with_(api_host="0.0.0.0"),
            [
                f"{P}.api_host: '0.0.0.0' is not a loopback address; the registry API publishes"
                " services and changes the proxy's routes: set allow_non_loopback: true to"
                " serve it there"
            ],
        ),
        (
            with_(advertise_ip="host.example"),
            [f"{P}.advertise_ip: expected an IP address, got 'host.example'"],
        ),
        (
            with_(advertise_ip="0.0.0.0"),
            [f"{P}.advertise_ip: 0.0.0.0 is not an address the providers can be reached at"],
        ),
        (
            with_(log_path=""),
            [f"{P}.log_path: expected a directory path, got ''"],
        ),
        (
            with_(log_path=["/tmp"]),
            [f"{P}.log_path: expected a string, got ['/tmp']"],
        ),
        (
            with_(registry_timeout="0s", session_timeout="soon"),
            [
                f"{P}.session_timeout: expected a duration such as '3s' or '250ms', got 'soon'",
            ],
        ),
        (
            with_(registry_timeout="0s"),
            [f"{P}.registry_timeout: expected a positive duration"],
        ),
        (
            with_(router_config_name=""),
            [f"{P}.router_config_name: expected a router config name, got ''"],
        ),
        (
            doc("enable"),
            ["extends[0].config: expected a mapping"],
        ),
    ],
)
def test_bad_values_name_their_path_and_refuse_the_config(
    document: dict[str, Any], expected: list[str]
) -> None:
    assert sorted(errors_of(document)) == sorted(expected)


def test_an_unknown_key_is_reported_as_the_rest_of_the_config_reports_them() -> None:
    (error,) = errors_of(with_(api_prot=10022))
    assert error == (
        f"{P}.api_prot: unknown key (known keys: advertise_ip, allow_non_loopback, api_host,"
        " api_port, empty_protection, enable, log_path, registry_timeout, router_config_name,"
        " server_listener, server_port, session_timeout)"
    )


def test_an_unknown_key_inside_a_disabled_block_is_still_an_error() -> None:
    (error,) = errors_of(doc({"enable": False, "bogus": 1}))
    assert error.startswith(f"{P}.bogus: unknown key")


def test_an_unknown_key_of_an_extends_entry_is_an_error() -> None:
    document = doc()
    document["extends"][0]["enabled"] = True
    (error,) = errors_of(document)
    assert error == "extends[0].enabled: unknown key (known keys: config, type)"


def test_extends_of_the_wrong_shape() -> None:
    assert errors_of(doc() | {"extends": {"dubbo_registry": MOSN_EXAMPLE}}) == [
        "extends: expected a list, got {'dubbo_registry': " + repr(MOSN_EXAMPLE) + "}"
    ]
    assert errors_of(doc() | {"extends": [{"config": {}}]}) == [
        "extends[0].type: required field missing"
    ]


def test_two_dubbo_registries_are_refused() -> None:
    document = doc()
    document["extends"].append(copy.deepcopy(document["extends"][0]))
    assert errors_of(document) == ["extends[1].type: a second dubbo_registry (extends[0] is one)"]


def test_a_non_loopback_api_host_needs_allow_non_loopback() -> None:
    for host in ("0.0.0.0", "::", "10.0.0.1", "api.example"):
        (error,) = errors_of(with_(api_host=host))
        assert error.startswith(f"{P}.api_host: {host!r} is not a loopback address")
        registry = dubbo_registry_config(
            parse_config(with_(api_host=host, allow_non_loopback=True)).config
        )
        assert registry is not None and registry.api_host == host
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert parse_config(with_(api_host=host)).warnings == ()


def test_every_error_is_reported_together() -> None:
    errors = errors_of(with_(api_port=70000, api_host="10.0.0.1", server_port=20081))
    assert {e.split(":", 1)[0] for e in errors} == {
        f"{P}.api_port",
        f"{P}.api_host",
        f"{P}.server_port",
    }


def test_a_programmatic_config_that_skipped_validation_is_refused_by_the_accessor() -> None:
    config = attrs.evolve(
        parse_config(doc()).config,
        extends=(ExtendConfig(type="dubbo_registry", config={"enable": True, "api_port": -5}),),
    )
    with pytest.raises(ConfigError, match=r"extends\[0\]\.config\.api_port"):
        dubbo_registry_config(config)


def test_server_listener_and_a_matching_server_port_load() -> None:
    registry = dubbo_registry_config(parse_config(with_(server_listener="dubbo_in")).config)
    assert registry is not None
    assert (registry.server_listener, registry.server_port) == ("dubbo_in", 20080)
