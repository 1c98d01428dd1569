"""Every stat of this process as :class:`~trio_mesh.metrics.model.Metric` values, read at
scrape time: Envoy's dotted names and tag-extracted names (``docs/metrics.md`` lists them).

The request path only bumps integers and records into histograms (``trio_mesh.stats``); all
naming happens here, from tables made once at import from the stats classes' fields.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from .. import __version__
from ..protocols import xprotocol
from ..stats import ClusterStats, ListenerStats, RpcStats, Stats
from .model import Histogram, Kind, Metric, Tags

if TYPE_CHECKING:
    from ..server import Server
    from ..upstream import Cluster

#: Envoy's ``server.state`` values.
SERVER_STATES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}

#: Where each xDS type's counters live (Envoy's CDS and LDS names; RDS and EDS, which Envoy
#: counts per route configuration and per cluster, are counted per type here).
XDS_PREFIXES = {
    "CDS": "cluster_manager.cds",
    "EDS": "cluster_manager.eds",
    "LDS": "listener_manager.lds",
    "RDS": "listener_manager.rds",
}

HELP: dict[str, str] = {
    "downstream_cx_total": "Connections accepted",
    "downstream_cx_active": "Connections open now",
    "downstream_cx_destroy": "Connections closed",
    "downstream_cx_overflow": "Connections refused by max_connections",
    "downstream_cx_idle_timeout": "Connections closed by the idle timeout",
    "downstream_accept_error": "accept() failures (descriptors or memory exhausted)",
    "downstream_cx_proxy_proto_error": "Connections closed for a bad or missing PROXY header",
    "downstream_cx_length_ms": "Connection length (ms)",
    "downstream_rq_total": "Requests answered",
    "downstream_rq_active": "Requests in flight now",
    "downstream_rq_xx": "Requests answered, by response class",
    "downstream_rq_time": "Request time, head received to response sent (ms)",
    "upstream_cx_destroy": "Upstream connections closed",
    "upstream_rq_xx": "Upstream responses, by class",
    "upstream_rq_time": "Upstream try time, try start to response complete (ms)",
    "upstream_rq_per_try_timeout": "Tries cut by the per-try timeout",
    "membership_total": "Hosts in the cluster",
    "membership_healthy": "Hosts the balancer offers outside panic (not failed, not ejected)",
    "lb_healthy_panic": "Hosts chosen in panic (under half the hosts usable: all offered)",
}


def envoy_address(host: str, port: int) -> str:
    """Envoy's stats form of a bound address: ``127.0.0.1_8080``, ``[__1]_8080``."""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}".replace(":", "_")


@attrs.frozen
class _Stat:
    """How one stats field is named: ``name`` / ``tag_name`` after the scope's prefix (the
    tagged prefix adds its own), extra tags, kind."""

    field: str
    suffix: str
    tag_suffix: str
    tags: Tags
    kind: Kind


def _layout(cls: type[Stats], http: bool) -> tuple[list[_Stat], list[_Stat]]:
    """The fields of ``cls`` split into the ``listener``/``cluster`` scope and (``http``) the
    ``http.<listener>`` scope, each with its dotted name."""
    main: list[_Stat] = []
    rq: list[_Stat] = []
    for a in attrs.fields(cls):
        name = a.name
        if a.type not in ("int", "Histogram", int, Histogram):
            continue
        kind: Kind
        if a.type in ("Histogram", Histogram):
            kind = "histogram"
        elif name in cls.GAUGES:
            kind = "gauge"
        else:
            kind = "counter"
        tags: Tags = ()
        suffix = tag_suffix = name
        if name.startswith("ssl_"):
            suffix = tag_suffix = "ssl." + name[4:]
        elif name.startswith("http2_"):
            suffix = tag_suffix = "http2." + name[6:]
        elif name.startswith("health_check_"):
            suffix = tag_suffix = "health_check." + name[13:]
        elif name.startswith("outlier_detection_"):
            suffix = tag_suffix = "outlier_detection." + name[18:]
        elif name.endswith("xx") and name[-3].isdigit():
            # downstream_rq_2xx -> downstream_rq_xx{envoy_response_code_class="2"}
            tag_suffix = name[:-3] + "xx"
            tags = (("envoy_response_code_class", name[-3]),)
        stat = _Stat(name, suffix, tag_suffix, tags, kind)
        if http and (name.startswith("downstream_rq_") or name.startswith("http2_")):
            rq.append(stat)
        else:
            main.append(stat)
    return main, rq


