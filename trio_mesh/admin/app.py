"""Every admin endpoint: Envoy's that operators script against, and MOSN's ``/api/v1/*`` with
MOSN's response shapes. ``AdminApp(target).handle`` is the ``serve_http`` handler.

Reads are GET (HEAD too); anything that changes the proxy is POST only (a GET gets 405, as
in Envoy, so a crawler or a link cannot fail the health check). Bad input gets a JSON error:
400 (a bad level, a bad regex, a bad parameter), 404 (unknown path or logger), 405.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .. import __version__
from ..metrics.model import ENVOY_BUCKETS_MS, HistogramValue, Metric, valid_text
from ..network.http_server import (
    HttpRequest,
    HttpResponse,
    from_another_site,
    json_error,
    loopback_host,
)
from .redact import REDACTED, is_secret_env, redact
from .stat_filter import FilterError, compile_filter, matching
from .target import LEVELS, AdminTarget, UnknownLogger

log = logging.getLogger("trio_mesh.admin")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
GET = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})
#: A ``?filter=`` regex longer than this is refused (it runs over every stat name).
MAX_FILTER = 256
#: Envoy's quantiles in ``/stats``.
QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)
#: MOSN's stage numbers (``stagemanager.State``) for ``/api/v1/states``.
MOSN_STATES = {"PRE_INITIALIZING": 4, "LIVE": 6, "DRAINING": 8}
#: What ``/api/v1/features`` lists: trio-mesh's optional parts, and whether they are on.
Endpoint = Callable[[HttpRequest], Awaitable[HttpResponse]]


def text(status: int, body: str, content_type: str = TEXT) -> HttpResponse:
    try:
        data = body.encode()
    except UnicodeEncodeError:  # a lone surrogate in a configured name
        data = valid_text(body).encode()
    return HttpResponse(status, data, content_type)


def as_json(doc: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc, indent=1, sort_keys=False).encode() + b"\n", JSON)


def _one(req: HttpRequest, name: str) -> str | None:
    values = req.query.get(name)
    return values[-1] if values else None


class AdminApp:
    def __init__(self, target: AdminTarget, *, loopback_names_only: bool = False) -> None:
        self.target = target
        #: Refuse a ``Host`` that is not a loopback name (``admin`` on loopback).
        self.loopback_names_only = loopback_names_only
        self.routes: dict[str, tuple[frozenset[str], Endpoint]] = {
            "/": (GET, self.help),
            "/ready": (GET, self.ready),
            "/server_info": (GET, self.server_info),
            "/clusters": (GET, self.clusters),
            "/stats": (GET, self.stats),
            "/stats/prometheus": (GET, self.prometheus),
            "/logging": (POST, self.logging),
            "/healthcheck/fail": (POST, self.healthcheck_fail),
            "/healthcheck/ok": (POST, self.healthcheck_ok),
            "/drain_listeners": (POST, self.drain_listeners),
            "/api/v1/version": (GET, self.mosn_version),
            "/api/v1/config_dump": (GET, self.mosn_config_dump),
            "/api/v1/stats": (GET, self.mosn_stats),
            "/api/v1/stats_glob": (GET, self.mosn_stats_glob),
            "/api/v1/update_loglevel": (POST, self.mosn_update_loglevel),
            "/api/v1/get_loglevel": (GET, self.mosn_get_loglevel),
            "/api/v1/enable_log": (POST, self.mosn_enable_log),
            "/api/v1/disable_log": (POST, self.mosn_disable_log),
            "/api/v1/states": (GET, self.mosn_states),
            "/api/v1/features": (GET, self.mosn_features),
            "/api/v1/env": (GET, self.mosn_env),
        }

    async def handle(self, req: HttpRequest) -> HttpResponse:
        route = self.routes.get(req.path)
        if route is None:
            return json_error(404, f"unknown admin path {req.path!r} (GET / lists them)")
        methods, endpoint = route
        if from_another_site(req, methods is POST):
            return json_error(403, "the admin API does not answer requests from web pages")
        if self.loopback_names_only and not loopback_host(req.headers.get("host")):
            return json_error(403, "the admin API answers loopback names only (Host)")
        if req.method not in methods:
            allow = "POST" if methods is POST else "GET, HEAD"
            response = json_error(405, f"{req.path} takes {allow}")
            return HttpResponse(405, response.body, JSON, (("allow", allow),))
        if methods is POST:
            log.info("admin: %s %s", req.method, req.path)
        return await endpoint(req)

    # ------------------------------------------------------------------ Envoy's

    async def help(self, req: HttpRequest) -> HttpResponse:
        lines = ["admin commands are:"]
        for path, (methods, _) in self.routes.items():
            if path != "/":
                lines.append(f"  {path} ({'POST' if methods is POST else 'GET'})")
        return text(200, "\n".join(lines) + "\n")

    async def ready(self, req: HttpRequest) -> HttpResponse:
        info = await self.target.server_info()
        state = info["state"]
        ok = state == "LIVE" and not info.get("health_failed")
        return text(200 if ok else 503, f"{state}\n")

    async def server_info(self, req: HttpRequest) -> HttpResponse:
        return as_json(await self.target.server_info())

    async def clusters(self, req: HttpRequest) -> HttpResponse:
        clusters = await self.target.clusters()
        fmt = _one(req, "format")
        if fmt == "json":
            return as_json({"cluster_statuses": clusters})
        if fmt not in (None, "text"):
            return json_error(400, f"format: expected json or text, got {fmt!r}")
        lines = []
        for c in clusters:
            name = c["name"]
            lines.append(f"{name}::observability_name::{name}")
            for t in c["circuit_breakers"]["thresholds"]:
                for key in ("max_connections", "max_pending_requests", "max_requests"):
                    lines.append(f"{name}::default_priority::{key}::{_limit(t[key])}")
                lines.append(f"{name}::default_priority::max_retries::{_limit(t['max_retries'])}")
            lines.append(f"{name}::added_via_api::{str(c['added_via_api']).lower()}")
            for h in c["host_statuses"]:
                sa = h["address"]["socket_address"]
                addr = f"{sa['address']}:{sa['port_value']}"
                for s in h["stats"]:
                    lines.append(f"{name}::{addr}::{s['name']}::{s['value']}")
                lines.append(f"{name}::{addr}::hostname::{h['hostname']}")
                lines.append(f"{name}::{addr}::health_flags::{h['health_flags']}")
                lines.append(f"{name}::{addr}::weight::{h['weight']}")
        return text(200, "\n".join(lines) + ("\n" if lines else ""))

    async def stats(self, req: HttpRequest) -> HttpResponse:
        selected = await self._selected_metrics(req)
        if isinstance(selected, HttpResponse):
            return selected
        fmt = _one(req, "format")
        if fmt == "json":
            return as_json(stats_json(selected))
        if fmt == "prometheus":
            return await self.prometheus(req, selected)
        if fmt not in (None, "text"):
            return json_error(400, f"format: expected json, prometheus or text, got {fmt!r}")
        lines = []
        for m in sorted(selected, key=lambda m: m.name):
            if isinstance(m.value, HistogramValue):
                lines.append(f"{m.name}: {_histogram_text(m.value)}")
            else:
                lines.append(f"{m.name}: {_number(m.value)}")
        return text(200, "\n".join(lines) + ("\n" if lines else ""))

    async def _selected_metrics(self, req: HttpRequest) -> list[Metric] | HttpResponse:
        pattern = _one(req, "filter")
        matcher = None
        if pattern:
            if len(pattern) > MAX_FILTER:
                return json_error(400, f"filter: longer than {MAX_FILTER} characters")
            try:
                matcher = compile_filter(pattern)
            except FilterError as exc:
                return json_error(400, f"filter: {exc}")
        metrics = await self.target.metrics()
        if matcher is not None:
            metrics = await matching(matcher, metrics)
        if "usedonly" in req.query:
            metrics = [m for m in metrics if _used(m)]
        return metrics

    async def prometheus(
        self, req: HttpRequest, selected: list[Metric] | None = None
    ) -> HttpResponse:
        if selected is None:
            chosen = await self._selected_metrics(req)
            if isinstance(chosen, HttpResponse):
                return chosen
            selected = chosen
        from ..metrics.prometheus import render

        content_type, body = render(selected, req.headers.get("accept"))
        return HttpResponse(200, body, content_type)

    async def logging(self, req: HttpRequest) -> HttpResponse:
        changes: list[tuple[str | None, str]] = []
        for name, values in req.query.items():
            level = values[-1]
            if level.lower() not in LEVELS:
                names = ", ".join(LEVELS)
                return json_error(400, f"{name}: unknown level {level!r} (known: {names})")
            changes.append((None if name == "level" else name, level))
        known = await self.target.log_levels()
        for logger, _ in changes:
            if logger is not None and logger not in known:
                return json_error(404, f"unknown logger {logger!r} (POST /logging lists them)")
        for logger, level in changes:
            await self.target.set_log_level(logger, level)
        levels = await self.target.log_levels()
        body = "active loggers:\n" + "".join(f"  {n}: {lv}\n" for n, lv in levels.items())
        return text(200, body)

    async def healthcheck_fail(self, req: HttpRequest) -> HttpResponse:
        await self.target.set_health_failed(True)
        return text(200, "OK\n")

    async def healthcheck_ok(self, req: HttpRequest) -> HttpResponse:
        await self.target.set_health_failed(False)
        return text(200, "OK\n")

    async def drain_listeners(self, req: HttpRequest) -> HttpResponse:
        unknown = set(req.query) - {"graceful", "inboundonly", "skip_exit"}
        if unknown:
            return json_error(400, f"unknown parameter(s): {', '.join(sorted(unknown))}")
        await self.target.drain_listeners("graceful" in req.query, "inboundonly" in req.query)
        return text(200, "OK\n")

    # ------------------------------------------------------------------ MOSN's

    async def mosn_version(self, req: HttpRequest) -> HttpResponse:
        return text(200, f"trio-mesh version: {__version__}")

    async def mosn_config_dump(self, req: HttpRequest) -> HttpResponse:
        dump = await self.target.config_dump()
        if not req.query:
            return as_json(dump)
        if len(req.query) > 1:
            return text(400, "only support one parameter")
        ((key, values),) = req.query.items()
        config = dump["config"]
        listeners = {lst["name"]: lst for s in config["servers"] for lst in s["listeners"]}
        routers = {
            r["router_config_name"]: r for s in config["servers"] for r in s.get("routers", [])
        }
        clusters = {c["name"]: c for c in config["cluster_manager"]["clusters"]}
        sections: dict[str, Any] = {
            "mosnconfig": config,
            "allrouters": routers,
            "allclusters": clusters,
            "alllisteners": listeners,
        }
        if key in sections:
            return as_json(sections[key])
        by_name = {"router": routers, "cluster": clusters, "listener": listeners}
        if key in by_name:
            name = values[-1]
            if name not in by_name[key]:
                return json_error(404, f"{key}: no {key} named {name!r}")
            return as_json(by_name[key][name])
        return json_error(400, f"unknown parameter {key!r}")

    async def mosn_stats(self, req: HttpRequest) -> HttpResponse:
        if len(req.query) > 1:
            return text(400, "only support one parameter")
        metrics = await self.target.metrics()
        key = _one(req, "key")
        if req.query and key is None:
            return text(400, "only support the key parameter")
        doc: dict[str, dict[str, dict[str, str]]] = {}
        for m in metrics:
            kind, namespace = _mosn_type(m)
            if key is not None and key not in (kind, namespace, f"{kind}.{namespace}"):
                continue
            data = doc.setdefault(kind, {}).setdefault(namespace, {})
            stat = m.name.rsplit(".", 1)[-1]
            if isinstance(m.value, HistogramValue):
                low, high = _min_max(m.value)
                data[stat + "_min"], data[stat + "_max"] = low, high
            else:
                data[stat] = _number(m.value)
        if key is not None and not doc:
            return text(200, f"no metrics key: {key}")
        return HttpResponse(200, json.dumps(doc, indent="\t").encode(), JSON)

    async def mosn_stats_glob(self, req: HttpRequest) -> HttpResponse:
        # MOSN's proxy totals: every downstream counter summed over the listeners.
        totals: dict[str, int | float] = {}
        for m in await self.target.metrics():
            if not m.name.startswith(("http.", "listener.")) or isinstance(m.value, HistogramValue):
                continue
            stat = m.name.rsplit(".", 1)[-1]
            totals[stat] = totals.get(stat, 0) + m.value
        return text(200, "".join(f"{k}:{_number(v)}\n" for k, v in sorted(totals.items())))

    async def mosn_update_loglevel(self, req: HttpRequest) -> HttpResponse:
        try:
            data = json.loads(req.body)
            path, level = data.get("log_path", ""), data.get("log_level", "")
            if not isinstance(path, str) or not isinstance(level, str):
                raise ValueError
        except (ValueError, AttributeError, RecursionError):  # RecursionError: [[[[...
            return json_error(400, "update logger failed")
        if level.lower() not in LEVELS:
            return json_error(400, "update logger failed")
        try:
            await self.target.set_log_level(path or None, level)
        except UnknownLogger:
            return json_error(400, "update logger failed")
        return text(200, "update logger success\n")

    async def mosn_get_loglevel(self, req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, json.dumps(await self.target.log_levels()).encode(), JSON)

    async def mosn_enable_log(self, req: HttpRequest) -> HttpResponse:
        return await self._toggle(req, True)

    async def mosn_disable_log(self, req: HttpRequest) -> HttpResponse:
        return await self._toggle(req, False)

    async def _toggle(self, req: HttpRequest, enabled: bool) -> HttpResponse:
        what = "enable" if enabled else "disable"
        try:
            await self.target.set_logger_enabled(req.body.decode("utf-8").strip(), enabled)
        except (UnknownLogger, UnicodeDecodeError):
            return json_error(400, f"{what} logger failed")
        return text(200, f"{what} logger success\n")

    async def mosn_states(self, req: HttpRequest) -> HttpResponse:
        info = await self.target.server_info()
        state = MOSN_STATES.get(info["state"], 0)
        return text(200, f"pid={info['pid']}&state={state}\n")

    async def mosn_features(self, req: HttpRequest) -> HttpResponse:
        info = await self.target.server_info()
        features = {
            "admin_api": True,
            "xds": info.get("xds_warm") is not None,
            "multiple_workers": info.get("workers", 1) > 1,
        }
        key = _one(req, "key")
        if key is not None:
            return text(200, "true" if features.get(key, False) else "false")
        return as_json(features)

    async def mosn_env(self, req: HttpRequest) -> HttpResponse:
        keys = req.query.get("key")
        if not keys:
            return json_error(400, "no env key")
        found: dict[str, str] = {}
        missing: list[str] = []
        for key in keys:
            value = os.environ.get(key)
            if value is None:
                missing.append(key)
            else:
                # The environment holds credentials too: secret-looking names stay hidden,
                # and so do a URL's password and an inline key under any name.
                found[key] = REDACTED if is_secret_env(key) else redact(value)
        doc: dict[str, Any] = {"env": found}
        if missing:
            doc["not_found"] = missing
        return as_json(doc)


# ---------------------------------------------------------------------- helpers


def _limit(value: int | None) -> int:
    return 2**32 - 1 if value is None else value  # Envoy prints "unlimited" as its max


def _number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _used(m: Metric) -> bool:
    if isinstance(m.value, HistogramValue):
        return m.value.count > 0
    return bool(m.value)


def _quantile(h: HistogramValue, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (0-100), as Envoy estimates
    from its buckets; the last bucket (above every bound) reports the largest bound."""
    if h.count == 0:
        return math.nan
    rank = max(1, math.ceil(h.count * q / 100))
    seen = 0
    for i, c in enumerate(h.counts):
        seen += c
        if seen >= rank:
            return ENVOY_BUCKETS_MS[min(i, len(ENVOY_BUCKETS_MS) - 1)]
    return ENVOY_BUCKETS_MS[-1]


