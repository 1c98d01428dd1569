"""``AdminTarget`` for ``--workers N``: every call fanned out to the worker processes.

- Metrics: counters and histograms summed by (name, tags); gauges that belong to one process
  (connections and requests active, bytes buffered, memory, the ADS stream up) kept per
  worker with a ``worker`` label (and ``worker_<slot>`` in the dotted name, as Envoy names
  its per-worker stats); other gauges
  (memberships, versions, circuit breakers open) are the same in every worker or "any": max.
  ``server.live`` is the minimum, ``server.state`` the worst, ``server.uptime`` the
  supervisor's, ``server.concurrency`` the number of workers.
- A worker's counters live in its process: when it dies, they go with it (as Envoy's do on
  a hot restart), and the sums drop; Prometheus reads a drop as a counter reset.
- Commands go to every worker; a worker that (re)connects later gets the sticky ones
  (health check failed, log levels, loggers disabled, drain) replayed, so a restarted worker
  does not come back ready behind a ``/healthcheck/fail``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from ..metrics.model import HistogramValue, Metric, from_json
from ..network.throttled_log import ThrottledLog
from .hub import CALL_TIMEOUT, WorkerConn, WorkerError, WorkerGone, WorkerHub
from .target import UnknownLogger

log = logging.getLogger("trio_mesh.admin.fanout")

#: Envoy's ``server.state`` numbers: the larger, the further from serving.
STATE_NUMBERS = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}
#: Per-process gauges besides every ``*_active`` and ``*_buffered``.
PER_WORKER_GAUGES = frozenset(
    {"server.memory_allocated", "server.total_connections", "control_plane.connected_state"}
)
#: Exception kinds that mean "the request was wrong" (a client error), not a failure.
CLIENT_ERRORS = frozenset({"ValueError", "KeyError", "TypeError"})


def is_per_worker(metric: Metric) -> bool:
    return metric.kind == "gauge" and (
        metric.tag_name.endswith(("_active", "_buffered")) or metric.tag_name in PER_WORKER_GAUGES
    )


def per_worker(metric: Metric, slot: int) -> Metric:
    head, _, stat = metric.name.rpartition(".")
    name = f"{head}.worker_{slot}.{stat}" if head else f"worker_{slot}.{stat}"
    return attrs.evolve(metric, name=name, tags=(*metric.tags, ("worker", str(slot))))


def merge_metrics(
    per_slot: Mapping[int, Sequence[Metric]], *, workers: int, uptime: float
) -> list[Metric]:
    """One scrape from the workers' snapshots (by slot), in first-seen order."""
    merged: dict[tuple[str, Any], Metric] = {}
    for slot in sorted(per_slot):
        for m in per_slot[slot]:
            if is_per_worker(m):
                m = per_worker(m, slot)
                merged[(m.name, m.tags)] = m
                continue
            key = (m.name, m.tags)
            have = merged.get(key)
            if have is None or have.kind != m.kind:
                merged.setdefault(key, m)
                continue
            merged[key] = attrs.evolve(have, value=_combine(have, m))
    for key, m in merged.items():
        if m.name == "server.uptime":
            merged[key] = attrs.evolve(m, value=int(uptime))
        elif m.name == "server.concurrency":
            merged[key] = attrs.evolve(m, value=workers)
    return list(merged.values())


def _combine(have: Metric, new: Metric) -> int | float | HistogramValue:
    a, b = have.value, new.value
    if isinstance(a, HistogramValue) and isinstance(b, HistogramValue):
        return a + b if len(a.counts) == len(b.counts) else a
    if isinstance(a, HistogramValue) or isinstance(b, HistogramValue):
        return a
    if have.kind == "counter":
        return a + b
    if have.name == "server.live":
        return min(a, b)
    return max(a, b)  # server.state (the worst), memberships, versions, *_open