_LISTENER, _HTTP = _layout(ListenerStats, http=True)
_CLUSTER, _ = _layout(ClusterStats, http=False)


def _emit(
    out: list[Metric], stats: Stats, layout: Iterable[_Stat], scope: str, key: str, tag: str
) -> None:
    base = ((tag, key),)
    for s in layout:
        value: Any = getattr(stats, s.field)
        if s.kind == "histogram":
            value = value.snapshot()
        help_ = HELP.get(s.tag_suffix, "")
        out.append(
            Metric(
                f"{scope}.{key}.{s.suffix}",
                f"{scope}.{s.tag_suffix}",
                base + s.tags,
                s.kind,
                value,
                help_,
            )
        )


def collect(server: Server) -> list[Metric]:
    """Every stat of this process, now: its listeners and clusters as they are (a removed
    listener still draining is no longer in it), the server, xDS."""
    out: list[Metric] = []
    total_connections = 0
    for runtime in list(server.listeners.values()):
        stats = runtime.stats
        total_connections += stats.downstream_cx_active
        address = envoy_address(*runtime.address)
        _emit(out, stats, _LISTENER, "listener", address, "envoy_listener_address")
        _emit(out, stats, _HTTP, "http", runtime.name, "envoy_http_conn_manager_prefix")
        _rpc(out, runtime.name, stats)
    for cluster in list(server.clusters.clusters.values()):
        _emit(out, cluster.stats, _CLUSTER, "cluster", cluster.name, "envoy_cluster_name")
        _cluster_now(out, cluster)
    _server(out, server, total_connections)
    _tracing(out, server.tracing_stats)
    if server.xds is not None:
        _xds(out, server.xds)
    return out


_TRACING_HELP = {
    "spans_sent": "spans the collector accepted",
    "spans_dropped": "spans dropped because the export queue was full",
    "export_failed": "export requests that failed (their spans are lost)",
}


def _tracing(out: list[Metric], stats: Any) -> None:
    for stat, help_ in _TRACING_HELP.items():
        name = f"tracing.{stat}"
        out.append(Metric(name, name, (), "counter", getattr(stats, stat), help_))


def _rpc(out: list[Metric], listener: str, stats: ListenerStats) -> None:
    for protocol, rpc in list(stats.rpc.items()):
        key = f"rpc.{listener}.{protocol}"
        tags = (("envoy_rpc_prefix", listener), ("envoy_rpc_protocol", protocol))
        out.append(
            Metric(
                f"{key}.downstream_rq_total",
                "rpc.downstream_rq_total",
                tags,
                "counter",
                rpc.downstream_rq_total,
                "RPC requests answered (or sent on, oneway), by protocol",
            )
        )
        try:
            codec = xprotocol.get(protocol)
        except xprotocol.UnknownCodec:
            codec = None
        for status, count in sorted(rpc.by_status.items()):
            if status == RpcStats.OTHER_STATUS:
                name = "OTHER"
            else:
                name = codec.status_name(status) if codec is not None else str(status)
            out.append(
                Metric(
                    f"{key}.downstream_rq_status.{name}",
                    # not ``rpc.downstream_rq``: a counter family named so would be
                    # ``..._rq_total`` in Prometheus, the family above
                    "rpc.downstream_rq_status",
                    (*tags, ("envoy_rpc_status", name)),
                    "counter",
                    count,
                    "RPC responses sent, by the protocol's status",
                )
            )


