"""Tracing through the proxy over HTTP/2 (curl, prior knowledge) and gRPC (grpcio)."""

from __future__ import annotations

import json

import trio

from tests.grpc_helpers import EchoStub, GrpcEchoServer, grpc_upstream, in_thread
from tests.http_helpers import Headers, curl, http_config, running_proxy, start_upstream, to
from tests.tracing.helpers import PARENT, TRACE, traced, traceparent
from tests.tracing.otlp_receiver import OtlpReceiver

__all__ = ["grpc_upstream"]  # the fixture


async def test_http2_traceparent(nursery: trio.Nursery) -> None:
    upstream = await start_upstream(nursery)
    receiver = await OtlpReceiver().start(nursery)
    config = traced(
        http_config(
            [to()],
            {"up": upstream.port},
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http1"},
        ),
        receiver.endpoint,
    )
    async with running_proxy(config) as (_, port):
        code, out, err = await curl(
            "--http2-prior-knowledge",
            "-H",
            f"traceparent: 00-{TRACE}-{PARENT}-01",
            "-H",
            "x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7",  # W3C wins, B3 goes on too
            "-H",
            "x-b3-spanid: e457b5a2e4d86bd1",
            f"http://127.0.0.1:{port}/echo/h2",
        )
        assert code == 0, err
        headers = Headers((n.lower(), v) for n, v in json.loads(out)["headers"])
        (tp,) = headers.getall("traceparent")
        _, trace, span, flags = traceparent(tp)
        assert (trace, flags) == (TRACE, "01") and span != PARENT
        assert headers.get("x-b3-traceid") == TRACE
        assert headers.get("x-b3-spanid") == span
        assert headers.get("x-b3-parentspanid") == PARENT
        (exported,) = await receiver.wait_spans(1)
    assert (exported["trace_id"], exported["span_id"]) == (TRACE, span)
    assert exported["parent_span_id"] == PARENT
    assert exported["attributes"]["network.protocol.name"] == "HTTP/2"
    assert exported["attributes"]["url.path"] == "/echo/h2"


async def test_grpc_metadata(nursery: trio.Nursery, grpc_upstream: GrpcEchoServer) -> None:
    receiver = await OtlpReceiver().start(nursery)
    config = traced(
        http_config(
            [to()],
            {"up": grpc_upstream.port},
            proxy={"downstream_protocol": "Http2", "upstream_protocol": "Http2"},
        ),
        receiver.endpoint,
    )
    async with running_proxy(config) as (_, port):
        with EchoStub.connect(port) as stub:
            reply = await in_thread(
                stub.Unary,
                b"hello",
                timeout=5,
                metadata=(("traceparent", f"00-{TRACE}-{PARENT}-01"),),
            )
            assert reply == b"hello"
        (call,) = grpc_upstream.calls
        metadata = dict(call.metadata)
        _, trace, span, flags = traceparent(str(metadata["traceparent"]))
        assert (trace, flags) == (TRACE, "01") and span != PARENT
        (exported,) = await receiver.wait_spans(1)
    assert (exported["trace_id"], exported["span_id"]) == (TRACE, span)
    assert exported["parent_span_id"] == PARENT
    assert exported["attributes"]["url.path"] == "/test.Echo/Unary"
    assert exported["attributes"]["http.request.method"] == "POST"
