"""The request path's half of tracing: read the incoming context, decide, pass it on.

A :class:`Tracer` is built once per configuration (``tracing`` on, OpenTelemetry driver).
``start_http(headers, record)`` runs once per HTTP request (HTTP/1, HTTP/2, gRPC), before the
stream filters: the context comes from ``traceparent`` (W3C), else ``b3`` (single), else the
``x-b3-*`` headers, else none (a new trace, sampled at ``random_sampling`` percent). This hop
is a child span with a new id; an incoming sampled flag is honoured. The upstream-bound headers
are rewritten in place: ``traceparent`` always (``tracestate`` passed on), B3 in the form(s)
it came in. The record gets ``trace_id``, ``span_id``, ``parent_span_id``, ``trace_sampled``;
a sampled request's span is queued at its end by the tracer's observer (``export.py``).

``start_rpc(get, set, record)`` does the same for an RPC header map (bolt): SOFA's
``sofaTraceId`` / ``sofaRpcId`` / ``sofaPenAttrs``, a child rpc id (``0.1`` -> ``0.1.1``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from random import randbytes as _randbytes
from random import random as _random
from typing import TYPE_CHECKING

import attrs

from ..config.tracing import TracingSettings
from ..stats import Stats
from .context import (
    B3,
    B3_FLAGS,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_SPAN_ID,
    B3_TRACE_ID,
    HTTP_HEADERS,
    SOFA_PEN_ATTRS,
    SOFA_RPC_ID,
    SOFA_TRACE_ID,
    TRACEPARENT,
    TRACESTATE,
    B3Context,
    format_b3_multi,
    format_b3_single,
    new_span_id,
    new_trace_id,
    parse_b3_multi,
    parse_b3_single,
    parse_sofa,
    parse_traceparent,
    parse_tracestate,
    sofa_trace_int,
)

if TYPE_CHECKING:
    from ..proxy.record import RequestRecord

Header = tuple[bytes, bytes]
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@attrs.define(eq=False)
class TracingStats(Stats):
    """The exporter's counters (Envoy's ``tracing.*`` scope): one object per server, kept
    across configuration changes."""

    spans_sent: int = 0
    spans_dropped: int = 0
    export_failed: int = 0


class Tracer:
    """Built once per configuration; ``observer``: its span queue (``export.py``), set by
    the server when it builds the exporter."""

    __slots__ = ("_rate", "observer", "settings", "stats")

    def __init__(self, settings: TracingSettings, stats: TracingStats | None = None) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else TracingStats()
        self._rate = settings.random_sampling
        self.observer: object = None

    def _sample(self) -> bool:
        rate = self._rate
        return rate >= 100.0 or (rate > 0.0 and _random() * 100.0 < rate)

    def start_http(self, headers: list[Header], record: RequestRecord) -> None:
        """Trace one HTTP request: ``headers`` (the request's, upstream-bound, lower-case
        names) get this hop's context in place; ``record`` its ids."""
        for name, _ in headers:
            if name in HTTP_HEADERS:
                self._start_http(headers, record)
                return
        # No context (the usual case at an edge): a new trace, its ids drawn as hex at once.
        # Not sampled, the context still goes on with flag 00, as W3C says and Envoy does.
        ids = _randbytes(24).hex()
        trace_hex = ids[:32]
        span_hex = ids[32:]
        if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
            self._start_http(headers, record)  # never zero (once in 2**64 requests)
            return
        rate = self._rate
        sampled = rate >= 100.0 or (rate > 0.0 and _random() * 100.0 < rate)
        headers.append(
            (TRACEPARENT, f"00-{ids[:32]}-{span_hex}-{'01' if sampled else '00'}".encode())
        )
        record.trace_id = trace_hex
        record.span_id = span_hex
        record.parent_span_id = None
        record.trace_sampled = sampled

    def _start_http(self, headers: list[Header], record: RequestRecord) -> None:
        """``start_http`` for a request with trace headers (any of ``HTTP_HEADERS``)."""
        traceparent: bytes | None = None
        parents = 0
        states: list[bytes] = []
        single: bytes | None = None
        multi: dict[bytes, bytes] | None = None
        for name, value in headers:
            if name in HTTP_HEADERS:
                if name == TRACEPARENT:
                    traceparent = value
                    parents += 1
                elif name == TRACESTATE:
                    states.append(value)
                elif name == B3:
                    single = value if single is None else single
                else:
                    if multi is None:
                        multi = {}
                    multi.setdefault(name, value)
        trace_id = parent_id = 0
        sampled: bool | None = None
        debug = False
        wide = True
        tracestate = None
        if traceparent is not None:
            # W3C: more than one traceparent field is no context at all
            tp = parse_traceparent(traceparent) if parents == 1 else None
            if tp is not None:
                trace_id, parent_id, sampled = tp.trace_id, tp.span_id, tp.sampled
                if states:
                    tracestate = parse_tracestate(states)
        if not trace_id and (single is not None or multi is not None):
            b3: B3Context | None = None
            if single is not None:
                b3 = parse_b3_single(single)
            if b3 is None and multi is not None:
                g = multi.get
                b3 = parse_b3_multi(
                    g(B3_TRACE_ID), g(B3_SPAN_ID), g(B3_PARENT_SPAN_ID), g(B3_SAMPLED), g(B3_FLAGS)
                )
            if b3 is not None:
                trace_id, parent_id, sampled = b3.trace_id, b3.span_id, b3.sampled
                debug, wide = b3.debug, b3.wide or not b3.trace_id
        if sampled is None:
            sampled = self._sample()
        if not trace_id:
            trace_id = new_trace_id()
            parent_id = 0
        span_id = new_span_id()
        if traceparent is not None or states or single is not None or multi is not None:
            headers[:] = [h for h in headers if h[0] not in HTTP_HEADERS]
        trace_hex = b"%032x" % trace_id
        span_hex = b"%016x" % span_id
        headers.append(
            (TRACEPARENT, b"00-%s-%s-%s" % (trace_hex, span_hex, b"01" if sampled else b"00"))
        )
        if tracestate is not None:
            headers.append((TRACESTATE, tracestate))
        if single is not None or multi is not None:
            self._b3_out(headers, single is not None, multi is not None, trace_id, span_id,
                         sampled, parent_id, debug, wide)  # fmt: skip
        record.trace_id = trace_hex.decode()
        record.span_id = span_hex.decode()
        record.parent_span_id = f"{parent_id:016x}" if parent_id else None
        record.trace_sampled = sampled

    @staticmethod
    def _b3_out(
        headers: list[Header],
        single: bool,
        multi: bool,
        trace_id: int,
        span_id: int,
        sampled: bool,
        parent_id: int,
        debug: bool,
        wide: bool,
    ) -> None:
        """B3 in the form(s) it came in, this hop's span the caller's child."""
        if single:
            value = format_b3_single(trace_id, span_id, sampled, parent_id, debug=debug, wide=wide)
            headers.append((B3, value))
        if multi:
            headers += format_b3_multi(
                trace_id, span_id, sampled, parent_id, debug=debug, wide=wide
            )

    def start_rpc(
        self,
        get: Callable[[str], str | None],
        set_header: Callable[[str, str], None],
        record: RequestRecord,
    ) -> None:
        """Trace one RPC request by its header map (bolt, as SOFARPC writes it): the caller's
        SOFA context, or a new trace (sampled at ``random_sampling``); upstream gets this
        hop's child rpc id. SOFA carries no sampled flag: a request with a context is
        sampled at the same rate as one without."""
        ctx = parse_sofa(get(SOFA_TRACE_ID), get(SOFA_RPC_ID), get(SOFA_PEN_ATTRS))
        if ctx is None:
            trace_id = new_trace_id()
            sofa_id = f"{trace_id:032x}"
            set_header(SOFA_TRACE_ID, sofa_id)
            set_header(SOFA_RPC_ID, "0.1")
            record.trace_id = sofa_id
        else:
            set_header(SOFA_RPC_ID, ctx.child_rpc_id())  # trace id and baggage go on as they are
            record.trace_id = f"{sofa_trace_int(ctx.trace_id):032x}"
        record.span_id = f"{new_span_id():016x}"
        record.parent_span_id = None
        # SOFA carries no sampled flag: a caller's trace is sampled by its id, so every hop
        # of the mesh (each with the same rate) keeps or drops the same traces whole.
        record.trace_sampled = self._sample() if ctx is None else self._sample_id(ctx.trace_id)

    def _sample_id(self, trace_id: str) -> bool:
        rate = self._rate
        return rate >= 100.0 or (
            rate > 0.0 and zlib.crc32(trace_id.encode()) / 2**32 * 100.0 < rate
        )


def build_tracer(settings: TracingSettings | None, stats: TracingStats) -> Tracer | None:
    return Tracer(settings, stats) if settings is not None else None


__all__ = ["Tracer", "TracingStats", "build_tracer"]
