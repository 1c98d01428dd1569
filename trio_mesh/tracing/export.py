"""Spans out: a bounded queue filled at each sampled request's end, drained by one task.

:class:`TracingObserver` is the listeners' tracing observer (``proxy/observers.py``): at a
sampled request's end it appends a compact tuple to a bounded deque (full: the span is dropped
and counted in ``tracing.spans_dropped``; a request never waits). :class:`SpanExporter.run`,
a task in the server's nursery, wakes every ``schedule_delay`` or as soon as
``max_export_batch_size`` spans wait, encodes each batch into an OTLP export request
(``otlp.py``: the bytes the SDK's encoder makes, at a fraction of its CPU) and posts it through
the OpenTelemetry SDK's OTLP/HTTP exporter's own client in a worker thread, one export at a
time (``spans_sent``; a failed export counts ``export_failed`` and its spans are
lost, with a rate-limited log line). Cancelled (the server stops) or closed (a new
configuration), it exports what is queued within ``export_timeout`` and ends.

The OpenTelemetry SDK is imported only here, in the worker thread, when tracing is on.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections import deque
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import trio

from ..config.tracing import TracingSettings
from ..network.throttled_log import ThrottledLog
from .otlp import SpanEncoder
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
    ``make_exporter(settings)``: builds the exporter, an object with ``export(batch) -> bool``
    (a list of span tuples) and ``shutdown()`` (``OtlpExporter`` unless a test gives one)."""

    def __init__(
        self, settings: TracingSettings, stats: TracingStats, make_exporter: Any = None
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.observer = TracingObserver(settings, stats)
        self._make = make_exporter or _otlp_exporter
        self._closing = False
        self._failures = ThrottledLog(log, 10.0)
        #: The collector as log lines name it: without a ``user:password@`` (credentials).
        self._collector = _without_userinfo(settings.endpoint)

    def close(self) -> None:
        """Export what is queued and end (a new configuration took over)."""
        self._closing = True
        self.observer.wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        # The SDK's import and the exporter's session are made off the event loop.
        exporter = await trio.to_thread.run_sync(self._make, settings)
        task_status.started()
        observer = self.observer
        try:
            while not self._closing:
                due = False
                if len(observer.queue) < observer.batch:
                    with trio.move_on_after(settings.schedule_delay) as timer:
                        await observer.wake.wait()
                    due = timer.cancelled_caught
                observer.wake = trio.Event()
                # Full batches as they fill; what is less than a batch, once schedule_delay
                # passed. (Draining the queue after each export instead made a busy proxy
                # post a stream of small batches, each costing the exporter's fixed CPU: a
                # fifth of the proxy's CPU at 100% sampling.)
                await self._export_queued(exporter, whole=due or self._closing)
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

    async def _export_queued(
        self, exporter: Any, until: float = math.inf, *, whole: bool = True
    ) -> None:
        """Export batch by batch, the last one begun before ``until``: what is queued now
        (``whole``; spans queued meanwhile wait for the next round), else full batches
        while there are some."""
        queue = self.observer.queue
        size = self.observer.batch
        left = len(queue) if whole else 1 << 62  # whole: what is queued now
        while queue and left > 0 and trio.current_time() < until:
            if not whole and len(queue) < size:
                break
            if until == math.inf:
                # Stopping: the rest goes within export_timeout, from run's finally.
                await trio.lowlevel.checkpoint_if_cancelled()
            batch = [queue.popleft() for _ in range(min(size, len(queue), left))]
            left -= len(batch)
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
                    self._collector,
                )

    @staticmethod
    def _export(exporter: Any, batch: list[SpanTuple]) -> bool:
        """In a worker thread: the batch encoded and exported; whether it was accepted."""
        return bool(exporter.export(batch))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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


class OtlpExporter:
    """The SDK's OTLP/HTTP exporter fed with our own encoding of a batch (``otlp.py``) when
    its transport can take serialized bytes (``bytes_sender``), else with the SDK's spans
    (``span_converter``) through its public ``export``."""

    def __init__(self, sdk_exporter: Any, convert: Any, encoder: Any, send: Any) -> None:
        self._sdk = sdk_exporter
        self._convert = convert
        self.encoder = encoder
        self.send = send

    def export(self, batch: list[SpanTuple]) -> bool:
        if self.send is not None:
            return bool(self.send(self.encoder.encode(batch)))
        from opentelemetry.sdk.trace.export import SpanExportResult

        convert = self._convert
        return self._sdk.export([convert(span) for span in batch]) is SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._sdk.shutdown()


