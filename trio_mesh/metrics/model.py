"""What a scrape reads: one :class:`Metric` per stat, Envoy's names and tags.

The request path never builds these: it bumps plain integers (``trio_mesh.stats``) and
records into :class:`Histogram`; a scrape turns them into ``Metric`` values (``collect``),
which are plain data, so that a worker process can ship them to the one that serves the admin
port (``to_json`` / ``from_json``) and several workers' can be summed (``merge``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

#: Envoy's default histogram bucket bounds, in milliseconds (``le``: a value equal to a bound
#: falls in that bound's bucket); a last, implicit bucket holds everything above.
ENVOY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip

Kind = Literal["counter", "gauge", "histogram"]
Tags = tuple[tuple[str, str], ...]


class Histogram:
    """A latency histogram on the request path: ``record(ms)`` is one bisect and three
    integer bumps, no lock (one thread per process)."""

    __slots__ = ("counts", "count", "sum")
    bounds = ENVOY_BUCKETS_MS

    def __init__(self) -> None:
        #: Per bucket, not cumulative; ``len(bounds) + 1`` (the last: above every bound).
        self.counts = [0] * (len(ENVOY_BUCKETS_MS) + 1)
        self.count = 0
        self.sum = 0.0

    def record(self, value_ms: float) -> None:
        self.counts[bisect_left(ENVOY_BUCKETS_MS, value_ms)] += 1
        self.count += 1
        self.sum += value_ms

    def snapshot(self) -> HistogramValue:
        return HistogramValue(tuple(self.counts), self.sum, self.count)


@attrs.frozen
class HistogramValue:
    """A histogram read at scrape time: per-bucket counts (not cumulative, the last bucket
    above every bound of ``ENVOY_BUCKETS_MS``), the sum (ms) and the count."""

    counts: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for c in self.counts:
            total += c
            out.append(total)
        return out

    def __add__(self, other: HistogramValue) -> HistogramValue:
        return HistogramValue(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.sum + other.sum,
            self.count + other.count,
        )


@attrs.frozen
class Metric:
    """One stat. ``name``: Envoy's full dotted name (``cluster.backend.upstream_rq_total``);
    ``tag_name``: the same with the tagged segments taken out (``cluster.upstream_rq_total``),
    whose Prometheus family is ``envoy_`` + ``tag_name`` with ``.`` as ``_``; ``tags``: the
    Prometheus labels (``(("envoy_cluster_name", "backend"),)``)."""

    name: str
    tag_name: str
    tags: Tags
    kind: Kind
    value: int | float | HistogramValue
    help: str = ""

    def prometheus_name(self) -> str:
        return "envoy_" + sanitize(self.tag_name)


def valid_text(text: str) -> str:
    """``text`` with any lone surrogate (a JSON config's ``"\\ud800"``, which no UTF-8 can
    carry) replaced by U+FFFD, so that one odd name cannot fail a whole scrape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def sanitize(name: str) -> str:
    """Envoy's Prometheus name sanitising: anything but ``[a-zA-Z0-9_]`` becomes ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)


def to_json(metrics: Iterable[Metric]) -> list[list[Any]]:
    """Plain JSON data (a worker's snapshot on the wire)."""
    out: list[list[Any]] = []
    for m in metrics:
        value: Any = m.value
        if isinstance(value, HistogramValue):
            value = [list(value.counts), value.sum, value.count]
        out.append([m.name, m.tag_name, [list(t) for t in m.tags], m.kind, value, m.help])
    return out


def from_json(data: Sequence[Sequence[Any]]) -> list[Metric]:
    out = []
    for name, tag_name, tags, kind, value, help_ in data:
        if kind == "histogram":
            counts, total, count = value
            value = HistogramValue(tuple(counts), float(total), int(count))
        out.append(Metric(name, tag_name, tuple((k, v) for k, v in tags), kind, value, help_))
    return out
