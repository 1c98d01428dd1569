"""The span queue and its exporter: overflow counted and never blocking, reconfiguration."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.http_helpers import (
    closed_port,
    echoed,
    get,
    http_config,
    request,
    running_proxy,
    start_upstream,
    to,
)
from tests.tracing.helpers import traced
from tests.tracing.otlp_receiver import OtlpReceiver
from trio_mesh.config.tracing import TracingSettings
from trio_mesh.proxy.record import RequestRecord
from trio_mesh.tracing.export import TracingObserver
from trio_mesh.tracing.tracer import TracingStats


def sampled_record(n: int) -> RequestRecord:
    record = RequestRecord(start_time=1.0, duration=0.5, method="GET", path=f"/{n}")
    record.trace_id, record.span_id, record.trace_sampled = f"{n + 1:032x}", f"{n + 1:016x}", True
    return record


def test_observer_queue_is_bounded_and_counts_drops() -> None:
    stats = TracingStats()
    observer = TracingObserver(TracingSettings(max_queue_size=3, max_export_batch_size=2), stats)
    unsampled = RequestRecord()
    observer.request_end(unsampled)  # not sampled: nothing queued
    assert not observer.queue
    observer.request_end(sampled_record(0))
    assert not observer.wake.is_set()
    observer.request_end(sampled_record(1))
    assert observer.wake.is_set()  # a batch is ready
    for n in range(2, 10):
        observer.request_end(sampled_record(n))
    assert len(observer.queue) == 3
    assert stats.spans_dropped == 7
    assert [span[7] for span in observer.queue] == ["/0", "/1", "/2"]


async def test_a_collector_that_never_answers_blocks_no_request(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver(hang=True).start(nursery)
    config = traced(
        http_config([to()], {"up": upstream.port}),
        receiver.endpoint,
        max_queue_size=4,
        max_export_batch_size=2,
        export_timeout="300ms",
    )
    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            for _ in range(30):
                assert (await request(port, get())).status == 200
            assert server.tracing_stats.spans_dropped >= 30 - 4 - 2 * 4
            assert receiver.connections >= 1
        stats = server.tracing_stats
    assert stats.spans_sent == 0
    assert stats.export_failed >= 1


async def test_apply_turns_tracing_on_and_off(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    plain = http_config([to()], {"up": upstream.port})
    async with running_proxy(plain) as (server, port):
        assert server.tracer is None
        headers = echoed(await request(port, get()))["headers"]
        assert "traceparent" not in headers
        await server.apply(traced(plain, receiver.endpoint))
        assert server.tracer is not None
        headers = echoed(await request(port, get()))["headers"]
        trace = headers.get("traceparent").split("-")[1]
        (span,) = await receiver.wait_spans(1)
        assert span["trace_id"] == trace
        await server.apply(plain)
        assert server.tracer is None
        headers = echoed(await request(port, get(headers="traceparent: kept-as-is\r\n")))["headers"]
        assert headers.getall("traceparent") == ["kept-as-is"]  # off: untouched
    assert server.tracing_stats.spans_sent == 1


def test_trace_variables_in_a_text_access_log() -> None:
    from trio_mesh.proxy.accesslog import compile_format

    line = compile_format("%TRACE_ID% %SPAN_ID% %response_code%")
    assert line(sampled_record(41)) == f"{42:032x} {42:016x} 0"
    assert line(RequestRecord()) == "- - 0"  # tracing off


async def test_a_closed_exporter_flushes_then_counts_late_spans_as_dropped(
    nursery: trio.Nursery,
) -> None:
    from trio_mesh.tracing.export import SpanExporter

    exported: list[list[object]] = []

    class Recorder:
        def export(self, spans: list[tuple[object, ...]]) -> bool:
            exported.append([span[7] for span in spans])
            return True

        def shutdown(self) -> None:
            pass

    stats = TracingStats()
    settings = TracingSettings(schedule_delay=3600.0, max_export_batch_size=100)
    exporter = SpanExporter(settings, stats, lambda s: Recorder())
    done = trio.Event()

    async def run() -> None:
        await exporter.run()
        done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    for n in range(3):
        exporter.observer.request_end(sampled_record(n))
    exporter.close()
    with trio.fail_after(5):
        await done.wait()
    assert exported == [["/0", "/1", "/2"]]  # flushed at close, not after schedule_delay
    assert stats.spans_sent == 3
    exporter.observer.request_end(sampled_record(9))  # a draining connection's request
    assert stats.spans_dropped == 1 and not exporter.observer.queue


async def test_a_collector_that_refuses_connections_counts_failed_exports(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await start_upstream(nursery)
    config = traced(
        http_config([to()], {"up": upstream.port}),
        # a collector's credentials in its URL: never in a log line
        f"http://tenant:s3cr3t@127.0.0.1:{closed_port()}/v1/traces",
        export_timeout="300ms",
        max_export_batch_size=1,
    )
    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            for _ in range(3):
                assert (await request(port, get())).status == 200
    stats = server.tracing_stats
    assert stats.spans_sent == 0 and stats.export_failed >= 1
    ours = [r for r in caplog.records if r.name == "trio_mesh.tracing"]
    sdk = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(ours) == 1 and len(sdk) <= 1  # rate-limited: one line per 10 s each
    assert "127.0.0.1" in ours[0].getMessage()
    assert "s3cr3t" not in caplog.text


async def test_spans_queued_at_shutdown_are_exported(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(
        http_config([to()], {"up": upstream.port}), receiver.endpoint, schedule_delay="1h"
    )
    with trio.fail_after(10):
        async with running_proxy(config) as (server, port):
            for _ in range(2):
                assert (await request(port, get())).status == 200
            assert receiver.spans == []  # nothing due before an hour or 512 spans
    assert len(receiver.spans) == 2  # flushed as the server stopped
    assert server.tracing_stats.spans_sent == 2


async def test_full_batches_go_as_they_fill_the_rest_after_schedule_delay(
    nursery: trio.Nursery,
) -> None:
    """A busy proxy posts full batches: the spans that come while one is being exported wait
    for the next full batch or for schedule_delay, never go as a stream of small posts."""
    from trio_mesh.tracing.export import SpanExporter

    send, receive = trio.open_memory_channel[int](16)

    class Recorder:
        def export(self, spans: list[tuple[object, ...]]) -> bool:
            trio.from_thread.run_sync(send.send_nowait, len(spans))
            return True

        def shutdown(self) -> None:
            pass

    stats = TracingStats()
    settings = TracingSettings(schedule_delay=3600.0, max_export_batch_size=4, max_queue_size=64)
    exporter = SpanExporter(settings, stats, lambda s: Recorder())
    await nursery.start(exporter.run)
    for n in range(10):
        exporter.observer.request_end(sampled_record(n))
    with trio.fail_after(5):
        assert [await receive.receive(), await receive.receive()] == [4, 4]
    with trio.move_on_after(0.3):  # the other two wait: no third, small, post
        assert await receive.receive() is None
    assert len(exporter.observer.queue) == 2
    exporter.close()
    with trio.fail_after(5):
        assert await receive.receive() == 2  # closing: what is queued goes

    # schedule_delay passed: what is less than a batch goes
    settings = TracingSettings(schedule_delay=0.05, max_export_batch_size=4, max_queue_size=64)
    exporter = SpanExporter(settings, stats, lambda s: Recorder())
    await nursery.start(exporter.run)
    for n in range(3):
        exporter.observer.request_end(sampled_record(n))
    with trio.fail_after(5):
        assert await receive.receive() == 3
    exporter.close()
