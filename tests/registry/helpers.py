"""Shared pieces of the registry tests: a sidecar config with the registry, the API client,
Dubbo consumers and providers in the registry's layout."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import trio

from trio_mesh import Server
from trio_mesh.config import MeshConfig, parse_config
from trio_mesh.registry.memory import MemorySession
from trio_mesh.registry.url import node_name, provider_url, providers_path

from ..http_helpers import request

SERVICE = "org.apache.dubbo.demo.DemoService"
#: The in-memory registry's address in these tests (any string names a namespace).
MEMORY_ADDR = "127.0.0.1:2181"


def sidecar_config(
    *,
    provider_port: int | None = None,
    registry: dict[str, Any] | None = None,
    extra_clusters: list[dict[str, Any]] | None = None,
) -> MeshConfig:
    """A sidecar: ``ingress`` (what the registry publishes: Dubbo to the local provider on
    ``provider_port``), ``egress`` (Dubbo routed by the registry's ``dubbo`` router), and the
    registry API on a free loopback port."""
    doc = sidecar_doc(provider_port=provider_port, registry=registry, extra_clusters=extra_clusters)
    return parse_config(doc).config


def sidecar_doc(
    *,
    provider_port: int | None = None,
    registry: dict[str, Any] | None = None,
    extra_clusters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``sidecar_config``'s document (for a configuration file)."""
    clusters = list(extra_clusters or [])
    ingress_routes: list[dict[str, Any]] = []
    if provider_port is not None:
        clusters.append(
            {"name": "local_provider", "hosts": [{"address": f"127.0.0.1:{provider_port}"}]}
        )
        ingress_routes.append(
            {
                "match": {"headers": [{"name": "service", "value": ".*", "regex": True}]},
                "route": {"cluster_name": "local_provider"},
            }
        )

    def listener(name: str, router: str) -> dict[str, Any]:
        proxy = {"downstream_protocol": "dubbo", "router_config_name": router}
        return {
            "name": name,
            "address": "127.0.0.1:0",
            "filter_chains": [{"filters": [{"type": "proxy", "config": proxy}]}],
        }

    return {
        "servers": [
            {
                "listeners": [listener("ingress", "ingress_routes"), listener("egress", "dubbo")],
                "routers": [
                    {
                        "router_config_name": "ingress_routes",
                        "virtual_hosts": [
                            {"name": "in", "domains": ["*"], "routers": ingress_routes}
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": clusters},
        "extends": [
            {
                "type": "dubbo_registry",
                "config": {
                    "enable": True,
                    "server_listener": "ingress",
                    "api_port": 0,
                    "advertise_ip": "127.0.0.1",
                    **(registry or {}),
                },
            }
        ],
    }


def body(
    addr: str,
    *,
    type: str = "zookeeper",
    interface: str = SERVICE,
    methods: list[str] | None = None,
    **service: Any,
) -> dict[str, Any]:
    return {
        "registry": {"type": type, "addr": addr},
        "service": {
            "interface": interface,
            "methods": methods if methods is not None else ["sayHello", "add"],
            **service,
        },
    }


async def api(
    server: Server, path: str, doc: Any = None, *, method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    """One call of the registry API: its HTTP status and JSON answer."""
    assert server.registry is not None and server.registry.address is not None
    port = server.registry.address[1]
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode() if doc else b""
    raw = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with trio.fail_after(30):
        response = await request(port, raw)
    return response.status, json.loads(response.body)


def provider_node(port: int, *, interface: str = SERVICE, **params: Any) -> str:
    """The full path of a provider node as a Java Dubbo provider on 127.0.0.1 writes it."""
    url = provider_url(
        ip="127.0.0.1",
        port=port,
        interface=interface,
        methods=("sayHello", "add"),
        group=params.get("group", ""),
        version=params.get("version", ""),
        timestamp_ms=int(time.time() * 1000),
        pid=os.getpid(),
    )
    return f"{providers_path(interface)}/{node_name(url)}"


def call_direct(port: int, name: str, *, group: str = "", version: str = "") -> str:
    """``sayHello(name)`` by the real Dubbo consumer (dubbo-ssl-python) at 127.0.0.1:port."""
    from dubbo_ssl.client import DubboClient

    client = DubboClient(SERVICE, group=group, version=version, host=f"127.0.0.1:{port}")
    return str(client.call("sayHello", [name], timeout=10))


async def calls(port: int, n: int) -> list[str]:
    """``n`` calls through 127.0.0.1:port, in a thread; the providers' answers."""

    def run() -> list[str]:
        return [call_direct(port, f"c{i}") for i in range(n)]

    return await trio.to_thread.run_sync(run)


async def register(nursery: trio.Nursery, *paths: str) -> MemorySession:
    """Provider nodes written by another party (a Java provider's session) into the
    in-memory registry."""
    session = MemorySession(("memory", MEMORY_ADDR, "", ""))
    await nursery.start(session.run)
    for path in paths:
        await session.create_ephemeral(path, timeout=5)
    return session
