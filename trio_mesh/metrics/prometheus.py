"""The Prometheus exposition of the proxy's metrics, in Envoy's names, built at scrape time.

Two formats by content negotiation (``render``): OpenMetrics 1.0 when the ``Accept`` header
asks for ``application/openmetrics-text``, else Prometheus text 0.0.4 (what Envoy serves).
Both come from one grouping of the ``Metric`` list into families (``envoy_`` + tag name, one
family per tag name with all its tag sets).

Counter names. Envoy exposes every counter under its own name with ``# TYPE <name> counter``,
whether it ends in ``_total`` (``envoy_http_downstream_rq_total``) or not
(``envoy_cluster_upstream_cx_connect_fail``); dashboards query those names.
``prometheus_client`` follows OpenMetrics, where a counter family's samples always end in
``_total``: its text writer appends ``_total`` to every counter (``..._connect_fail_total``).
So that a query finds the same series whichever format Prometheus negotiated:

- text 0.0.4 is written here (``_text``), exactly as Envoy writes it;
- OpenMetrics goes through ``prometheus_client``'s custom-collector API
  (``EnvoyCollector`` yielding ``CounterMetricFamily``/``GaugeMetricFamily``/
  ``HistogramMetricFamily`` into a fresh ``CollectorRegistry``). A counter whose name ends in
  ``_total`` is a ``counter`` family (its sample keeps Envoy's name); one that does not is
  exposed with type ``unknown`` under its bare name, since OpenMetrics allows no counter
  sample without ``_total``: same series name, only the type metadata differs.

Everything happens at render time: the request path only bumps integers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.metrics_core import Metric as PromFamily
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from .model import ENVOY_BUCKETS_MS, HistogramValue, Kind, Metric, sanitize, valid_text

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
__all__ = ["OPENMETRICS_TYPE", "TEXT_TYPE", "EnvoyCollector", "render", "wants_openmetrics"]

#: Histogram ``le`` labels as Envoy prints its bounds (``0.5``, ``1``, ``3.6e+06``).
_LE = (*(f"{b:g}" for b in ENVOY_BUCKETS_MS), "+Inf")
_DEFAULT_HELP = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram (ms)"}


def render(metrics: Sequence[Metric], accept: str | None) -> tuple[str, bytes]:
    """``(content type, body)`` of ``metrics`` in the format ``accept`` negotiates."""
    families = group(metrics)
    if wants_openmetrics(accept):
        registry = CollectorRegistry(auto_describe=False)  # never the global default one
        registry.register(EnvoyCollector(families))
        return OPENMETRICS_TYPE, generate_openmetrics(registry)
    return TEXT_TYPE, _text(families)


def wants_openmetrics(accept: str | None) -> bool:
    """True when the ``Accept`` header lists ``application/openmetrics-text`` (not with
    ``q=0``). Prometheus asks for it first; ``text/plain`` is its fallback."""
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        q = next((p.split("=", 1)[1] for p in params if p.strip().lower().startswith("q=")), "1")
        try:
            if float(q) > 0:
                return True
        except ValueError:
            return True  # a malformed weight: the type is still asked for
    return False


@attrs.define
class Family:
    """One exposed family: Envoy's Prometheus name, its kind, and a row per tag set."""

    name: str
    kind: Kind
    help: str
    rows: list[tuple[tuple[tuple[str, str], ...], int | float | HistogramValue]]


def group(metrics: Iterable[Metric]) -> list[Family]:
    """Families by name, sorted (Envoy's order). A second metric with an already seen tag
    set, or of another kind than its family's first, is left out: Prometheus refuses a
    scrape with a duplicate series."""
    families: dict[str, Family] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for m in metrics:
        name = m.prometheus_name()
        labels = tuple((_label_name(k), v if v.isascii() else valid_text(v)) for k, v in m.tags)
        family = families.get(name)
        if family is None:
            help_ = m.help or f"{_DEFAULT_HELP[m.kind]} {m.tag_name}"
            family = families[name] = Family(name, m.kind, help_, [])
        elif family.kind != m.kind:
            continue
        if (name, labels) in seen:
            continue
        seen.add((name, labels))
        family.rows.append((labels, m.value))
    return [families[name] for name in sorted(families)]


def _label_name(tag: str) -> str:
    # Tags are ours (Envoy's tag names, ``worker``); this only keeps a stray one valid.
    name = sanitize(tag)
    if not name or name[0].isdigit() or name.startswith("__") or name == "le":
        name = "tag_" + name.lstrip("_")
    return name


class EnvoyCollector:
    """A ``prometheus_client`` custom collector over already grouped families."""

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[PromFamily]:
        for f in self.families:
            names = sorted({k for labels, _ in f.rows for k, _ in labels})
            family: PromFamily
            if f.kind == "histogram":
                family = HistogramMetricFamily(f.name, f.help, labels=names)
            elif f.kind == "gauge":
                family = GaugeMetricFamily(f.name, f.help, labels=names)
            elif f.name.endswith("_total"):
                family = CounterMetricFamily(f.name, f.help, labels=names)
            else:
                family = UnknownMetricFamily(f.name, f.help, labels=names)
            for labels, value in f.rows:
                given = dict(labels)
                # A tag set without one of the family's labels: empty, which Prometheus
                # reads as absent.
                values = [given.get(k, "") for k in names]
                if isinstance(value, HistogramValue):
                    assert isinstance(family, HistogramMetricFamily)
                    buckets = list(zip(_LE, value.cumulative(), strict=True))
                    family.add_metric(values, buckets, value.sum)
                else:
                    assert isinstance(
                        family, GaugeMetricFamily | CounterMetricFamily | UnknownMetricFamily
                    )
                    family.add_metric(values, value)
            yield family


def _text(families: Sequence[Family]) -> bytes:
    """Prometheus text 0.0.4, as Envoy writes it (counters under their own names)."""
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {_escape_help(f.help)}\n# TYPE {f.name} {f.kind}\n")
        for labels, value in f.rows:
            if isinstance(value, HistogramValue):
                for le, count in zip(_LE, value.cumulative(), strict=True):
                    out.append(f"{f.name}_bucket{_labels((*labels, ('le', le)))} {count}\n")
                out.append(f"{f.name}_sum{_labels(labels)} {floatToGoString(value.sum)}\n")
                out.append(f"{f.name}_count{_labels(labels)} {value.count}\n")
            else:
                out.append(f"{f.name}{_labels(labels)} {_number(value)}\n")
    return "".join(out).encode()


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else floatToGoString(value)


def _labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
