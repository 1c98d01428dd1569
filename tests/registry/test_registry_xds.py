"""The registry beside xDS: a route configuration named as the registry's router, delivered
by a real ADS server, takes the subscriptions' routes (it is not a second ``dubbo`` router)."""

from __future__ import annotations

import importlib.util

import pytest
import trio

from trio_mesh import Server
from trio_mesh.config import parse_config

from ..xds.test_xds import ads, eds_cluster, endpoints, listener, routes  # noqa: F401
from ..xds.test_xds_client import TIMEOUT, ServerProcess

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)


async def test_an_xds_route_config_named_as_the_registry_router_is_accepted(
    nursery: trio.Nursery,
    ads: ServerProcess,  # noqa: F811
) -> None:
    config = parse_config(
        {
            "xds": {"address": f"127.0.0.1:{ads.port}", "node_id": "t"},
            # A static part with a server: the registry's empty router joins it at start-up.
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "static",
                            "address": "127.0.0.1:0",
                            "filter_chains": [
                                {
                                    "filters": [
                                        {
                                            "type": "proxy",
                                            "config": {
                                                "downstream_protocol": "dubbo",
                                                "router_config_name": "local",
                                            },
                                        }
                                    ]
                                }
                            ],
                        }
                    ],
                    "routers": [{"router_config_name": "local"}],
                }
            ],
            "extends": [
                {
                    "type": "dubbo_registry",
                    "config": {"enable": True, "server_port": 20880, "api_port": 0},
                }
            ],
        }
    ).config
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", 1)])
    await ads.set("LDS", "1", [listener("ingress", "dubbo")])
    await ads.set("RDS", "1", [routes("dubbo", ("/", "a"))])
    server = await nursery.start(Server(config).run)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses or server.xds.last_error)
    assert server.xds.last_error is None
    names = [r.router_config_name for s in server.config.servers for r in s.routers]
    assert sorted(names) == ["dubbo", "local"]
