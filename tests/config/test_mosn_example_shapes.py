"""Shapes MOSN's own example configurations (examples/codes in mosn/mosn) use, in documents of
our own writing: each loads as MOSN meant it, or is refused with the true reason, at its path."""

from __future__ import annotations

from typing import Any

import pytest

from trio_mesh.config import ConfigError, parse_config


def listener(**extra: Any) -> dict[str, Any]:
    return {
        "address": "127.0.0.1:0",
        "filter_chains": [{"filters": [{"type": "echo"}]}],
        **extra,
    }


def doc(*listeners: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"servers": [{"listeners": list(listeners)}], **top}


def refused(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return info.value.errors


def test_an_unnamed_listener_is_named_by_its_address_as_in_mosn():
    loaded = parse_config(doc(listener(address="127.0.0.1:2045")))
    assert loaded.config.listeners[0].name == "127.0.0.1:2045"
    assert loaded.warnings == ()


def test_two_unnamed_listeners_on_different_addresses_both_load():
    loaded = parse_config(
        doc(listener(address="127.0.0.1:2045"), listener(address="127.0.0.1:2046"))
    )
    assert [lst.name for lst in loaded.config.listeners] == ["127.0.0.1:2045", "127.0.0.1:2046"]


def test_tproxy_is_refused_as_tproxy():
    errors = refused(doc(listener(name="t", use_original_dst="tproxy")))
    assert errors == [
        "servers[0].listeners[0].use_original_dst: tproxy (transparent proxying with"
        " IP_TRANSPARENT) is not supported; true (connections redirected with iptables"
        " REDIRECT) is"
    ]


def test_a_unix_socket_address_is_refused_as_such():
    errors = refused(doc(listener(name="u", address="/tmp/x.sock")))
    assert errors == [
        "servers[0].listeners[0].address: unix domain socket addresses are not supported,"
        " got '/tmp/x.sock': use host:port"
    ]
    errors = refused(
        {"cluster_manager": {"clusters": [{"name": "c", "hosts": [{"address": "unix:/x.sock"}]}]}}
    )
    assert errors == [
        "cluster_manager.clusters[0].hosts[0].address: unix domain socket addresses are not"
        " supported, got 'unix:/x.sock': use host:port"
    ]


def test_envoy_runtime_layers_are_refused_with_the_reason():
    errors = refused(doc(listener(name="a"), layered_runtime={"layers": [{"name": "r0"}]}))
    assert errors == [
        "layered_runtime: Envoy's runtime (layered_runtime, RTDS) is not supported: remove it to"
        " run without runtime overrides"
    ]


def test_slow_start_loads_with_a_warning():
    loaded = parse_config(
        {
            "cluster_manager": {
                "clusters": [
                    {
                        "name": "c",
                        "hosts": [{"address": "127.0.0.1:1"}],
                        "slow_start": {"mode": "duration", "slow_start_duration": "10s"},
                    }
                ]
            }
        }
    )
    assert loaded.warnings == (
        "cluster_manager.clusters[0].slow_start: known MOSN key, not implemented yet: ignored",
    )


def test_proxy_before_tcp_proxy_names_mosns_fallback():
    proxy = {
        "type": "proxy",
        "config": {"fallback_for_unknown_protocol": True, "router_config_name": "r"},
    }
    document = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "f",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {"filters": [proxy, {"type": "tcp_proxy", "config": {"cluster": "c"}}]}
                        ],
                    }
                ],
                "routers": [{"router_config_name": "r", "virtual_hosts": []}],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}]}]},
    }
    errors = refused(document)
    assert errors == [
        "servers[0].listeners[0].filter_chains[0].filters[0].type: 'proxy' must be the last"
        " filter (passing a connection of an unknown protocol on to the next filter, MOSN's"
        " fallback_for_unknown_protocol, is not supported)"
    ]


def test_a_zero_idle_timeout_written_as_a_number_means_never():
    loaded = parse_config(doc(listener(name="a", connection_idle_timeout=0)))
    assert loaded.config.listeners[0].connection_idle_timeout == 0
    # Any other bare number stays an error (MOSN reads nanoseconds, people write seconds).
    errors = refused(doc(listener(name="a", connection_idle_timeout=30)))
    assert errors == [
        "servers[0].listeners[0].connection_idle_timeout: expected a duration such as '3s' or"
        " '250ms', got 30"
    ]


