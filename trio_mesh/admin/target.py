"""What the admin endpoints read and change: ``AdminTarget``, and ``LocalTarget`` for one
process. Every method is async and returns JSON-able data, so that a multi-process proxy can
implement it by asking its workers (``trio_mesh.workers``)."""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..config.converter import converter
from ..metrics.model import Metric
from .redact import redact

if TYPE_CHECKING:
    from ..server import Server

#: The logger every one of the proxy's own loggers is under.
ROOT_LOGGER = "trio_mesh"

#: Level names the endpoints accept: Envoy's (lower case) and MOSN's (upper case), any case.
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}


class UnknownLogger(LookupError):
    pass


class AdminTarget(Protocol):
    async def metrics(self) -> list[Metric]: ...
    async def clusters(self) -> list[dict[str, Any]]: ...
    async def config_dump(self) -> dict[str, Any]: ...
    async def server_info(self) -> dict[str, Any]: ...
    async def set_health_failed(self, failed: bool) -> None: ...
    async def drain_listeners(self, graceful: bool, inbound_only: bool) -> None: ...
    async def set_log_level(self, logger: str | None, level: str) -> None: ...
    async def log_levels(self) -> dict[str, str]: ...
    async def set_logger_enabled(self, logger: str, enabled: bool) -> None: ...


def proxy_loggers() -> dict[str, logging.Logger]:
    """The proxy's loggers that exist now, by name (``trio_mesh`` and below)."""
    out = {ROOT_LOGGER: logging.getLogger(ROOT_LOGGER)}
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if name.startswith(ROOT_LOGGER + ".") and isinstance(obj, logging.Logger):
            out[name] = obj
    return out


def level_name(logger: logging.Logger) -> str:
    level = logger.getEffectiveLevel()
    if level > logging.CRITICAL:
        return "off"
    return logging.getLevelName(level).lower()


class LocalTarget:
    """``AdminTarget`` of the process that runs ``server``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def metrics(self) -> list[Metric]:
        return await self.server.collect_metrics()

    async def clusters(self) -> list[dict[str, Any]]:
        out = []
        for cluster in list(self.server.clusters.clusters.values()):
            config = cluster.config
            limits = config.thresholds()
            hosts = []
            for host in cluster.hosts:
                hosts.append(
                    {
                        "address": {
                            "socket_address": {"address": host.host, "port_value": host.port}
                        },
                        "hostname": host.hostname or "",
                        "weight": host.weight,
                        "health_status": {
                            # What EDS says (we take no EDS health: it is healthy); the
                            # checks' and outlier detection's own verdicts follow, as Envoy's.
                            "eds_health_status": "HEALTHY",
                            "failed_active_health_check": host.failed_active_hc,
                            "failed_outlier_check": host.ejected,
                        },
                        "health_flags": host.health_flags(),
                        "stats": [
                            {"name": "cx_total", "type": "COUNTER", "value": host.cx_total},
                            {
                                "name": "cx_connect_fail",
                                "type": "COUNTER",
                                "value": host.cx_connect_fail,
                            },
                            {"name": "rq_total", "type": "COUNTER", "value": host.rq_total},
                            {"name": "rq_active", "type": "GAUGE", "value": host.active_requests},
                        ],
                    }
                )
            stats = cluster.stats.as_dict()
            out.append(
                {
                    "name": cluster.name,
                    "added_via_api": self._dynamic(cluster.name),
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "priority": "DEFAULT",
                                "max_connections": limits.max_connections,
                                "max_pending_requests": limits.max_pending_requests,
                                "max_requests": limits.max_requests,
                                "max_retries": limits.max_retries,
                            }
                        ]
                    },
                    "stats": stats,
                    "host_statuses": hosts,
                }
            )
        return out

    def _dynamic(self, cluster: str) -> bool:
        xds = self.server.xds
        return xds is not None and cluster in xds.state.clusters

    async def config_dump(self) -> dict[str, Any]:
        config = self.server.config
        doc: dict[str, Any] = {"config": redact(converter.unstructure(config))}
        xds = self.server.xds
        if xds is not None:
            doc["xds"] = redact(xds.status())
        return doc

    async def server_info(self) -> dict[str, Any]:
        server = self.server
        usage = resource.getrusage(resource.RUSAGE_SELF)
        uptime = int(time.monotonic() - server.started_monotonic)
        return {
            "version": __version__,
            "state": server.state,
            "health_failed": server.health_failed,
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
            "started_at": server.started_at,
            "pid": os.getpid(),
            "workers": 1,
            "max_rss_kib": usage.ru_maxrss,
            "listeners": {name: list(addr) for name, addr in server.addresses.items()},
            "xds_warm": server.xds.warm if server.xds is not None else None,
        }

    async def set_health_failed(self, failed: bool) -> None:
        self.server.health_failed = failed

    async def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        if inbound_only:
            # Envoy drains only listeners whose traffic_direction is INBOUND; none here
            # carries a direction (MOSN's config has none), so none is inbound.
            return
        self.server.drain_listeners(graceful=graceful)

    async def set_log_level(self, logger: str | None, level: str) -> None:
        number = LEVELS[level.lower()]  # the app checked the name
        if logger is None:
            # Envoy's ``/logging?level=``: every logger of the proxy.
            for each in proxy_loggers().values():
                each.setLevel(number if each.name == ROOT_LOGGER else logging.NOTSET)
            return
        loggers = proxy_loggers()
        if logger not in loggers:
            raise UnknownLogger(logger)
        loggers[logger].setLevel(number)

    async def log_levels(self) -> dict[str, str]:
        return {name: level_name(lg) for name, lg in sorted(proxy_loggers().items())}

    async def set_logger_enabled(self, logger: str, enabled: bool) -> None:
        loggers = proxy_loggers()
        if logger not in loggers:
            raise UnknownLogger(logger)
        loggers[logger].disabled = not enabled


__all__ = ["LEVELS", "AdminTarget", "LocalTarget", "UnknownLogger"]
