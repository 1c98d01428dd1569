"""Tracer.start_http and start_rpc on header lists, without sockets: any input, one outcome."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_mesh.config.tracing import TracingSettings
from trio_mesh.proxy.record import RequestRecord
from trio_mesh.tracing.context import HTTP_HEADERS, parse_traceparent
from trio_mesh.tracing.tracer import Tracer

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = b"00f067aa0ba902b7"
names = st.sampled_from([*sorted(HTTP_HEADERS), b"host", b"x-other"])
values = st.one_of(
    st.binary(max_size=80),
    st.just(b"00-" + TRACE + b"-" + PARENT + b"-01"),
    st.just(TRACE + b"-" + PARENT + b"-1"),
    st.sampled_from([b"0", b"1", b"d", TRACE, PARENT, b"a=1,b=2"]),
)


@given(st.lists(st.tuples(names, values), max_size=12), st.sampled_from([0.0, 50.0, 100.0]))
def test_any_headers_give_one_valid_traceparent(headers: list[tuple[bytes, bytes]], rate: float):
    others = [h for h in headers if h[0] not in HTTP_HEADERS]
    record = RequestRecord()
    Tracer(TracingSettings(random_sampling=rate)).start_http(headers, record)
    parents = [v for n, v in headers if n == b"traceparent"]
    assert len(parents) == 1
    tp = parse_traceparent(parents[0])
    assert tp is not None
    assert f"{tp.trace_id:032x}" == record.trace_id
    assert f"{tp.span_id:016x}" == record.span_id
    assert tp.sampled == record.trace_sampled
    assert [h for h in headers if h[0] not in HTTP_HEADERS] == others  # the rest untouched
    assert len([n for n, _ in headers if n == b"tracestate"]) <= 1


def test_sampling_decisions() -> None:
    tp = b"00-" + TRACE + b"-" + PARENT
    for rate, incoming, sampled in [
        (100.0, [(b"traceparent", tp + b"-00")], False),
        (0.0, [(b"traceparent", tp + b"-01")], True),
        (0.0, [], False),
        (100.0, [], True),
        (0.0, [(b"b3", b"1")], True),
        (100.0, [(b"x-b3-sampled", b"0")], False),
        (0.0, [(b"x-b3-flags", b"1")], True),
    ]:
        record = RequestRecord()
        Tracer(TracingSettings(random_sampling=rate)).start_http(list(incoming), record)
        assert record.trace_sampled is sampled, (rate, incoming)


def test_rpc_child_and_new_trace() -> None:
    tracer = Tracer(TracingSettings())
    headers = {
        "rpc_trace_context.sofaTraceId": "0a0fe8ec1538377497612100127587",
        "rpc_trace_context.sofaRpcId": "0.1.3",
        "rpc_trace_context.sofaPenAttrs": "mark=T",
    }
    record = RequestRecord()
    tracer.start_rpc(headers.get, headers.__setitem__, record)
    assert headers["rpc_trace_context.sofaRpcId"] == "0.1.3.1"
    assert headers["rpc_trace_context.sofaPenAttrs"] == "mark=T"
    assert record.trace_id == "00" + "0a0fe8ec1538377497612100127587"
    empty: dict[str, str] = {}
    tracer.start_rpc(empty.get, empty.__setitem__, record)
    assert empty["rpc_trace_context.sofaRpcId"] == "0.1"
    assert empty["rpc_trace_context.sofaTraceId"] == record.trace_id


def test_rpc_sampling_is_the_same_decision_for_a_trace_at_every_hop() -> None:
    """SOFA has no sampled flag: two proxies (each its own random state) sampling at 50%
    keep or drop the same callers' traces, so no trace is cut in half across the mesh."""
    hops = [Tracer(TracingSettings(random_sampling=50.0)) for _ in range(2)]
    decisions = []
    for n in range(200):
        trace = f"0a0fe8ec15383774976121{n:08d}"
        per_hop = []
        for tracer in hops:
            headers = {"rpc_trace_context.sofaTraceId": trace}
            record = RequestRecord()
            tracer.start_rpc(headers.get, headers.__setitem__, record)
            per_hop.append(record.trace_sampled)
        assert per_hop[0] == per_hop[1]
        decisions.append(per_hop[0])
    assert 60 < sum(decisions) < 140  # about half
