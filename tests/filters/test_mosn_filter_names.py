"""MOSN's example configurations name filters and values trio-mesh once refused: its
``healthcheck`` stream filter on a bolt listener, ``ip_access`` with ``header: ""``, and its
flow control filter's type name ``flowControlFilter``. Configs of our own writing with the same
keys, each run through a real proxy on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from tests.http_helpers import (
    Client,
    get,
    http_config,
    running_proxy,
    start_proxy,
    start_upstream,
    to,
)
from tests.rpc_helpers import BoltClient, echo_upstream, request
from trio_mesh.config import ConfigError, parse_config
from trio_mesh.protocols.xprotocol.bolt import BOLT, ResponseStatus

ROUTE_ANY_SERVICE = {
    "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
    "route": {"cluster_name": "up"},
}


def bolt_config(up: int, stream_filters: list) -> object:
    return http_config(
        routes=[ROUTE_ANY_SERVICE],
        clusters={"up": up},
        proxy={"downstream_protocol": "bolt"},
        listener={"stream_filters": stream_filters},
    )


# --------------------------------------------------------------------------- healthcheck


async def test_mosn_healthcheck_filter_answers_bolt_heartbeats_locally(nursery):
    seen: list = []
    up = await echo_upstream(nursery, seen=seen)
    # MOSN's keys (its sofarpc example writes an empty config).
    config = bolt_config(
        up,
        [
            {
                "type": "healthcheck",
                "config": {
                    "passthrough": False,
                    "cache_time": "10m",
                    "endpoint": "x",
                    "cluster_min_healthy_percentages": {"up": 10.0},
                },
            }
        ],
    )
    _, port = await start_proxy(nursery, config)
    c = await BoltClient.connect(port)
    await c.send(BOLT.heartbeat_request(7))
    hb = await c.read()
    assert hb.is_heartbeat and hb.is_response and hb.request_id == 7
    assert hb.status == ResponseStatus.SUCCESS
    await c.send(request(8, b"payload"))  # ordinary requests still go upstream
    answer = await c.read()
    assert answer.request_id == 8 and not answer.is_heartbeat
    assert not any(f.is_heartbeat for f in seen)  # the heartbeat never left the proxy


async def test_healthcheck_answers_even_with_the_upstream_down(nursery):
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    _, port = await start_proxy(nursery, bolt_config(dead, [{"type": "healthcheck", "config": {}}]))
    c = await BoltClient.connect(port)
    await c.send(BOLT.heartbeat_request(1))
    hb = await c.read()
    assert hb.is_heartbeat and hb.request_id == 1 and hb.status == ResponseStatus.SUCCESS


def test_healthcheck_loads_without_warnings_and_empty_config():
    loaded = parse_config(
        {
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "b",
                            "address": "127.0.0.1:0",
                            "filter_chains": [
                                {
                                    "filters": [
                                        {
                                            "type": "proxy",
                                            "config": {
                                                "downstream_protocol": "bolt",
                                                "router_config_name": "r",
                                            },
                                        }
                                    ]
                                }
                            ],
                            "stream_filters": [{"type": "healthcheck", "config": {}}],
                        }
                    ],
                    "routers": [{"router_config_name": "r", "virtual_hosts": []}],
                }
            ]
        }
    )
    assert loaded.warnings == ()
    (f,) = loaded.config.listeners[0].stream_filters
    assert f.type == "healthcheck"


def test_healthcheck_passthrough_is_refused_with_the_reason():
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "b",
                        "address": "127.0.0.1:0",
                        "filter_chains": [{"filters": [{"type": "echo"}]}],
                        "stream_filters": [
                            {"type": "healthcheck", "config": {"passthrough": True}}
                        ],
                    }
                ]
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    (line,) = info.value.errors
    assert line.startswith("servers[0].listeners[0].stream_filters[0].config.passthrough: ")
    assert "answers RPC heartbeats itself" in line


# --------------------------------------------------------------------------- ip_access


async def test_ip_access_with_empty_header_uses_the_connection_address(nursery):
    up = await start_upstream(nursery)
    # MOSN's example: header "" with a deny list holding the client's address.
    listener = {
        "stream_filters": [
            {
                "type": "ip_access",
                "config": {
                    "header": "",
                    "default_action": "allow",
                    "ips": [{"action": "deny", "addrs": ["127.0.0.1"]}],
                },
            }
        ]
    }
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            # A header claiming another address changes nothing: no header is read.
            await client.send(get("/echo", headers="x-forwarded-for: 10.1.2.3\r\n"))
            denied = await client.response()
    assert denied.status == 403
    assert up.requests == []


async def test_ip_access_with_empty_header_allows_by_connection_address(nursery):
    up = await start_upstream(nursery)
    listener = {
        "stream_filters": [
            {
                "type": "ip_access",
                "config": {"header": "", "action": "allow", "ips": ["127.0.0.1"]},
            }
        ]
    }
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            allowed = await client.response()
    assert allowed.status == 200


def test_ip_access_header_of_blanks_stays_an_error():
    with pytest.raises(ConfigError) as info:
        http_config(
            [to()],
            {"up": 1},
            listener={
                "stream_filters": [
                    {
                        "type": "ip_access",
                        "config": {"header": "  ", "action": "allow", "ips": ["127.0.0.1"]},
                    }
                ]
            },
        )
    assert any(e.endswith("config.header: expected a header name") for e in info.value.errors)


# --------------------------------------------------------------------------- flowControlFilter


async def test_flow_control_filter_is_mosns_name_for_flowcontrol(nursery):
    up = await start_upstream(nursery)
    # MOSN's flowcontrol-sample keys, as written there (Sentinel's camelCase included).
    listener = {
        "stream_filters": [
            {
                "type": "flowControlFilter",
                "config": {
                    "global_switch": True,
                    "limit_key_type": "PATH",
                    "action": {"status": 500, "body": "blocked"},
                    "rules": [
                        {
                            "resource": "/echo",
                            "grade": 1,
                            "threshold": 1,
                            "statIntervalInMs": 60000,
                        }
                    ],
                },
            }
        ]
    }
    config = http_config([to()], {"up": up.port}, listener=listener)
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            await client.send(get("/echo"))
            first = await client.response()
            await client.send(get("/echo"))
            second = await client.response()
            await client.send(get("/other"))
            other = await client.response()
    assert first.status == 200
    assert second.status == 500 and second.body == b"blocked"
    assert other.status != 500  # no rule names /other
    assert [r["target"] for r in up.requests] == ["/echo", "/other"]


def test_flow_control_rules_from_a_data_source_are_refused():
    listener = {
        "stream_filters": [
            {
                "type": "flowControlFilter",
                "config": {
                    "dynamic_data_resources": [{"resource_type": "nacos", "config": {}}],
                    "rules": [{"resource": "/a", "threshold": 1}],
                },
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        http_config([to()], {"up": 1}, listener=listener)
    assert info.value.errors == [
        "servers[0].listeners[0].stream_filters[0].config.dynamic_data_resources: rules from a"
        " data source (Nacos, ...) are not supported: give the rules inline in 'rules'"
    ]


async def test_flow_control_filter_is_off_unless_switched_on_as_in_mosn(nursery):
    # MOSN's Config.GlobalSwitch defaults to false and its filter then passes every request:
    # the same rules under MOSN's name, without global_switch, limit nothing.
    up = await start_upstream(nursery)
    rules = [{"resource": "/echo", "threshold": 1, "statIntervalInMs": 60000}]
    listener = {"stream_filters": [{"type": "flowControlFilter", "config": {"rules": rules}}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    assert config.listeners[0].stream_filters[0].config.global_switch is False
    async with running_proxy(config) as (_, port):
        async with await Client.connect(port) as client:
            statuses = []
            for _ in range(3):
                await client.send(get("/echo"))
                statuses.append((await client.response()).status)
    assert statuses == [200, 200, 200]
    # trio-mesh's own name keeps its default (on): the second request is refused.
    listener = {"stream_filters": [{"type": "flowcontrol", "config": {"rules": rules}}]}
    config = http_config([to()], {"up": up.port}, listener=listener)
    assert config.listeners[0].stream_filters[0].config.global_switch is True


def test_flow_control_filter_empty_config_loads_off():
    # MOSN accepts {} (switched off); trio-mesh's "needs a bucket or rules" is for a filter
    # that is on.
    listener = {"stream_filters": [{"type": "flowControlFilter", "config": {}}]}
    config = http_config([to()], {"up": 1}, listener=listener)
    assert config.listeners[0].stream_filters[0].config.global_switch is False
