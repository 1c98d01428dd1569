"""Spans out: a bounded queue filled at each sampled request's end, drained by one task.

:class:`TracingObserver` is the listeners' tracing observer (``proxy/observers.py``): at a
sampled request's end it appends a compact tuple to a bounded deque (full: the span is dropped
and counted in ``tracing.spans_dropped``; a request never waits). :class:`SpanExporter.run`,
a task in the server's nursery, wakes every ``schedule_delay`` or as soon as
``max_export_batch_size`` spans wait, turns each batch into the OpenTelemetry SDK's
``ReadableSpan`` objects and hands it to the SDK's OTLP/HTTP exporter in a worker thread, one
export at a time (``spans_sent``; a failed export counts ``export_failed`` and its spans are
lost, with a rate-limited log line). Cancelled (the server stops) or closed (a new
configuration), it exports what is queued within ``export_timeout`` and ends.

The OpenTelemetry SDK is imported only here, in the worker thread, when tracing is on.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import trio

from ..config.tracing import TracingSettings
from ..network.throttled_log import ThrottledLog
from .tracer import TracingStats

if TYPE_CHECKING:
    from ..proxy.record import RequestRecord

log = logging.getLogger("trio_mesh.tracing")

#: One span as queued: (trace id, span id, parent span id or None, start (time.time()),
#: duration (s), protocol, method, path, authority, status, flags, route, cluster, host, peer,
#: rpc service, rpc method).
SpanTuple = tuple[Any, ...]


class TracingObserver:
    """Queues a span for each sampled request. Not ``detailed``: the lifecycle fills what a
    span reads for sampled requests only (``lifecycle._describe``), so unsampled ones cost
    what they cost without tracing."""

    __slots__ = ("batch", "limit", "queue", "stats", "wake")
    detailed = False

    def __init__(self, settings: TracingSettings, stats: TracingStats) -> None:
        self.queue: deque[SpanTuple] = deque()
        self.limit = settings.max_queue_size
        self.batch = settings.max_export_batch_size
        self.stats = stats
        self.wake = trio.Event()

    def request_end(self, record: RequestRecord) -> None:
        if not record.trace_sampled:
            return
        queue = self.queue
        if len(queue) >= self.limit:
            self.stats.spans_dropped += 1
            return
        queue.append(
            (
                record.trace_id,
                record.span_id,
                record.parent_span_id,
                record.start_time,
                record.duration if record.duration is not None else _monotonic() - record.start,
                record.protocol,
                record.method,
                record.path,
                record.authority,
                record.response_code,
                record.response_flag,
                record.route_name,
                record.upstream_cluster,
                record.upstream_host,
                record.downstream_remote_address,
                record.rpc_service,
                record.rpc_method,
            )
        )
        if len(queue) >= self.batch:
            self.wake.set()


class SpanExporter:
    """The exporting task of one tracing configuration (see the module docstring).
    ``make_exporter``: builds the SDK exporter (tests may give another ``export(spans)``)."""

    def __init__(
        self, settings: TracingSettings, stats: TracingStats, make_exporter: Any = None
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.observer = TracingObserver(settings, stats)
        self._make = make_exporter or _otlp_exporter
        self._closing = False
        self._failures = ThrottledLog(log, 10.0)
        self._converter: Any = None

    def close(self) -> None:
        """Export what is queued and end (a new configuration took over)."""
        self._closing = True
        self.observer.wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        # The SDK's import and the exporter's session are made off the event loop.
        exporter, self._converter = await trio.to_thread.run_sync(self._make, settings)
        task_status.started()
        observer = self.observer
        try:
            while not self._closing:
                if len(observer.queue) < observer.batch:
                    with trio.move_on_after(settings.schedule_delay):
                        await observer.wake.wait()
                observer.wake = trio.Event()
                await self._export_queued(exporter)
        finally:
            # What is queued goes within export_timeout (after an export in flight ended);
            # requests still ending here (connections draining after a new configuration)
            # find the queue full from now on: their spans are counted as dropped.
            observer.limit = 0
            await self._export_queued(exporter, trio.current_time() + settings.export_timeout)
            if observer.queue:
                self.stats.spans_dropped += len(observer.queue)
                observer.queue.clear()
            exporter.shutdown()

    async def _export_queued(self, exporter: Any, until: float = math.inf) -> None:
        """Export what is queued, batch by batch, the last one begun before ``until``."""
        queue = self.observer.queue
        size = self.observer.batch
        while queue and trio.current_time() < until:
            if until == math.inf:
                # Stopping: the rest goes within export_timeout, from run's finally.
                await trio.lowlevel.checkpoint_if_cancelled()
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            ok = False
            # An export begun ends (or times out), even when the server stops meanwhile:
            # its spans are not lost to a cancellation.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = min(until, trio.current_time() + self.settings.export_timeout + 1)
                try:
                    ok = await trio.to_thread.run_sync(
                        self._export, exporter, batch, abandon_on_cancel=True
                    )
                except Exception as exc:
                    self._failures.log(logging.WARNING, "tracing: span export failed: %r", exc)
            if scope.cancelled_caught:
                self._failures.log(logging.WARNING, "tracing: span export timed out")
            if ok:
                self.stats.spans_sent += len(batch)
            else:
                self.stats.export_failed += 1
                self._failures.log(
                    logging.WARNING,
                    "tracing: %d spans not accepted by %s",
                    len(batch),
                    self.settings.endpoint,
                )

    def _export(self, exporter: Any, batch: list[SpanTuple]) -> bool:
        """In a worker thread: the batch as SDK spans, exported; whether it was accepted."""
        return bool(exporter.export([self._converter(span) for span in batch]))


class _OncePer(logging.Filter):
    """Lets one record through per ``interval`` seconds (the SDK logs every failed export:
    a collector that is down must not flood the log)."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = _monotonic()
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


