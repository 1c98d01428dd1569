"""The end of a request: the listener's observers get its record, in order, once."""

from __future__ import annotations

import time

import pytest

from trio_mesh.proxy.observers import (
    AccessLogObserver,
    Observers,
    StatsObserver,
    listener_observers,
)
from trio_mesh.proxy.record import RequestRecord
from trio_mesh.stats import ListenerStats


class Seen:
    def __init__(self, name: str, seen: list, detailed: bool = False) -> None:
        self.name, self.seen, self.detailed = name, seen, detailed

    def request_end(self, record: RequestRecord) -> None:
        self.seen.append((self.name, record.response_code, record.duration))

    def log(self, record: RequestRecord) -> None:  # as an access log
        self.request_end(record)


def test_observers_run_in_order_and_only_detailed_ones_get_the_end_time():
    seen: list = []
    plain = Observers([Seen("a", seen), Seen("b", seen)])
    assert not plain.detailed
    plain.end(RequestRecord(start=1.0, response_code=200))
    assert seen == [("a", 200, None), ("b", 200, None)]
    seen.clear()
    timed = Observers([Seen("a", seen), Seen("log", seen, detailed=True)])
    assert timed.detailed
    timed.end(RequestRecord(start=0.0, response_code=503))
    assert [(name, code) for name, code, _ in seen] == [("a", 503), ("log", 503)]
    assert all(duration is not None and duration > 0 for _, _, duration in seen)


def test_stats_count_answered_requests_by_class_and_logs_follow():
    stats = ListenerStats()
    seen: list = []
    observers = listener_observers(stats, [Seen("log", seen)])
    assert [type(o) for o in observers.observers] == [StatsObserver, AccessLogObserver]
    for code in (200, 204, 404, 503, 101, 302, 0):
        observers.end(RequestRecord(response_code=code))
    counts = (
        stats.downstream_rq_total,
        stats.downstream_rq_1xx,
        stats.downstream_rq_2xx,
        stats.downstream_rq_3xx,
        stats.downstream_rq_4xx,
        stats.downstream_rq_5xx,
    )
    assert counts == (6, 1, 2, 1, 1, 1)  # nothing answered (0): not a request counted
    assert len(seen) == 7  # but logged
    only_stats = listener_observers(ListenerStats(), ())
    assert not only_stats.detailed
    assert only_stats.end == only_stats.observers[0].request_end  # no loop on the fast path


def test_stats_end_active_requests_and_time_the_answered_ones():
    stats = ListenerStats()
    observers = listener_observers(stats, ())
    stats.downstream_rq_active = 3  # as the proxies count each request's start
    observers.end(RequestRecord(start=time.monotonic() - 0.02, response_code=200))
    observers.end(RequestRecord(start=time.monotonic(), response_code=0))  # client gone
    assert stats.downstream_rq_active == 1
    timed = stats.downstream_rq_time.snapshot()
    assert timed.count == 1 and 20 <= timed.sum < 5000
    # with an access log, the duration ``Observers`` stamped is the one recorded
    logged = listener_observers(stats, [Seen("log", [])])
    record = RequestRecord(start=time.monotonic() - 0.05, response_code=503)
    logged.end(record)
    assert record.duration is not None
    assert stats.downstream_rq_time.sum - timed.sum == pytest.approx(record.duration * 1000)
    assert stats.downstream_rq_active == 0
