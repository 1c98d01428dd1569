"""Trace context on the wire: W3C Trace Context, B3 (multi-header and single) and SOFA.

Sans-IO: values in, values out, no trio. Ids are integers here (``trace_id`` 128 bits,
``span_id`` 64 bits, never zero); they are rendered as lower-case hex only on the way out.
Every parser returns ``None`` for a value it does not accept: the caller then treats the
request as carrying no context (a defined outcome for any garbage, never an exception).

- W3C ``traceparent`` (https://www.w3.org/TR/trace-context/): ``00-{32 hex}-{16 hex}-{2 hex}``;
  all-zero ids, version ``ff``, upper-case hex and bad lengths are refused; a later version is
  read as version 00 (its first 55 characters, followed by ``-`` or nothing) and written back
  as 00. ``tracestate`` is kept as received (validated, at most 32 members and 512
  characters) and passed on.
- B3 (https://github.com/openzipkin/b3-propagation): the multi-header form ``x-b3-traceid``
  (16 or 32 hex), ``x-b3-spanid``, ``x-b3-parentspanid``, ``x-b3-sampled``, ``x-b3-flags``
  (``1``: debug, which implies sampled), and the single header ``b3``:
  ``{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`` or a bare decision ``0``/``1``/``d``.
- SOFA (SOFARPC's tracer context, in the bolt header map): ``rpc_trace_context.sofaTraceId``,
  ``rpc_trace_context.sofaRpcId`` (dotted: ``0``, ``0.1``, ``0.1.2``; a hop's child is its
  id plus ``.1``) and ``rpc_trace_context.sofaPenAttrs`` (the baggage, passed on as is).
"""

from __future__ import annotations

import hashlib
import random
import re

_getrandbits = random.getrandbits

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE_ID = b"x-b3-traceid"
B3_SPAN_ID = b"x-b3-spanid"
B3_PARENT_SPAN_ID = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"
#: Every header this module reads or writes on HTTP requests.
HTTP_HEADERS = frozenset(
    {TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS}
)

#: SOFARPC's keys in the bolt header map (MOSN's ``pkg/trace/sofa`` reads the same).
SOFA_TRACE_ID = "rpc_trace_context.sofaTraceId"
SOFA_RPC_ID = "rpc_trace_context.sofaRpcId"
SOFA_PEN_ATTRS = "rpc_trace_context.sofaPenAttrs"

#: W3C's bounds for a propagated tracestate.
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_MAX_CHARS = 512
_TRACESTATE_BIG_MEMBER = 128
#: Bounds of what a SOFA context may carry through (its ids are free-form strings).
SOFA_MAX_TRACE_ID = 64
SOFA_MAX_RPC_ID = 128
SOFA_MAX_PEN_ATTRS = 4096


def new_trace_id() -> int:
    """A random 128-bit trace id, never zero."""
    while True:
        value = _getrandbits(128)
        if value:
            return value


def new_span_id() -> int:
    """A random 64-bit span id, never zero."""
    while True:
        value = _getrandbits(64)
        if value:
            return value


# ---------------------------------------------------------------------------------- W3C


_LOWER_HEX_DASH = b"0123456789abcdef-"
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class TraceParent:
    """A parsed ``traceparent``: the caller's span (``span_id``) in trace ``trace_id``."""

    __slots__ = ("flags", "span_id", "trace_id", "version")

    def __init__(self, version: int, trace_id: int, span_id: int, flags: int) -> None:
        self.version = version
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceParent) and (
            (self.version, self.trace_id, self.span_id, self.flags)
            == (other.version, other.trace_id, other.span_id, other.flags)
        )

    def __repr__(self) -> str:
        return (
            f"TraceParent({self.version:02x}-{self.trace_id:032x}-{self.span_id:016x}"
            f"-{self.flags:02x})"
        )


def parse_traceparent(value: bytes) -> TraceParent | None:
    """``value`` as W3C ``traceparent``, or ``None`` if it is not a valid one."""
    if len(value) == 55 and value[:3] == b"00-" and value[35] == 45 and value[52] == 45:
        # version 00, the usual case: lower-case hex and the three dashes only (strip
        # leaves nothing else)
        if value.strip(_LOWER_HEX_DASH) or value.count(45) != 3:
            return None
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        if not trace_id or not span_id:
            return None
        return TraceParent(0, trace_id, span_id, int(value[53:55], 16))
    return parse_traceparent_any(value)


