"""``python -m bench.trace_micro``: what tracing costs per request, with no socket and no Trio:
``Tracer.start_http`` (ns per request, with and without an incoming context, sampled or not),
the observer's queueing of a span, and the export side per span: the OpenTelemetry SDK's path
(a ``ReadableSpan`` per span, then ``encode_spans`` and serialization) against trio-mesh's own
OTLP encoder (``tracing/otlp.py``). All of it runs holding the GIL, so it is CPU taken from the
event loop: compare it with the ~100 us of CPU a proxied small GET costs.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

from trio_mesh.config.tracing import TracingSettings
from trio_mesh.proxy.record import RequestRecord
from trio_mesh.tracing.export import SpanTuple, TracingObserver, span_converter, span_encoder
from trio_mesh.tracing.tracer import Header, Tracer, TracingStats

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
]


def per_op_ns(fn: Callable[[], object], n: int) -> float:
    """Nanoseconds per call of ``fn``, best of three runs of ``n`` calls."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best


def start_http_on(
    start_http: Callable[[list[Header], RequestRecord], None],
    headers: list[Header],
    record: RequestRecord,
) -> None:
    start_http(list(headers), record)  # a copy: start_http rewrites its list


def sample_span(n: int) -> SpanTuple:
    """A span as the observer queues it for a small GET through the bench's proxy."""
    return (
        f"{n + 0x4BF92F3577B34DA6A3CE929D0E0E4736:032x}",
        f"{n + 0x00F067AA0BA902B7:016x}",
        None,
        1765000000.123456,
        0.000812,
        "HTTP/1.1",
        "GET",
        "/small?x=1",
        "127.0.0.1:8080",
        200,
        "",
        "bench",
        "upstream",
        "127.0.0.1:8081",
        "127.0.0.1:51234",
        None,
        None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50_000, help="calls per request-path timing")
    parser.add_argument("--batch", type=int, default=512, help="spans per export batch")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    n = args.n

    base = per_op_ns(lambda: list(HEADERS), n)
    with_context = [*HEADERS, (b"traceparent", TRACEPARENT)]
    for rate in (0.0, 100.0):
        start_http = Tracer(TracingSettings(random_sampling=rate)).start_http
        record = RequestRecord()
        ns = per_op_ns(functools.partial(start_http_on, start_http, HEADERS, record), n)
        ns_ctx = per_op_ns(functools.partial(start_http_on, start_http, with_context, record), n)
        print(
            f"start_http at {rate:.0f}%: {ns - base:.0f} ns/op without context,"
            f" {ns_ctx - base:.0f} ns/op with a traceparent (list copy {base:.0f} ns taken off)"
        )

    settings = TracingSettings(max_queue_size=10**9)
    observer = TracingObserver(settings, TracingStats())
    record = RequestRecord(start_time=1.0, duration=0.5, method="GET", path="/small")
    record.trace_id, record.span_id, record.trace_sampled = "1" * 32, "2" * 16, True

    def end() -> None:
        observer.request_end(record)
        if len(observer.queue) > 100_000:
            observer.queue.clear()

    print(f"observer.request_end (sampled): {per_op_ns(end, n):.0f} ns/op")

    spans = [sample_span(i) for i in range(args.batch)]

    def us(batch_ns: float) -> str:
        return f"{batch_ns / args.batch / 1000:.2f}"

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    convert = span_converter(settings)

    def sdk_batch() -> bytes:
        return encode_spans([convert(s) for s in spans]).SerializePartialToString()

    def sdk_convert() -> object:
        return [convert(s) for s in spans]

    per_batch = per_op_ns(sdk_convert, args.batches)
    print(f"SDK ReadableSpan per span: {us(per_batch)} us")
    per_batch = per_op_ns(sdk_batch, args.batches)
    print(f"SDK path per span (ReadableSpan, encode_spans, serialize): {us(per_batch)} us")
    encoder = span_encoder(convert)
    per_batch = per_op_ns(lambda: encoder.encode(spans), args.batches)
    print(f"trio-mesh OTLP encoder per span: {us(per_batch)} us")
    # every span its own path and peer: no value cached but the repeated ones
    varied = [(*s[:7], f"/item/{i}", *s[8:14], f"10.0.{i % 250}.{i % 7}:{40000 + i}", *s[15:])
              for i, s in enumerate(spans)]  # fmt: skip
    per_batch = per_op_ns(lambda: (encoder._cache.clear(), encoder.encode(varied)), args.batches)
    print(f"trio-mesh OTLP encoder per span, distinct paths and peers: {us(per_batch)} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