def _gauge(
    out: list[Metric], name: str, tag_name: str, tags: Tags, value: float, help_: str
) -> None:
    out.append(Metric(name, tag_name, tags, "gauge", value, help_))


def _cluster_now(out: list[Metric], cluster: Cluster) -> None:
    """What is read from the cluster's state, not counted: membership, breakers open."""
    name = cluster.name
    tags = (("envoy_cluster_name", name),)
    hosts = len(cluster.hosts)
    prefix = f"cluster.{name}"
    _gauge(
        out,
        f"{prefix}.membership_total",
        "cluster.membership_total",
        tags,
        hosts,
        HELP["membership_total"],
    )
    _gauge(
        out,
        f"{prefix}.membership_healthy",
        "cluster.membership_healthy",
        tags,
        cluster.healthy_hosts,
        HELP["membership_healthy"],
    )
    stats = cluster.stats
    breakers = (
        ("cx_open", stats.upstream_cx_active, cluster.max_connections),
        ("rq_open", stats.upstream_rq_active, cluster.max_requests),
        ("rq_pending_open", stats.upstream_rq_pending_active, cluster.max_pending_requests),
        ("rq_retry_open", stats.upstream_rq_retry_active, cluster.max_retries),
    )
    for stat, now, limit in breakers:
        is_open = int(limit is not None and now >= limit)
        _gauge(
            out,
            f"{prefix}.circuit_breakers.default.{stat}",
            f"cluster.circuit_breakers.default.{stat}",
            tags,
            is_open,
            "1 while the circuit breaker's limit is reached",
        )


def version_number(version: str = __version__) -> int:
    """The package version as one integer (``server.version``): ``1.2.3`` is 1002003."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1000 + parts[2]


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def _server(out: list[Metric], server: Server, total_connections: int) -> None:
    uptime = int(time.monotonic() - server.started_monotonic) if server.started_monotonic else 0
    state = server.state
    # With --workers the admin process reports the worker count (admin/fanout.py).
    concurrency = getattr(server, "concurrency", 1)
    for stat, value, help_ in (
        ("uptime", uptime, "Seconds since the server started"),
        ("memory_allocated", rss_bytes(), "Resident memory of the process (bytes)"),
        ("live", int(state == "LIVE" and not server.health_failed), "1 when LIVE"),
        ("state", SERVER_STATES.get(state, 3), "0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING"),
        ("total_connections", total_connections, "Downstream connections open now"),
        ("version", version_number(), "trio-mesh version as an integer (1.2.3: 1002003)"),
        ("concurrency", concurrency, "Worker processes"),
    ):
        _gauge(out, f"server.{stat}", f"server.{stat}", (), value, help_)


def version_hash(version: str) -> int:
    """Envoy's xDS ``version`` gauge is a hash; 48 bits of SHA-256 here (exact in a float)."""
    if not version:
        return 0
    return int.from_bytes(hashlib.sha256(version.encode()).digest()[:6], "big")


def _xds(out: list[Metric], xds: Any) -> None:
    for kind, stats in xds.stats.items():
        prefix = XDS_PREFIXES.get(kind)
        if prefix is None:
            continue
        for stat in ("update_attempt", "update_success", "update_rejected"):
            out.append(
                Metric(
                    f"{prefix}.{stat}",
                    f"{prefix}.{stat}",
                    (),
                    "counter",
                    getattr(stats, stat),
                    f"{kind} responses handled, applied, rejected (NACK)",
                )
            )
        _gauge(
            out,
            f"{prefix}.version",
            f"{prefix}.version",
            (),
            version_hash(stats.version_info),
            f"{kind}: hash of the version last applied",
        )
        if stats.version_info:
            _gauge(
                out,
                f"{prefix}.version_text",
                f"{prefix}.version_text",
                (("version_text", stats.version_info),),
                1,
                f"{kind}: the version last applied, as a label",
            )
    _gauge(
        out,
        "control_plane.connected_state",
        "control_plane.connected_state",
        (),
        int(xds.client.connected),
        "1 while the ADS stream is up",
    )
