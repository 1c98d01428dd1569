"""A configuration's tracers: one per distinct tracing setting its listeners end up with.

A listener's ``proxy`` may carry its own ``tracing`` (Envoy's HCM tracing from xDS, or the same
keys in a file): its own provider, or the top-level block with its own sampling, or tracing off
(``config.proxy_tracing.effective_tracing``). Listeners with the same effective settings share
one :class:`Tracer` and one span exporter. Built at configuration time; a new configuration
keeps the pairs whose settings it still uses (their exporters keep running, and the listeners
that did not change keep their tracer), starts the new ones and closes the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..config.filter_configs import ProxyConfig
from ..config.proxy_tracing import effective_tracing
from ..config.tracing import TracingSettings, tracing_settings
from .tracer import Tracer, TracingStats

if TYPE_CHECKING:
    from ..config import MeshConfig
    from .export import SpanExporter


def proxies(config: MeshConfig) -> Iterator[ProxyConfig]:
    for lst in config.listeners:
        for chain in lst.filter_chains:
            for f in chain.filters:
                if isinstance(f.config, ProxyConfig):
                    yield f.config


class TracerSet:
    """The tracers (with their exporters) of one configuration, by effective settings."""

    def __init__(
        self, config: MeshConfig, stats: TracingStats, previous: TracerSet | None = None
    ) -> None:
        self.global_ = config.tracing
        self.pairs: dict[TracingSettings, tuple[Tracer, SpanExporter]] = {}
        kept = previous.pairs if previous is not None else {}
        for proxy in proxies(config):
            settings = tracing_settings(effective_tracing(proxy, self.global_))
            if settings is None or settings in self.pairs:
                continue
            pair = kept.get(settings)
            if pair is None:
                from .export import SpanExporter  # the SDK only when some listener traces

                tracer = Tracer(settings, stats)
                exporter = SpanExporter(settings, stats)
                tracer.observer = exporter.observer
                pair = (tracer, exporter)
            self.pairs[settings] = pair

    def tracer_for(self, proxy: ProxyConfig) -> Tracer | None:
        """The tracer of a listener's ``proxy`` (``None``: not traced)."""
        settings = tracing_settings(effective_tracing(proxy, self.global_))
        return None if settings is None else self.pairs[settings][0]

    def exporters(self) -> list[SpanExporter]:
        return [exporter for _, exporter in self.pairs.values()]

    @property
    def default(self) -> Tracer | None:
        """The tracer of the top-level ``tracing`` block when some listener uses it."""
        settings = tracing_settings(self.global_)
        pair = self.pairs.get(settings) if settings is not None else None
        return pair[0] if pair is not None else None
