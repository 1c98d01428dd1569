"""Config of MOSN's ``healthcheck`` stream filter (SOFA RPC / xprotocol listeners).

In MOSN the filter makes the proxy answer a client's protocol heartbeat (bolt's heartbeat
command, Dubbo's heartbeat event) itself, instead of routing it. trio-mesh's RPC proxy
always answers heartbeats itself, so the filter's default (``passthrough: false``) is what
runs. ``passthrough: true`` (MOSN: forward heartbeats to the upstream) is refused: the client
would be told the proxy is alive where it asked about the upstream.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from ..routes import _raise
from ..scalars import Duration


@frozen(kw_only=True)
class RpcHealthCheckConfig:
    #: MOSN's ``passthrough``: only ``false`` (answer locally) is supported.
    passthrough: bool = False
    #: MOSN reads these but never used them (a "todo" in its filter): kept for its configs.
    cache_time: Duration | None = None
    endpoint: str = ""
    cluster_min_healthy_percentages: dict[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        if self.passthrough:
            _raise(
                [
                    (
                        ("passthrough",),
                        "only false is supported: trio-mesh answers RPC heartbeats itself"
                        " (forwarding them to the upstream is not implemented)",
                    )
                ]
            )