_SDK_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _otlp_exporter(settings: TracingSettings) -> tuple[Any, Any]:
    """The SDK's OTLP/HTTP exporter and a span converter (imported here: tracing is on)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    sdk_log = logging.getLogger(_SDK_LOGGER)
    if not any(isinstance(f, _OncePer) for f in sdk_log.filters):
        sdk_log.addFilter(_OncePer(10.0))

    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers),
        timeout=settings.export_timeout,
    )

    class _Exporter:
        def export(self, spans: list[Any]) -> bool:
            return exporter.export(spans) is SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            exporter.shutdown()  # type: ignore[no-untyped-call]

    return _Exporter(), span_converter(settings)


def span_converter(settings: TracingSettings) -> Any:
    """A function from a queued span tuple to an SDK ``ReadableSpan`` (a server span)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from .. import __version__

    class _Resource(Resource):
        """The SDK's encoder groups spans by resource, hashing it per span (a JSON dump of
        its attributes); ours never changes: hashed once."""

        def __init__(self, base: Resource) -> None:
            super().__init__(base.attributes, base.schema_url)
            self._hash = Resource.__hash__(self)

        def __hash__(self) -> int:
            return self._hash

    resource = _Resource(Resource.create({"service.name": settings.service_name}))
    scope = InstrumentationScope("trio_mesh", __version__)
    sampled = TraceFlags(TraceFlags.SAMPLED)
    error = Status(StatusCode.ERROR)
    unset = Status(StatusCode.UNSET)

    def convert(span: SpanTuple) -> Any:
        (trace, span_id, parent, start, duration, protocol, method, path, authority, status,
         flags, route, cluster, host, peer, service, rpc_method) = span  # fmt: skip
        trace_id = int(trace, 16)
        context = SpanContext(trace_id, int(span_id, 16), False, sampled)
        parent_context = SpanContext(trace_id, int(parent, 16), True, sampled) if parent else None
        start_ns = int(start * 1e9)
        end_ns = start_ns + int((duration or 0.0) * 1e9)
        attributes: dict[str, Any] = {"network.protocol.name": protocol}
        if service is not None or rpc_method is not None:
            name = f"{service or '-'}/{rpc_method or '-'}"
            attributes["rpc.system"] = protocol
            if service:
                attributes["rpc.service"] = service
            if rpc_method:
                attributes["rpc.method"] = rpc_method
        else:
            url_path = path.partition("?")[0]
            name = f"{method} {route}" if route else method or "request"
            attributes["http.request.method"] = method
            attributes["url.path"] = url_path
            if authority:
                attributes["server.address"] = authority
        if status:
            attributes["http.response.status_code"] = status
        if route:
            attributes["route_name"] = route
        if cluster:
            attributes["upstream_cluster"] = cluster
        if host:
            attributes["upstream_host"] = host
        if flags:
            attributes["response_flags"] = flags
        if peer:
            address, _, port = peer.rpartition(":")
            attributes["network.peer.address"] = address.strip("[]")
            if port.isdigit():
                attributes["network.peer.port"] = int(port)
        return ReadableSpan(
            name,
            context,
            parent_context,
            resource,
            attributes,
            kind=SpanKind.SERVER,
            status=error if status >= 500 or not status else unset,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=scope,
        )

    return convert


__all__ = ["SpanExporter", "TracingObserver", "span_converter"]
