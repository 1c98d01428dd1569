"""A listener's own tracing (Envoy's HCM ``tracing``): its provider, its sampling, or off,
next to the top-level block; listeners with the same settings share one exporter."""

from __future__ import annotations

import trio

from tests.http_helpers import echoed, get, http_config, request, running_proxy, start_upstream, to
from tests.tracing.helpers import traced, traceparent
from tests.tracing.otlp_receiver import OtlpReceiver


def provider(endpoint: str, **config: object) -> dict[str, object]:
    return {
        "enable": True,
        "driver": "opentelemetry",
        "config": {"endpoint": endpoint, "schedule_delay": "50ms", **config},
    }


async def test_a_listeners_own_provider_gets_its_spans(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    top = await OtlpReceiver().start(nursery)
    own = await OtlpReceiver().start(nursery)
    config = traced(
        http_config(
            [to()],
            {"up": upstream.port},
            proxy={"tracing": {"provider": provider(own.endpoint, service_name="edge")}},
        ),
        top.endpoint,
    )
    async with running_proxy(config) as (server, port):
        headers = echoed(await request(port, get()))["headers"]
        _, trace, span_id, flags = traceparent(headers.getall("traceparent")[0])
        (span,) = await own.wait_spans(1)
        assert (span["trace_id"], span["span_id"], flags) == (trace, span_id, "01")
        assert span["resource"]["service.name"] == "edge"
        # The top-level block has no listener that uses it: no exporter of its own runs.
        assert server.tracer is None
        assert len(server.tracers.exporters()) == 1
    assert top.spans == [] and top.connections == 0


async def test_a_listener_can_turn_tracing_off_or_sample_less(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    top = await OtlpReceiver().start(nursery)
    off = traced(
        http_config([to()], {"up": upstream.port}, proxy={"tracing": {"provider": {}}}),
        top.endpoint,
    )
    async with running_proxy(off) as (server, port):
        headers = echoed(await request(port, get()))["headers"]
        assert headers.getall("traceparent") == []  # this listener is not traced at all
        assert server.tracers.exporters() == []
    never = traced(
        http_config([to()], {"up": upstream.port}, proxy={"tracing": {"random_sampling": 0}}),
        top.endpoint,
    )
    async with running_proxy(never) as (server, port):
        for _ in range(20):
            headers = echoed(await request(port, get()))["headers"]
            assert traceparent(headers.getall("traceparent")[0])[3] == "00"  # propagated, unsampled
        assert server.tracing_stats.spans_sent == 0
    assert top.spans == []


async def test_apply_keeps_the_exporter_of_settings_still_used(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(http_config([to()], {"up": upstream.port}), receiver.endpoint)
    async with running_proxy(config) as (server, port):
        (exporter,) = server.tracers.exporters()
        # Another listener setting nothing of its own: the same settings, the same exporter.
        await server.apply(config)
        assert server.tracers.exporters() == [exporter]
        await request(port, get())
        await receiver.wait_spans(1)