def merge_clusters(per_worker: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Envoy's ``/clusters`` data: the first worker's, with every worker's cluster and host
    counts added up (all are counts of requests and connections, or of those active)."""
    merged: dict[str, dict[str, Any]] = {}
    for clusters in per_worker:
        for cluster in clusters:
            name = cluster.get("name")
            have = merged.get(name)  # type: ignore[arg-type]
            if have is None:
                merged[name] = copy.deepcopy(cluster)  # type: ignore[index]
                continue
            _add_numbers(have.get("stats"), cluster.get("stats"))
            hosts = {_host_key(h): h for h in have.get("host_statuses", ())}
            for host in cluster.get("host_statuses", ()):
                mine = hosts.get(_host_key(host))
                if mine is None:
                    have.setdefault("host_statuses", []).append(copy.deepcopy(host))
                    continue
                values = {s.get("name"): s for s in mine.get("stats", ())}
                for stat in host.get("stats", ()):
                    if (into := values.get(stat.get("name"))) is not None:
                        _add_numbers(into, stat, ("value",))
    return list(merged.values())


def _host_key(host: dict[str, Any]) -> str:
    return repr(host.get("address"))


def _add_numbers(into: Any, other: Any, keys: Sequence[str] | None = None) -> None:
    if not isinstance(into, dict) or not isinstance(other, dict):
        return
    for key in other if keys is None else keys:
        a, b = into.get(key), other.get(key)
        if type(a) is int and type(b) is int:
            into[key] = a + b


def merge_state(states: Sequence[str], workers: int) -> str:
    """The proxy's state: the worst of its workers'; a worker not linked (starting, or
    restarting after a crash) counts as ``PRE_INITIALIZING``."""
    if len(states) < workers:
        states = [*states, "PRE_INITIALIZING"]
    return max(states, key=lambda s: STATE_NUMBERS.get(s, 3)) if states else "PRE_INITIALIZING"


class FanOutTarget:
    """``AdminTarget`` over the workers linked to ``hub``. ``started``: the supervisor's
    ``time.monotonic()`` at start (uptime outlives an admin process restart)."""

    def __init__(
        self, hub: WorkerHub, workers: int, started: float, pid: int | None = None
    ) -> None:
        self.hub = hub
        self.workers = workers
        self.started = started
        #: The pid ``server_info`` reports: the supervisor's (the one to signal).
        self.pid = os.getpid() if pid is None else pid
        self._bad = ThrottledLog(log, 5.0)
        # Sticky commands, replayed to a worker that links later.
        self._health_failed = False
        self._drain: dict[str, Any] | None = None
        self._log_levels: dict[str | None, str] = {}
        self._enabled: dict[str, bool] = {}
        #: Whether ``/healthcheck/*`` was called on this admin process. Until then, a worker
        #: that links saying its health check failed (this process was restarted after a
        #: ``/healthcheck/fail``) makes it failed for every worker: failing closed.
        self._told_health = False
        hub.on_hello.append(self._replay)

    async def _first(self, op: str) -> Any:
        for slot, result in (await self.hub.call_all(op)).items():
            if not isinstance(result, Exception):
                return result
            self._bad.log(logging.WARNING, "worker %d: %s failed: %s", slot, op, result)
        raise RuntimeError(f"no worker answered {op!r}")

    async def _broadcast(self, op: str, args: dict[str, Any]) -> None:
        """Every linked worker runs it; the errors, if any, raised together (a ``ValueError``
        when every one is a client error)."""
        results = await self.hub.call_all(op, args)
        failed = [r for r in results.values() if isinstance(r, Exception)]
        if not failed:
            return
        message = "; ".join(str(e) for e in failed)
        kinds = {e.kind if isinstance(e, WorkerError) else "" for e in failed}
        if kinds == {"UnknownLogger"}:
            raise UnknownLogger(message)
        if kinds <= CLIENT_ERRORS:
            raise ValueError(message)
        raise RuntimeError(message)

    async def metrics(self) -> list[Metric]:
        per_slot: dict[int, list[Metric]] = {}
        for slot, result in (await self.hub.call_all("metrics")).items():
            if isinstance(result, Exception):
                continue  # logged by the hub (timeout) or below
            try:
                per_slot[slot] = from_json(result)
            except (TypeError, ValueError) as exc:
                self._bad.log(logging.WARNING, "worker %d sent bad metrics: %s", slot, exc)
        return merge_metrics(per_slot, workers=self.workers, uptime=time.monotonic() - self.started)

    async def clusters(self) -> list[dict[str, Any]]:
        answers = await self.hub.call_all("clusters")
        lists = [r for r in answers.values() if isinstance(r, list)]
        if not lists:
            raise RuntimeError("no worker answered 'clusters'")
        return merge_clusters(lists)

    async def config_dump(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._first("config_dump")
        return result

    async def server_info(self) -> dict[str, Any]:
        answers = await self.hub.call_all("server_info")
        infos = {s: r for s, r in answers.items() if isinstance(r, dict)}
        info: dict[str, Any] = dict(next(iter(infos.values()), {}))
        states = [str(i.get("state")) for i in infos.values()]
        uptime = f"{int(time.monotonic() - self.started)}s"
        info.update(
            state=merge_state(states, self.workers),
            health_failed=self._health_failed
            or any(bool(i.get("health_failed")) for i in infos.values()),
            uptime_current_epoch=uptime,
            uptime_all_epochs=uptime,
            pid=self.pid,
            workers=self.workers,
            max_rss_kib=sum(int(i.get("max_rss_kib") or 0) for i in infos.values()),
            worker_status=[
                {
                    "worker": slot,
                    "pid": infos[slot].get("pid") if slot in infos else None,
                    "state": infos[slot].get("state") if slot in infos else "NOT_ANSWERING",
                    "health_failed": bool(infos[slot].get("health_failed"))
                    if slot in infos
                    else None,
                }
                for slot in range(self.workers)
            ],
        )
        return info

    async def set_health_failed(self, failed: bool) -> None:
        self._health_failed = failed
        self._told_health = True
        await self._broadcast("set_health_failed", {"failed": failed})

    async def drain_listeners(self, graceful: bool, inbound_only: bool) -> None:
        args = {"graceful": graceful, "inbound_only": inbound_only}
        # Recorded first: a drain that some worker failed still reaches one that restarts.
        self._drain = args
        await self._broadcast("drain_listeners", args)

    async def set_log_level(self, logger: str | None, level: str) -> None:
        await self._broadcast("set_log_level", {"logger": logger, "level": level})
        self._log_levels[logger] = level  # only once every worker accepted it
        if logger is None:  # every logger: what was set per logger before is overridden
            self._log_levels = {None: level}

    async def set_logger_enabled(self, logger: str, enabled: bool) -> None:
        await self._broadcast("set_logger_enabled", {"logger": logger, "enabled": enabled})
        self._enabled[logger] = enabled

    async def log_levels(self) -> dict[str, str]:
        result: dict[str, str] = await self._first("log_levels")
        return result

    async def _adopt_health(self, conn: WorkerConn) -> None:
        with trio.move_on_after(CALL_TIMEOUT):
            try:
                info = await conn.call("server_info", {})
            except (WorkerGone, WorkerError):  # gone, or no answer: nothing to adopt
                return
            if isinstance(info, dict) and info.get("health_failed") and not self._told_health:
                log.warning("worker %d says its health check failed: failing all", conn.slot)
                self._health_failed = True
                await self._broadcast_quietly("set_health_failed", {"failed": True})

    async def _broadcast_quietly(self, op: str, args: dict[str, Any]) -> None:
        try:
            await self._broadcast(op, args)
        except (RuntimeError, ValueError) as exc:
            self._bad.log(logging.WARNING, "%s: %s", op, exc)

    async def _replay(self, conn: WorkerConn) -> None:
        """Bring a worker that just linked up to the commands the others got."""
        if not self._told_health and not self._health_failed:
            await self._adopt_health(conn)
        calls: list[tuple[str, dict[str, Any]]] = [
            ("set_log_level", {"logger": lg, "level": lv}) for lg, lv in self._log_levels.items()
        ]
        calls += [
            ("set_logger_enabled", {"logger": lg, "enabled": on})
            for lg, on in self._enabled.items()
        ]
        if self._health_failed:
            calls.append(("set_health_failed", {"failed": True}))
        if self._drain is not None:
            calls.append(("drain_listeners", self._drain))
        for op, args in calls:
            problem: object = f"no answer in {CALL_TIMEOUT}s"
            with trio.move_on_after(CALL_TIMEOUT):
                try:
                    await conn.call(op, args)
                    continue
                except Exception as exc:  # gone, or refused: the next link replays again
                    problem = exc
            self._bad.log(logging.WARNING, "worker %d: replaying %s: %s", conn.slot, op, problem)
