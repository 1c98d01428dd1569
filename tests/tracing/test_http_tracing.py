"""Tracing through the proxy over HTTP/1: what the upstream sees, what the collector gets."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.http_helpers import (
    access_log,
    echoed,
    get,
    http_config,
    read_access_log,
    request,
    running_proxy,
    start_upstream,
    to,
)
from tests.tracing.helpers import PARENT, TRACE, traced, traceparent
from tests.tracing.otlp_receiver import OtlpReceiver

SERVER = 2  # the OTLP span kind


async def test_traceparent_goes_on_with_a_new_parent_and_the_span_is_exported(
    nursery: trio.Nursery,
) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(
        http_config([to()], {"up": upstream.port}), receiver.endpoint, service_name="edge"
    )
    async with running_proxy(config) as (server, port):
        response = await request(
            port,
            get(
                "/echo?q=1",
                headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"
                "tracestate: congo=t61rcWkgMzE\r\nuser-agent: t\r\n",
            ),
        )
        headers = echoed(response)["headers"]
        (tp,) = headers.getall("traceparent")
        version, trace, span, flags = traceparent(tp)
        assert (version, trace, flags) == ("00", TRACE, "01")
        assert span != PARENT and len(span) == 16
        assert headers.getall("tracestate") == ["congo=t61rcWkgMzE"]
        (exported,) = await receiver.wait_spans(1)
    assert server.tracing_stats.spans_sent == 1
    assert exported["trace_id"] == TRACE
    assert exported["span_id"] == span  # the upstream's parent is the proxy's span
    assert exported["parent_span_id"] == PARENT
    assert exported["kind"] == SERVER
    assert exported["name"] == "GET"
    assert exported["resource"]["service.name"] == "edge"
    attributes = exported["attributes"]
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/echo"
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "example.com"
    assert attributes["upstream_cluster"] == "up"
    assert attributes["upstream_host"] == f"127.0.0.1:{upstream.port}"
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert exported["end"] >= exported["start"] > 0
    assert exported["status"] == 0  # unset


async def test_b3_single_in_b3_single_out(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(http_config([to()], {"up": upstream.port}), receiver.endpoint)
    trace64 = "a3ce929d0e0e4736"
    async with running_proxy(config) as (_, port):
        response = await request(port, get(headers=f"b3: {trace64}-{PARENT}-1\r\n"))
        headers = echoed(response)["headers"]
        (b3,) = headers.getall("b3")
        trace, span, sampled, parent = b3.split("-")
        assert (trace, sampled, parent) == (trace64, "1", PARENT)
        assert span != PARENT
        assert "x-b3-traceid" not in headers
        _, tp_trace, tp_span, _ = traceparent(headers.get("traceparent"))
        assert (tp_trace, tp_span) == ("0" * 16 + trace64, span)
        (exported,) = await receiver.wait_spans(1)
    assert exported["span_id"] == span and exported["parent_span_id"] == PARENT


async def test_b3_multi_in_b3_multi_out_and_sampled_0_honoured(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(http_config([to()], {"up": upstream.port}), receiver.endpoint)
    async with running_proxy(config) as (server, port):
        response = await request(
            port,
            get(headers=f"X-B3-TraceId: {TRACE}\r\nX-B3-SpanId: {PARENT}\r\nX-B3-Sampled: 0\r\n"),
        )
        headers = echoed(response)["headers"]
        assert headers.get("x-b3-traceid") == TRACE
        span = headers.get("x-b3-spanid")
        assert span != PARENT and len(span) == 16
        assert headers.get("x-b3-parentspanid") == PARENT
        assert headers.get("x-b3-sampled") == "0"
        assert "b3" not in headers
        assert traceparent(headers.get("traceparent")) == ("00", TRACE, span, "00")
        # a sampled one after it: only that one is exported
        await request(port, get(headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"))
        (exported,) = await receiver.wait_spans(1)
    assert server.tracing_stats.spans_sent == 1
    assert exported["parent_span_id"] == PARENT


async def test_no_context_starts_a_trace_and_sampling_0_exports_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    base = http_config([to()], {"up": upstream.port})
    async with running_proxy(traced(base, receiver.endpoint)) as (_, port):
        headers = echoed(await request(port, get()))["headers"]
        _, trace, span, flags = traceparent(headers.get("traceparent"))
        assert flags == "01" and int(trace, 16) and int(span, 16)
        (exported,) = await receiver.wait_spans(1)
        assert (exported["trace_id"], exported["span_id"]) == (trace, span)
        assert exported["parent_span_id"] == ""
    log_keys, log_path = access_log(tmp_path)
    base = http_config([to()], {"up": upstream.port}, listener=log_keys)
    config = traced(base, receiver.endpoint, random_sampling=0)
    async with running_proxy(config) as (server, port):
        for _ in range(3):
            headers = echoed(await request(port, get()))["headers"]
            _, trace, _, flags = traceparent(headers.get("traceparent"))
            assert flags == "00"  # propagated, not sampled
        # an incoming sampled decision is honoured at 0% too
        await request(port, get(headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n"))
        await receiver.wait_spans(2)
    assert len(receiver.spans) == 2 and receiver.spans[1]["trace_id"] == TRACE
    assert server.tracing_stats.spans_sent == 1
    lines = read_access_log(log_path)
    assert [line["TRACE_ID"] for line in lines][-1] == TRACE
    assert all(line["TRACE_ID"] and len(line["TRACE_ID"]) == 32 for line in lines)


async def test_garbage_context_is_replaced_not_passed_on(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(http_config([to()], {"up": upstream.port}), receiver.endpoint)
    bad = [
        f"traceparent: 00-{TRACE.upper()}-{PARENT}-01\r\n",
        f"traceparent: 00-{'0' * 32}-{PARENT}-01\r\ntracestate: a=1\r\n",
        f"traceparent: 00-{TRACE}-{PARENT}-01\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\n",
        "b3: garbage\r\n",
        "traceparent: " + "x" * 4000 + "\r\n",
    ]
    async with running_proxy(config) as (_, port):
        for extra in bad:
            headers = echoed(await request(port, get(headers=extra)))["headers"]
            (tp,) = headers.getall("traceparent")
            _, trace, _, _ = traceparent(tp)
            assert trace != TRACE and trace != "0" * 32
            assert "tracestate" not in headers
        await receiver.wait_spans(len(bad))