def parse_traceparent_any(value: bytes) -> TraceParent | None:
    """``parse_traceparent`` by the grammar alone, any version (its fast path's oracle)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version = int(m.group(1), 16)
    if version == 0xFF:
        return None
    if version == 0:
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55:56] != b"-":
        return None  # a later version may append fields, each after a dash
    trace_id = int(m.group(2), 16)
    span_id = int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return TraceParent(version, trace_id, span_id, int(m.group(4), 16))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    """Version 00, with the sampled flag only (the flags this version defines)."""
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


# tracestate list members: key "=" value (W3C's grammar; the value has no "," nor "=").
_TS_KEY = re.compile(
    rb"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
)
_TS_VALUE = re.compile(rb"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_tracestate(values: list[bytes]) -> bytes | None:
    """The ``tracestate`` fields of a request (several are joined with commas, as HTTP
    says) checked and bounded: ``None`` when nothing valid is left or a member is invalid
    (W3C: a state that cannot be parsed is not passed on). Over 32 members: dropped whole;
    over 512 characters: members longer than 128 dropped first, then from the end."""
    members: list[bytes] = []
    seen: set[bytes] = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip(b" \t")
            if not member:
                continue  # empty list members are allowed
            key, eq, val = member.partition(b"=")
            if not eq or _TS_KEY.fullmatch(key) is None or _TS_VALUE.fullmatch(val) is None:
                return None
            if key in seen:
                return None  # a key appears once
            seen.add(key)
            members.append(member)
            if len(members) > TRACESTATE_MAX_MEMBERS:
                return None
    if not members:
        return None
    joined = b",".join(members)
    if len(joined) > TRACESTATE_MAX_CHARS:
        members = [m for m in members if len(m) <= _TRACESTATE_BIG_MEMBER]
        while members and len(b",".join(members)) > TRACESTATE_MAX_CHARS:
            members.pop()
        if not members:
            return None
        joined = b",".join(members)
    return joined


# ---------------------------------------------------------------------------------- B3


_HEX16 = re.compile(rb"[0-9a-f]{16}")
_HEX16_32 = re.compile(rb"[0-9a-f]{16}(?:[0-9a-f]{16})?")


class B3Context:
    """A parsed B3 context. ``trace_id`` 0: only a sampling decision came (no ids).
    ``sampled``: ``None`` when the caller deferred the decision. ``wide``: the trace id
    came as 32 hex characters (it goes on as it came)."""

    __slots__ = ("debug", "parent_id", "sampled", "single", "span_id", "trace_id", "wide")

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        sampled: bool | None,
        *,
        parent_id: int = 0,
        debug: bool = False,
        wide: bool = True,
        single: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.debug = debug
        self.wide = wide
        self.single = single

    def __eq__(self, other: object) -> bool:
        return isinstance(other, B3Context) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"B3Context({fields})"


def _b3_sampled(value: bytes) -> tuple[bool | None, bool] | None:
    """(sampled, debug) of a B3 sampling state, or ``None`` if it is not one."""
    if value == b"1":
        return True, False
    if value == b"0":
        return False, False
    if value == b"d":
        return True, True
    return None


def parse_b3_single(value: bytes) -> B3Context | None:
    """The ``b3`` header: ``{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`` or a bare
    sampling decision (``0``, ``1``, ``d``)."""
    parts = value.split(b"-")
    if len(parts) == 1:
        state = _b3_sampled(value)
        if state is None:
            return None
        return B3Context(0, 0, state[0], debug=state[1], single=True)
    if len(parts) > 4:
        return None
    trace, span = parts[0], parts[1]
    if _HEX16_32.fullmatch(trace) is None or _HEX16.fullmatch(span) is None:
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) > 2:
        state = _b3_sampled(parts[2])
        if state is None:
            return None
        sampled, debug = state
    parent_id = 0
    if len(parts) == 4:
        if _HEX16.fullmatch(parts[3]) is None:
            return None
        parent_id = int(parts[3], 16)
        if not parent_id:
            return None
    return B3Context(
        trace_id,
        span_id,
        sampled,
        parent_id=parent_id,
        debug=debug,
        wide=len(trace) == 32,
        single=True,
    )


def parse_b3_multi(
    trace: bytes | None,
    span: bytes | None,
    parent: bytes | None,
    sampled: bytes | None,
    flags: bytes | None,
) -> B3Context | None:
    """The ``x-b3-*`` headers' values (``None``: absent). Ids without a sampling header
    defer the decision; a sampling header alone is a decision without a trace."""
    debug = flags == b"1"
    decision: bool | None = True if debug else None
    if sampled is not None and not debug:
        if sampled in (b"1", b"true"):
            decision = True
        elif sampled in (b"0", b"false"):
            decision = False
        else:
            return None
    if trace is None and span is None:
        if decision is None:
            return None
        return B3Context(0, 0, decision, debug=debug)
    if trace is None or span is None:
        return None
    if _HEX16_32.fullmatch(trace) is None or _HEX16.fullmatch(span) is None:
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    parent_id = 0
    if parent is not None:
        if _HEX16.fullmatch(parent) is None or not (parent_id := int(parent, 16)):
            return None
    return B3Context(
        trace_id, span_id, decision, parent_id=parent_id, debug=debug, wide=len(trace) == 32
    )


def b3_trace_hex(trace_id: int, wide: bool) -> bytes:
    return b"%032x" % trace_id if wide else b"%016x" % trace_id


def format_b3_single(
    trace_id: int, span_id: int, sampled: bool, parent_id: int, *, debug: bool, wide: bool
) -> bytes:
    state = b"d" if debug else b"1" if sampled else b"0"
    out = b"%s-%016x-%s" % (b3_trace_hex(trace_id, wide), span_id, state)
    return out + b"-%016x" % parent_id if parent_id else out


def format_b3_multi(
    trace_id: int, span_id: int, sampled: bool, parent_id: int, *, debug: bool, wide: bool
) -> list[tuple[bytes, bytes]]:
    out = [(B3_TRACE_ID, b3_trace_hex(trace_id, wide)), (B3_SPAN_ID, b"%016x" % span_id)]
    if parent_id:
        out.append((B3_PARENT_SPAN_ID, b"%016x" % parent_id))
    if debug:
        out.append((B3_FLAGS, b"1"))
    else:
        out.append((B3_SAMPLED, b"1" if sampled else b"0"))
    return out


# ---------------------------------------------------------------------------------- SOFA


_SOFA_TRACE_ID = re.compile(rf"[0-9A-Za-z_\-.]{{1,{SOFA_MAX_TRACE_ID}}}")
_SOFA_RPC_ID = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,30}")
_HEX_UP_TO_32 = re.compile(r"[0-9a-f]{1,32}")


class SofaContext:
    """SOFA's tracer context as SOFARPC carries it: a free-form ``trace_id`` string, the
    caller's dotted ``rpc_id`` and the baggage (``pen_attrs``, passed on untouched)."""

    __slots__ = ("pen_attrs", "rpc_id", "trace_id")

    def __init__(self, trace_id: str, rpc_id: str, pen_attrs: str | None = None) -> None:
        self.trace_id = trace_id
        self.rpc_id = rpc_id
        self.pen_attrs = pen_attrs

    def child_rpc_id(self) -> str:
        """The id of this hop's call upstream: the caller's id plus ``.1``."""
        return self.rpc_id + ".1"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SofaContext) and (
            (self.trace_id, self.rpc_id, self.pen_attrs)
            == (other.trace_id, other.rpc_id, other.pen_attrs)
        )

    def __repr__(self) -> str:
        return f"SofaContext({self.trace_id!r}, {self.rpc_id!r}, {self.pen_attrs!r})"


