"""A minimal stand-in for ``trio_mesh.metrics.collect`` (written on another branch): the
listener and cluster counters under Envoy's names, and the server's state. Delete this module
once ``collect`` is merged (``LocalTarget.metrics`` prefers it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..metrics.model import Kind, Metric

if TYPE_CHECKING:
    from ..server import Server

_STATES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2}
_GAUGES = ("_active", "_buffered")


def _kind(stat: str) -> Kind:
    return "gauge" if any(g in stat for g in _GAUGES) else "counter"


def _envoy_address(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host.replace(':', '_')}]_{port}"
    return f"{host}_{port}"


def collect(server: Server) -> list[Metric]:
    out: list[Metric] = []
    for name, stats in server._stats.items():
        runtime = server.listeners.get(name)
        address = _envoy_address(*runtime.address) if runtime is not None else name
        for stat, value in stats.as_dict().items():
            if stat.startswith("downstream_rq_"):
                tags = (("envoy_http_conn_manager_prefix", name),)
                out.append(Metric(f"http.{name}.{stat}", f"http.{stat}", tags, _kind(stat), value))
            else:
                tags = (("envoy_listener_address", address),)
                full = f"listener.{address}.{stat}"
                out.append(Metric(full, f"listener.{stat}", tags, _kind(stat), value))
    for cname, cluster in server.clusters.clusters.items():
        tags = (("envoy_cluster_name", cname),)
        for stat, value in cluster.stats.as_dict().items():
            out.append(
                Metric(f"cluster.{cname}.{stat}", f"cluster.{stat}", tags, _kind(stat), value)
            )
    uptime = int(time.monotonic() - server.started_monotonic)
    state = _STATES.get(server.state, 2)
    out.append(Metric("server.uptime", "server.uptime", (), "gauge", uptime))
    out.append(Metric("server.state", "server.state", (), "gauge", state))
    out.append(Metric("server.live", "server.live", (), "gauge", int(server.state == "LIVE")))
    return out