def _min_max(h: HistogramValue) -> tuple[str, str]:
    if h.count == 0:
        return "0", "0"
    return _number(_quantile(h, 0)), _number(_quantile(h, 100))


def _histogram_text(h: HistogramValue) -> str:
    if h.count == 0:
        return "No recorded values"
    return " ".join(f"P{q:g}(nan,{_number(_quantile(h, q))})" for q in QUANTILES)


def stats_json(metrics: list[Metric]) -> dict[str, Any]:
    """The document of ``/stats?format=json`` (``trio_mesh.testing`` reads stats from it)."""
    stats: list[dict[str, Any]] = []
    computed = []
    for m in sorted(metrics, key=lambda m: m.name):
        if isinstance(m.value, HistogramValue):
            h = m.value
            values = [
                {"interval": None, "cumulative": None if h.count == 0 else _quantile(h, q)}
                for q in QUANTILES
            ]
            computed.append({"name": m.name, "values": values})
        else:
            stats.append({"name": m.name, "value": m.value})
    stats.append(
        {"histograms": {"supported_quantiles": list(QUANTILES), "computed_quantiles": computed}}
    )
    return {"stats": stats}


def _mosn_type(m: Metric) -> tuple[str, str]:
    """MOSN's console sink groups by metric type, then by the labels' namespace
    (``key.value`` pairs): ``("cluster", "envoy_cluster_name.backend")``."""
    kind = m.name.split(".", 1)[0]
    namespace = ".".join(f"{k}.{v}" for k, v in sorted(m.tags)) or kind
    return kind, namespace
