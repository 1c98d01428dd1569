"""The one place where a request ends: an ordered list of observers gets its record.

Every proxy (HTTP/1, HTTP/2 and gRPC, RPC) hands each request's
:class:`~trio_mesh.proxy.record.RequestRecord` to its listener's :class:`Observers` once, at the
end. The stats counters and the access logs are the first two observers; a new one (metrics,
tracing, outlier detection) is one more class with ``request_end(record)``, added in
:func:`listener_observers`, without touching the proxies.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from time import monotonic as _monotonic
from typing import Any, Protocol

from ..stats import BOUNDS_MS, ListenerStats
from .record import RequestRecord


class Observer(Protocol):
    #: Whether it reads more than the status, flags, cluster and host (the proxies then fill
    #: the record's descriptive fields: time of day, method, path, addresses, durations).
    detailed: bool

    def request_end(self, record: RequestRecord) -> None:
        """The request is over; must not block nor raise (queue work, count drops)."""


class StatsObserver:
    """The listener's ``downstream_rq_*`` stats: the request leaves ``downstream_rq_active``
    (each proxy adds it when the request begins), and an answered one is counted by its
    response class and timed in ``downstream_rq_time``."""

    __slots__ = ("rq_time", "stats")
    detailed = False

    def __init__(self, stats: ListenerStats) -> None:
        self.stats = stats
        self.rq_time = stats.downstream_rq_time

    def request_end(self, record: RequestRecord) -> None:
        stats = self.stats
        stats.downstream_rq_active -= 1
        code = record.response_code
        if not code:
            return  # nothing was answered (the client went first)
        # A detailed observer had ``Observers`` stamp the duration; else one clock read here.
        duration = record.duration
        if duration is None:
            duration = _monotonic() - record.start
        ms = duration * 1000.0
        timed = self.rq_time  # Histogram.record, inlined: a call less per request
        timed.counts[bisect_left(BOUNDS_MS, ms)] += 1
        timed.count += 1
        timed.sum += ms
        stats.downstream_rq_total += 1
        klass = code // 100
        if klass == 2:
            stats.downstream_rq_2xx += 1
        elif klass == 4:
            stats.downstream_rq_4xx += 1
        elif klass == 5:
            stats.downstream_rq_5xx += 1
        elif klass == 3:
            stats.downstream_rq_3xx += 1
        elif klass == 1:
            stats.downstream_rq_1xx += 1


class AccessLogObserver:
    """The listener's access logs (``proxy/accesslog.py``): one line each per request."""

    __slots__ = ("logs",)
    detailed = True

    def __init__(self, logs: Sequence[Any]) -> None:
        self.logs = tuple(logs)

    def request_end(self, record: RequestRecord) -> None:
        for access_log in self.logs:
            access_log.log(record)


class Observers:
    """A listener's observers, in order, made once per configuration. ``end(record)`` ends a
    request: it stamps the end time when an observer reads it, then calls each observer."""

    __slots__ = ("_calls", "detailed", "end", "observers")

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)
        self._calls = tuple(o.request_end for o in self.observers)
        self.detailed = any(o.detailed for o in self.observers)
        # The fewest calls on the per-request path for what is configured.
        self.end: Callable[[RequestRecord], None]
        if self.detailed:
            self.end = self._end_timed
        elif len(self._calls) == 1:
            self.end = self._calls[0]
        else:
            self.end = self._end

    def _end(self, record: RequestRecord) -> None:
        for call in self._calls:
            call(record)

    def _end_timed(self, record: RequestRecord) -> None:
        record.duration = _monotonic() - record.start
        for call in self._calls:
            call(record)


def listener_observers(
    stats: ListenerStats, access_logs: Sequence[Any], tracer: Any = None
) -> Observers:
    """A listener's observers: its stats counters, then its access logs (if any), then the
    tracer's span queue (when tracing is on)."""
    observers: list[Observer] = [StatsObserver(stats)]
    if access_logs:
        observers.append(AccessLogObserver(access_logs))
    if tracer is not None and tracer.observer is not None:
        observers.append(tracer.observer)
    return Observers(observers)
