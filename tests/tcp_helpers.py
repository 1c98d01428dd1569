"""Raw TCP peers and the tcp_proxy config the L4 tests share."""

from __future__ import annotations

import functools
from typing import Any

import trio

from trio_mesh.config import MeshConfig, parse_config


def tcp_proxy_config(
    upstream_ports: list[int],
    *,
    tcp: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
) -> MeshConfig:
    """Listener ``ingress`` on 127.0.0.1:0 relaying to cluster ``up`` over ``upstream_ports``."""
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "tcp_proxy",
                                        "config": {"cluster": "up", **(tcp or {})},
                                    }
                                ]
                            }
                        ],
                        **(listener or {}),
                    }
                ]
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{p}"} for p in upstream_ports],
                    **(cluster or {}),
                }
            ]
        },
    }
    return parse_config(doc).config


async def echo_handler(stream: trio.SocketStream, trailer: bytes = b"") -> None:
    """Write back everything; after the client's EOF send ``trailer`` and close."""
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            if trailer:
                await stream.send_all(trailer)
        except trio.BrokenResourceError:
            pass


async def start_tcp_server(nursery: trio.Nursery, handler) -> int:
    """Serve ``handler`` on 127.0.0.1:0 in ``nursery``; return the bound port once listening."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    return listeners[0].socket.getsockname()[1]