def test_a_non_loopback_admin_stays_refused():
    # MOSN's examples serve the admin API on 0.0.0.0: a security choice, never a warning.
    errors = refused(
        doc(
            listener(name="a"),
            admin={"address": {"socket_address": {"address": "0.0.0.0", "port_value": 34901}}},
        )
    )
    assert len(errors) == 1 and "allow_non_loopback" in errors[0]


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    [
        ("stream", "proxywasm", "MOSN's WebAssembly filter: WebAssembly filters are not supported"),
        ("stream", "loadso", "a MOSN Go plugin: Go code cannot run here"),
        ("stream", "jwt_authn", "JWT authentication is not supported"),
        ("network", "udp_proxy", "UDP proxying is not supported (TCP only)"),
        ("network", "tunnel", "MOSN's tunnel is not supported"),
    ],
)
def test_mosn_filters_trio_mesh_lacks_are_refused_saying_why(kind, name, why):
    lst = listener(name="a")
    if kind == "stream":
        lst["stream_filters"] = [{"type": name, "config": {}}]
        path = "servers[0].listeners[0].stream_filters[0].type"
    else:
        lst["filter_chains"] = [{"filters": [{"type": name, "config": {}}]}]
        path = "servers[0].listeners[0].filter_chains[0].filters[0].type"
    (line,) = refused(doc(lst))
    assert line.startswith(f"{path}: unknown {kind} filter type {name!r}: {why}")
    assert "(known: " in line


def test_a_document_that_is_no_configuration_says_so_once():
    dashboard = {f"k{i}": i for i in range(8)} | {"panels": [], "title": "MOSN"}
    (line,) = refused(dashboard)
    assert line.startswith("not a proxy configuration: no known top-level key in k0, k1, k2,")
    assert "(known: admin," in line


def test_envoy_go_extension_stream_filters_at_the_top_are_refused_with_the_reason():
    errors = refused(doc(listener(name="a"), stream_filters=[{"name": "demo"}]))
    assert errors == [
        "stream_filters: a top-level stream_filters list is the configuration of MOSN's Envoy"
        " Go extension, which trio-mesh is not: give stream_filters on a listener"
    ]


def test_a_socket_address_port_written_as_a_string_loads():
    address = {"socket_address": {"address": "127.0.0.1", "port_value": "15000"}}
    loaded = parse_config(doc(listener(name="a"), admin={"address": address}))
    assert loaded.config.admin is not None and loaded.config.admin.address.port == 15000


def test_the_original_dst_listener_filter_takes_mosns_type():
    redirect = [{"type": "original_dst", "config": {"type": "redirect"}}]
    loaded = parse_config(doc(listener(name="a", listener_filters=redirect)))
    assert loaded.config.listeners[0].listener_filters[0].type == "original_dst"
    tproxy = [{"type": "original_dst", "config": {"type": "tproxy"}}]
    errors = refused(doc(listener(name="a", listener_filters=tproxy)))
    assert errors == [
        "servers[0].listeners[0].listener_filters[0].config.type: tproxy (transparent proxying"
        " with IP_TRANSPARENT) is not supported; redirect (iptables REDIRECT) is"
    ]


def test_an_unknown_protocol_name_says_how_codecs_are_added():
    proxy = {
        "type": "proxy",
        "config": {"downstream_protocol": "x_example", "router_config_name": "r"},
    }
    document = doc(listener(name="a", filter_chains=[{"filters": [proxy]}]))
    document["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": []}]
    errors = refused(document)
    assert errors == [
        "servers[0].listeners[0].filter_chains[0].filters[0].config.downstream_protocol:"
        " expected one of Http1, Http2, Auto, X, bolt, dubbo, got 'x_example' (another RPC"
        " codec: X with extend_config.sub_protocol naming a codec registered in Python, see"
        " docs/xprotocol.md; MOSN's Go plugin codecs cannot run here)"
    ]