def _otlp_exporter(settings: TracingSettings) -> OtlpExporter:
    """The SDK's OTLP/HTTP exporter, wrapped (imported here: tracing is on)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    sdk_log = logging.getLogger(_SDK_LOGGER)
    if not any(isinstance(f, _OncePer) for f in sdk_log.filters):
        sdk_log.addFilter(_OncePer(10.0))

    session = _env_session(settings.endpoint)
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers),
        timeout=settings.export_timeout,
        session=session,
    )
    if session is not None:
        # requests lets a CA bundle from the environment win over the exporter's verify
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
    convert = span_converter(settings)
    send = bytes_sender(exporter)
    if send is None:
        log.warning(
            "tracing: the OTLP exporter cannot take serialized spans (its version changed):"
            " spans are encoded by the SDK (slower)"
        )
    return OtlpExporter(exporter, convert, span_encoder(convert), send)


_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)


def _env_session(endpoint: str) -> Any:
    """A requests session for the exporter with what requests reads from the environment
    on every request (``trust_env``: proxies and ``NO_PROXY`` for this endpoint, a
    ``.netrc`` login) read once, here: scanning the environment cost more CPU per export
    than the rest of the post. ``None`` (the SDK makes its session) when a credential
    provider supplies one."""
    if any(os.environ.get(name) for name in _CREDENTIAL_PROVIDERS):
        return None
    import requests
    from requests.utils import get_environ_proxies, get_netrc_auth

    session = requests.Session()
    session.proxies.update(get_environ_proxies(endpoint))
    session.auth = get_netrc_auth(endpoint)
    session.trust_env = False
    return session


def bytes_sender(exporter: Any) -> Any:
    """A function that POSTs an already serialized ``ExportTraceServiceRequest`` through
    ``exporter``'s own HTTP client (its session, headers, compression, timeout, retries) and
    says whether it was accepted; ``None`` if this exporter has no such client.

    It reaches into ``OTLPSpanExporter``'s private parts as opentelemetry-exporter-otlp-proto-
    http 1.45.2 has them (pinned in pyproject; ``tests/tracing/test_otlp.py`` fails when they
    change): ``_client.export(data) -> _ExportResult(success, ...)``, ``_max_request_size``
    and ``_shutdown``, the checks ``export`` makes around the same call."""
    client = getattr(exporter, "_client", None)
    post = getattr(client, "export", None)
    limit = getattr(exporter, "_max_request_size", None)
    shutdown = getattr(exporter, "_shutdown", None)
    if not callable(post) or type(limit) is not int or type(shutdown) is not bool:
        return None
    try:
        if list(inspect.signature(post).parameters) != ["data"]:
            return None
    except (TypeError, ValueError):
        return None
    sdk_log = logging.getLogger(_SDK_LOGGER)

    def send(data: bytes) -> bool:
        if exporter._shutdown:
            return False
        if limit > 0 and len(data) > limit:
            sdk_log.warning(
                "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                len(data),
                limit,
            )
            return False
        return getattr(post(data), "success", False) is True

    return send


def span_encoder(convert: Any) -> SpanEncoder:
    """Our encoder with the resource and scope of ``convert``'s spans, as the SDK encodes
    them (one span converted and encoded by the SDK, once)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    sample = (f"{1:032x}", f"{1:016x}", None, 0.0, 0.0, "", "GET", "/", None, 200, "",
              None, None, None, None, None, None)  # fmt: skip
    (resource_spans,) = encode_spans([convert(sample)]).resource_spans
    (scope_spans,) = resource_spans.scope_spans
    return SpanEncoder(
        resource_spans.resource.SerializeToString(),
        scope_spans.scope.SerializeToString(),
        resource_spans.schema_url,
        scope_spans.schema_url,
    )


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
            if port.isascii() and port.isdigit():
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


__all__ = [
    "OtlpExporter",
    "SpanExporter",
    "TracingObserver",
    "bytes_sender",
    "span_converter",
    "span_encoder",
]