def parse_sofa(
    trace_id: str | None, rpc_id: str | None, pen_attrs: str | None
) -> SofaContext | None:
    """A SOFA context from the three header values, or ``None``: no trace id, or one that
    is not a plain token; an rpc id that is not dotted numbers (or too deep) counts as the
    root ``0``; baggage over its bound or not printable is not read (``pen_attrs`` None:
    the header itself goes on as the client sent it, as every other bolt header does)."""
    if trace_id is None or _SOFA_TRACE_ID.fullmatch(trace_id) is None:
        return None
    if rpc_id is None or len(rpc_id) > SOFA_MAX_RPC_ID or _SOFA_RPC_ID.fullmatch(rpc_id) is None:
        rpc_id = "0"
    if pen_attrs is not None and (
        len(pen_attrs) > SOFA_MAX_PEN_ATTRS or not pen_attrs.isprintable() or not pen_attrs
    ):
        pen_attrs = None
    return SofaContext(trace_id, rpc_id, pen_attrs)


def sofa_trace_int(trace_id: str) -> int:
    """A SOFA trace id as a W3C 128-bit one: its value when it is at most 32 lower-case hex
    digits (SOFATracer's ids are: address, time, counter, pid), else 128 bits of its hash;
    never zero."""
    if _HEX_UP_TO_32.fullmatch(trace_id) is not None:
        value = int(trace_id, 16)
        if value:
            return value
    value = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=16).digest(), "big")
    return value or 1


__all__ = [
    "B3Context",
    "SofaContext",
    "TraceParent",
    "format_b3_multi",
    "format_b3_single",
    "format_traceparent",
    "new_span_id",
    "new_trace_id",
    "parse_b3_multi",
    "parse_b3_single",
    "parse_sofa",
    "parse_traceparent",
    "parse_traceparent_any",
    "parse_tracestate",
    "sofa_trace_int",
]
