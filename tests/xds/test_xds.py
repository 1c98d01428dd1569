"""trio-mesh configured entirely by a real ADS management server (tests/xds_server.py, its
own process): listeners, routes, clusters and endpoints over one stream, applied live."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.http_helpers import Client, gated_upstream, get, start_upstream
from tests.xds.test_xds_client import TIMEOUT, ServerProcess
from trio_mesh import Server
from trio_mesh.config import parse_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("envoy_data_plane") is None, reason="the xds extra is not installed"
)

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def listener(name: str, route_config: str) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "statPrefix": name,
        "codecType": "AUTO",
        "rds": {"routeConfigName": route_config, "configSource": {"ads": {}}},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
    }
    return {
        "name": name,
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}},
        "filterChains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}
                ]
            }
        ],
    }


def eds_cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EDS",
        "connectTimeout": "1s",
        "edsClusterConfig": {"serviceName": name, "edsConfig": {"ads": {}}},
    }


def endpoints(name: str, *ports: int) -> dict[str, Any]:
    return {
        "clusterName": name,
        "endpoints": [
            {
                "lbEndpoints": [
                    {
                        "endpoint": {
                            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": p}}
                        }
                    }
                    for p in ports
                ]
            }
        ],
    }


def routes(name: str, *pairs: tuple[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "virtualHosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": prefix}, "route": {"cluster": cluster}}
                    for prefix, cluster in pairs
                ],
            }
        ],
    }


async def fetch(port: int, path: str = "/echo") -> int:
    async with await Client.connect(port) as client:
        await client.send(get(path))
        return (await client.response()).status


@pytest.fixture
async def ads():
    srv = await ServerProcess.start()
    yield srv
    if srv.proc.returncode is None:
        srv.proc.kill()
        await srv.proc.wait()


async def start_mesh(nursery: trio.Nursery, ads: ServerProcess) -> Server:
    config = parse_config({"xds": {"address": f"127.0.0.1:{ads.port}", "node_id": "t"}}).config
    return await nursery.start(Server(config).run)


async def initial(ads: ServerProcess, a_port: int) -> None:
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", a_port)])
    await ads.set("LDS", "1", [listener("ingress", "r")])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])


async def test_configured_from_ads_then_eds_and_rds_changes_apply(nursery, ads):
    a, b, c = [await start_upstream(nursery) for _ in range(3)]
    await initial(ads, a.port)
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        # All four types on one stream: the listener is served once its routes arrived.
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        assert await fetch(port) == 200
        assert len(a.requests) == 1
        # EDS: the cluster's hosts become b and c; traffic moves, split between them.
        await ads.set("EDS", "2", [endpoints("a", b.port, c.port)])
        await ads.expect("ACK EDS 2")
        for _ in range(4):
            assert await fetch(port) == 200
        assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 2, 2)
        # RDS: /only-c goes to a new cluster, c alone; the rest still to the first.
        await ads.set("CDS", "2", [eds_cluster("a"), eds_cluster("c")])
        await ads.set("EDS", "3", [endpoints("a", b.port, c.port), endpoints("c", c.port)])
        await ads.set("RDS", "2", [routes("r", ("/only-c", "c"), ("/", "a"))])
        await ads.expect("ACK RDS 2")
        await server.xds.wait_for(lambda: "c" in server.clusters)
        for _ in range(3):
            assert await fetch(port, "/only-c") == 200
        assert len(c.requests) == 5
        assert server.addresses["ingress"][1] == port  # one socket throughout
    status = server.xds.status()
    assert status["connected"] and status["types"]["RDS"]["version"] == "2"


async def test_bad_resource_is_nacked_and_traffic_stays_on_the_old_config(nursery, ads):
    a = await start_upstream(nursery)
    await initial(ads, a.port)
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        bad = {**eds_cluster("a"), "lbPolicy": "CLUSTER_PROVIDED"}
        await ads.set("CDS", "2", [bad])
        nack = await ads.expect("NACK CDS")
        assert nack.startswith("NACK CDS 1 ") and "lb_policy" in nack and "'a'" in nack
        assert await fetch(port) == 200
    assert len(a.requests) == 1
    assert "lb_policy" in server.xds.status()["types"]["CDS"]["last_error"]


TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


async def test_tls_that_cannot_be_set_up_is_nacked_never_served_as_cleartext(
    nursery, ads, tmp_path: Path
):
    a = await start_upstream(nursery)
    await initial(ads, a.port)
    server = await start_mesh(nursery, ads)
    missing = str(tmp_path / "missing.pem")
    upstream = {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": TLS_TYPES + "UpstreamTlsContext",
            "sni": "a.test",
            "commonTlsContext": {"validationContext": {"trustedCa": {"filename": missing}}},
        },
    }
    downstream = {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": {
            "@type": TLS_TYPES + "DownstreamTlsContext",
            "commonTlsContext": {
                "tlsCertificates": [
                    {"certificateChain": {"filename": missing}, "privateKey": {"filename": missing}}
                ]
            },
        },
    }
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        await ads.set("CDS", "2", [{**eds_cluster("a"), "transportSocket": upstream}])
        nack = await ads.expect("NACK CDS")
        assert nack.startswith("NACK CDS 1 ") and f"ca_cert: cannot read {missing}" in nack
        secure = listener("secure", "r")
        secure["filterChains"][0]["transportSocket"] = downstream
        await ads.set("LDS", "2", [listener("ingress", "r"), secure])
        nack = await ads.expect("NACK LDS")
        assert f"filter_chains[0].tls_context.cert_chain: cannot read {missing}" in nack
        # SDS is refused with its reason.
        downstream["typedConfig"]["commonTlsContext"] = {
            "tlsCertificateSdsSecretConfigs": [{"name": "cert", "sdsConfig": {"ads": {}}}]
        }
        await ads.set("LDS", "3", [listener("ingress", "r"), secure])
        nack = await ads.expect("NACK LDS")
        assert "tls_certificate_sds_secret_configs: SDS is not supported" in nack
        assert "secure" not in server.addresses
        assert await fetch(server.addresses["ingress"][1]) == 200
    assert len(a.requests) == 1


async def test_management_server_restart_reconnects_and_traffic_continues(nursery, ads):
    a, b = await start_upstream(nursery), await start_upstream(nursery)
    await initial(ads, a.port)
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        port = server.addresses["ingress"][1]
        server.xds.client.backoff_cap = 0.5  # reconnect within the test's time
        assert await fetch(port) == 200
        await ads.kill()
        assert await fetch(port) == 200  # served while the control plane is away
        again = await ServerProcess.start(ads.port)
        try:
            await initial(again, b.port)  # the new server says: endpoints are b now
            await again.expect("SUBSCRIBE")
            await again.expect("ACK EDS 1")
            await server.xds.wait_for(lambda: server.clusters.get("a").hosts[0].port == b.port)
            assert await fetch(port) == 200
            assert server.xds.status()["connected"]
        finally:
            again.proc.kill()
            await again.proc.wait()
    assert (len(a.requests), len(b.requests)) == (2, 1)


async def test_removed_listener_drains_then_stops_accepting(nursery, ads):
    up, arrived, release = await gated_upstream(nursery)
    await ads.set("CDS", "1", [eds_cluster("a")])
    await ads.set("EDS", "1", [endpoints("a", up)])
    await ads.set("LDS", "1", [listener("ingress", "r"), listener("other", "r")])
    await ads.set("RDS", "1", [routes("r", ("/", "a"))])
    server = await start_mesh(nursery, ads)
    with trio.fail_after(TIMEOUT):
        await server.xds.wait_for(lambda: {"ingress", "other"} <= set(server.addresses))
        port = server.addresses["ingress"][1]
        runtime = server.listeners["ingress"]
        async with await Client.connect(port) as client:
            await client.send(get("/wait"))
            await arrived.wait()
            await ads.set("LDS", "2", [listener("other", "r")])
            await ads.expect("ACK LDS 2")
            assert runtime.draining and "ingress" not in server.addresses
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            release.set()
            response = await client.response()
            assert response.status == 200  # the request in flight finished
        await runtime.wait_closed()
        assert await fetch(server.addresses["other"][1], "/x") == 200


def bootstrap(ads_port: int) -> dict[str, Any]:
    """conf/xds.yaml's Envoy bootstrap form, with the management server's port."""
    import yaml

    doc = yaml.safe_load((Path(__file__).parents[2] / "conf" / "xds.yaml").read_text())
    (cluster,) = doc["static_resources"]["clusters"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = ads_port
    doc["servers"][0]["listeners"][0]["address"] = "127.0.0.1:0"
    return doc


async def test_envoy_bootstrap_form_serves_static_and_dynamic_listeners(nursery, ads):
    a = await start_upstream(nursery)
    await initial(ads, a.port)
    config = parse_config(bootstrap(ads.port)).config
    assert config.xds_settings().node.id == "sidecar-1"
    server = await nursery.start(Server(config).run)
    with trio.fail_after(TIMEOUT):
        assert await fetch(server.addresses["healthz"][1]) == 200  # static, at once
        await server.xds.wait_for(lambda: "ingress" in server.addresses)
        assert await fetch(server.addresses["ingress"][1]) == 200
        assert await fetch(server.addresses["healthz"][1]) == 200
    assert len(a.requests) == 1
    assert set(server.addresses) == {"healthz", "ingress"}


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (
            {
                "dynamic_resources": {
                    "ads_config": {"grpc_services": [{"envoy_grpc": {"cluster_name": "cp"}}]}
                }
            },
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: "
            "no cluster 'cp' in static_resources.clusters",
        ),
        (
            {"dynamic_resources": {"lds_config": {"ads": {}}}},
            "dynamic_resources.ads_config: required (trio-mesh speaks ADS only)",
        ),
        (
            {
                "dynamic_resources": {
                    "ads_config": {
                        "api_type": "REST",
                        "grpc_services": [{"envoy_grpc": {"cluster_name": "cp"}}],
                    }
                },
                "static_resources": {
                    "clusters": [
                        {
                            "name": "cp",
                            "load_assignment": {
                                "endpoints": [
                                    {
                                        "lb_endpoints": [
                                            {
                                                "endpoint": {
                                                    "address": {
                                                        "socket_address": {
                                                            "address": "127.0.0.1",
                                                            "port_value": 1,
                                                        }
                                                    }
                                                }
                                            }
                                        ]
                                    }
                                ]
                            },
                        }
                    ]
                },
            },
            "dynamic_resources.ads_config.api_type: 'REST' is not supported (GRPC)",
        ),
        ({"xds": {"address": "nowhere"}}, "xds.address: "),
    ],
)
def test_control_plane_config_errors_name_their_path(doc, error):
    from trio_mesh.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert any(line.startswith(error) for line in info.value.errors), info.value.errors


def test_envoy_types_are_imported_only_when_xds_is_configured():
    import subprocess
    import sys

    code = (
        "import sys, trio_mesh.server, trio_mesh.cli, trio_mesh.config;"
        "trio_mesh.config.parse_config({'xds': {'address': '127.0.0.1:1'}});"
        "print(any(m.startswith(('envoy_data_plane', 'grpclib', 'trio_asyncio'))"
        " for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
