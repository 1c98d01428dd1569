"""Trace context wire formats: round trips, the specs' edge cases, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mesh.tracing.context import (
    B3Context,
    SofaContext,
    TraceParent,
    format_b3_multi,
    format_b3_single,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_b3_multi,
    parse_b3_single,
    parse_sofa,
    parse_traceparent,
    parse_traceparent_any,
    parse_tracestate,
    sofa_trace_int,
)

trace_ids = st.integers(1, 2**128 - 1)
span_ids = st.integers(1, 2**64 - 1)

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@given(trace_ids, span_ids, st.booleans())
def test_traceparent_round_trip(trace_id: int, span_id: int, sampled: bool) -> None:
    value = format_traceparent(trace_id, span_id, sampled)
    assert len(value) == 55
    assert parse_traceparent(value) == TraceParent(0, trace_id, span_id, int(sampled))


@given(st.binary(max_size=80))
def test_traceparent_garbage_is_refused_or_valid(value: bytes) -> None:
    parsed = parse_traceparent(value)
    if parsed is not None:  # only what the grammar allows gets through
        assert parsed.trace_id and parsed.span_id
        assert value[:55].decode("ascii").lower() == value[:55].decode("ascii")


def test_traceparent_spec_cases() -> None:
    assert parse_traceparent(VALID) == TraceParent(
        0, 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1
    )
    bad = [
        VALID.upper(),  # upper-case hex is invalid
        VALID.replace(b"4bf92f3577b34da6a3ce929d0e0e4736", b"0" * 32),  # zero trace id
        VALID.replace(b"00f067aa0ba902b7", b"0" * 16),  # zero span id
        b"ff" + VALID[2:],  # version ff
        VALID + b"-00",  # version 00 has exactly four fields
        VALID[:-1],
        VALID[:3] + VALID[4:],  # a short trace id
        b"",
        b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-1",
        VALID.replace(b"-", b"_"),
    ]
    for value in bad:
        assert parse_traceparent(value) is None, value
    # A later version: the first four fields, then only "-" and more may follow.
    assert parse_traceparent(b"cc" + VALID[2:] + b"-what-the-future-holds") is not None
    assert parse_traceparent(b"cc" + VALID[2:]) is not None
    assert parse_traceparent(b"cc" + VALID[2:] + b"x") is None
    # Other flags are read, only sampled goes on (version 00 defines no other).
    parsed = parse_traceparent(VALID[:-2] + b"03")
    assert parsed is not None and parsed.sampled
    assert not parse_traceparent(VALID[:-2] + b"02").sampled  # type: ignore[union-attr]


def test_tracestate_kept_and_bounded() -> None:
    assert parse_tracestate([b"congo=t61rcWkgMzE", b"rojo=00f067aa0ba902b7"]) == (
        b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )
    assert parse_tracestate([b" a=1 , ,b@sys=2"]) == b"a=1,b@sys=2"
    assert parse_tracestate([b"A=1"]) is None  # keys are lower-case
    assert parse_tracestate([b"a=1,a=2"]) is None  # a key appears once
    assert parse_tracestate([b"a=1,=2"]) is None
    assert parse_tracestate([b"a=x,y"]) is None
    assert parse_tracestate([b""]) is None
    many = b",".join(b"k%d=v" % i for i in range(33))
    assert parse_tracestate([many]) is None  # over 32 members
    # over 512 characters: the members over 128 go first, then from the end
    big = b"big=" + b"x" * 200
    members = [b"m%02d=" % i + b"y" * 40 for i in range(12)]
    out = parse_tracestate([b",".join([big, *members])])
    assert out is not None and len(out) <= 512
    assert not out.startswith(b"big=") and out.startswith(b"m00=")
    assert out.split(b",") == members[: len(out.split(b","))]


@given(st.lists(st.binary(max_size=60), max_size=4))
def test_tracestate_garbage_is_bounded(values: list[bytes]) -> None:
    out = parse_tracestate(values)
    if out is not None:
        assert len(out) <= 512 and len(out.split(b",")) <= 32


@given(trace_ids, span_ids, st.booleans(), st.one_of(st.just(0), span_ids), st.booleans())
def test_b3_single_round_trip(
    trace_id: int, span_id: int, sampled: bool, parent: int, debug: bool
) -> None:
    value = format_b3_single(trace_id, span_id, sampled, parent, debug=debug, wide=True)
    assert parse_b3_single(value) == B3Context(
        trace_id,
        span_id,
        sampled or debug,
        parent_id=parent,
        debug=debug,
        wide=True,
        single=True,
    )


@given(st.integers(1, 2**64 - 1), span_ids, st.booleans(), st.one_of(st.just(0), span_ids))
def test_b3_multi_round_trip_64_bit(
    trace_id: int, span_id: int, sampled: bool, parent: int
) -> None:
    headers = dict(format_b3_multi(trace_id, span_id, sampled, parent, debug=False, wide=False))
    assert len(headers[b"x-b3-traceid"]) == 16
    parsed = parse_b3_multi(
        headers.get(b"x-b3-traceid"),
        headers.get(b"x-b3-spanid"),
        headers.get(b"x-b3-parentspanid"),
        headers.get(b"x-b3-sampled"),
        headers.get(b"x-b3-flags"),
    )
    assert parsed == B3Context(trace_id, span_id, sampled, parent_id=parent, wide=False)


def test_b3_spec_cases() -> None:
    t, s = b"80f198ee56343ba864fe8b2a57d3eff7", b"e457b5a2e4d86bd1"
    assert parse_b3_single(b"0") == B3Context(0, 0, False, single=True)
    assert parse_b3_single(b"d") == B3Context(0, 0, True, debug=True, single=True)
    parsed = parse_b3_single(t + b"-" + s)
    assert parsed is not None and parsed.sampled is None  # deferred
    for bad in [b"", b"2", t, t + b"-" + s + b"-x", t.upper() + b"-" + s, b"-".join([t, s] * 3)]:
        assert parse_b3_single(bad) is None, bad
    assert parse_b3_single(b"0" * 32 + b"-" + s) is None
    assert parse_b3_multi(t, s, None, None, b"1") == B3Context(
        int(t, 16), int(s, 16), True, debug=True
    )
    assert parse_b3_multi(None, None, None, b"0", None) == B3Context(0, 0, False)
    assert parse_b3_multi(t, None, None, b"1", None) is None
    assert parse_b3_multi(t, s, None, b"yes", None) is None
    assert parse_b3_multi(t[:20], s, None, None, None) is None
    assert parse_b3_multi(t, s, b"0" * 16, None, None) is None


@given(st.binary(max_size=120))
def test_b3_garbage(value: bytes) -> None:
    parse_b3_single(value)
    parse_b3_multi(value, value, value, value, value)


def test_sofa() -> None:
    ctx = parse_sofa("0a0fe8ec1538377497612100127587", "0.1", "mark=T&uid=1")
    assert ctx == SofaContext("0a0fe8ec1538377497612100127587", "0.1", "mark=T&uid=1")
    assert ctx.child_rpc_id() == "0.1.1"
    assert parse_sofa(None, "0", None) is None
    assert parse_sofa("bad id", "0", None) is None
    assert parse_sofa("x" * 65, "0", None) is None
    assert parse_sofa("abc", "0..1", None) == SofaContext("abc", "0")  # garbage id: the root
    assert parse_sofa("abc", None, "\x00") == SofaContext("abc", "0")
    assert sofa_trace_int("0a0fe8ec1538377497612100127587") == 0x0A0FE8EC1538377497612100127587
    assert sofa_trace_int("not-hex") == sofa_trace_int("not-hex") != 0


@given(st.text(max_size=80), st.text(max_size=80), st.text(max_size=80))
def test_sofa_garbage(trace: str, rpc: str, attrs: str) -> None:
    ctx = parse_sofa(trace, rpc, attrs)
    if ctx is not None:
        assert len(ctx.trace_id) <= 64 and len(ctx.rpc_id) <= 128
        assert 0 < sofa_trace_int(ctx.trace_id) < 2**128


@pytest.mark.parametrize("make, bits", [(new_trace_id, 128), (new_span_id, 64)])
def test_ids(make: object, bits: int) -> None:
    ids = {make() for _ in range(200)}  # type: ignore[operator]
    assert len(ids) == 200 and all(0 < i < 2**bits for i in ids)


@given(
    st.one_of(
        st.binary(min_size=55, max_size=55),
        st.text(alphabet="0123456789abcdefAF-g_ +", min_size=52, max_size=52).map(
            lambda t: b"00-" + t.encode()
        ),
        st.tuples(
            st.text(alphabet="0123456789abcdef-", min_size=32, max_size=32),
            st.text(alphabet="0123456789abcdef-", min_size=16, max_size=16),
            st.text(alphabet="0123456789abcdefF", min_size=2, max_size=2),
        ).map(lambda p: f"00-{p[0]}-{p[1]}-{p[2]}".encode()),
    )
)
def test_traceparent_fast_path_is_the_grammar(value: bytes) -> None:
    assert parse_traceparent(value) == parse_traceparent_any(value)
