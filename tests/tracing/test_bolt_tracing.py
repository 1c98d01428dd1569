"""SOFA trace context through the proxy on bolt: anthunder's real client (it writes
``rpc_trace_context.sofaTraceId`` / ``sofaRpcId`` as SOFARPC does), a raw upstream that keeps
what it received, the exported span."""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any

import pytest
import trio

from tests import bolt_frames as frames
from tests.http_helpers import http_config, running_proxy
from tests.rpc_helpers import ANY_SERVICE, BoltClient, echo_upstream, request
from tests.tracing.helpers import traced
from tests.tracing.otlp_receiver import OtlpReceiver
from trio_mesh.config import MeshConfig
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame

needs_anthunder = pytest.mark.skipif(
    importlib.util.find_spec("anthunder") is None, reason="anthunder (test extra) not installed"
)
SOFA_TRACE = "0a0fe8ec1538377497612100127587"


def _anthunder_call(port: int, service: str) -> bytes:
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext

    SERVICE_MAP[service] = ("127.0.0.1", port)  # anthunder's map takes a name once
    ctx = SpanContext(sofaTraceId=SOFA_TRACE, sofaRpcId="0.2", uid="7")
    return Client("trio-mesh-test").invoke_sync(
        service, "sayHello", b"\n\x01x", spanctx=ctx, timeout_ms=5000
    )


def bolt_config(
    upstream: int, endpoint: str, listener: dict[str, Any] | None = None, **tracing: Any
) -> MeshConfig:
    config = http_config(
        routes=ANY_SERVICE,
        clusters={"up": upstream},
        proxy={"downstream_protocol": "bolt"},
        listener=listener,
    )
    return traced(config, endpoint, **tracing)


@needs_anthunder
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "filters"])
async def test_anthunder_sofa_context_gets_a_child_rpc_id(
    nursery: trio.Nursery, fast: bool
) -> None:
    seen: list[BoltFrame] = []
    upstream = await echo_upstream(nursery, seen=seen)
    receiver = await OtlpReceiver().start(nursery)
    # a stream filter on the listener: the lifecycle's path (a task per call), not the fast one
    listener = (
        {}
        if fast
        else {"stream_filters": [{"type": "payload_limit", "config": {"max_entity_size": 1000}}]}
    )
    config = bolt_config(upstream, receiver.endpoint, listener=listener)
    async with running_proxy(config) as (_, port):
        service = f"com.alipay.test.Traced{uuid.uuid4().hex}:1.0"
        answer = await trio.to_thread.run_sync(
            _anthunder_call, port, service, abandon_on_cancel=True
        )
        assert answer == b"echo:\n\x01x"
        (frame,) = seen
        raw = frame.raw_headers
        assert raw["rpc_trace_context.sofaTraceId"] == SOFA_TRACE
        assert raw["rpc_trace_context.sofaRpcId"] == "0.2.1"
        assert raw["rpc_trace_context.uid"] == "7"  # the rest of the context goes on
        (span,) = await receiver.wait_spans(1)
    assert span["trace_id"] == SOFA_TRACE.rjust(32, "0")
    assert span["attributes"]["rpc.service"] == service
    assert span["attributes"]["rpc.system"] == "bolt"


async def test_bolt_without_context_starts_a_sofa_trace(nursery: trio.Nursery) -> None:
    seen: list[BoltFrame] = []
    upstream = await echo_upstream(nursery, seen=seen)
    receiver = await OtlpReceiver().start(nursery)
    async with running_proxy(bolt_config(upstream, receiver.endpoint)) as (_, port):
        client = await BoltClient.connect(port)
        await client.send(request(7, b"hi"))
        reply = await client.read()
        assert bytes(reply.content) == b"echo:hi"
        (frame,) = seen
        trace = frame.raw_headers["rpc_trace_context.sofaTraceId"]
        assert len(trace) == 32 and int(trace, 16)
        assert frame.raw_headers["rpc_trace_context.sofaRpcId"] == "0.1"
        (span,) = await receiver.wait_spans(1)
    assert span["trace_id"] == trace


async def test_bolt_garbage_context_is_replaced(nursery: trio.Nursery) -> None:
    seen: list[BoltFrame] = []
    upstream = await echo_upstream(nursery, seen=seen)
    receiver = await OtlpReceiver().start(nursery)
    async with running_proxy(bolt_config(upstream, receiver.endpoint, random_sampling=0)) as (
        _,
        port,
    ):
        client = await BoltClient.connect(port)
        bad = BOLT.build_request(
            9,
            {
                "service": frames.SERVICE,
                "rpc_trace_context.sofaTraceId": "not a token\n",
                "rpc_trace_context.sofaRpcId": "1.x",
            },
            b"x",
            codec=11,
        )
        await client.send(bad)
        assert bytes((await client.read()).content) == b"echo:x"
        (frame,) = seen
        trace = frame.raw_headers["rpc_trace_context.sofaTraceId"]
        assert len(trace) == 32 and trace != "not a token\n"
        assert frame.raw_headers["rpc_trace_context.sofaRpcId"] == "0.1"
    assert receiver.spans == []  # sampling 0
