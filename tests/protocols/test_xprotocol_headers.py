"""`Codec.with_headers`: the frame a stream filter's header changes turn an RPC request (or a
bolt response) into. Bolt re-encodes its header map; Dubbo edits the attachments map at the end
of the body and copies everything else byte for byte. Checked on frames captured from the real
clients, with the real peers' own decoders (anthunder's, dubbo-ssl-python's), and with
hypothesis over random header maps and random edits made through the filters' `Headers`."""

from __future__ import annotations

import importlib.util
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import bolt_frames as frames
from tests import dubbo_frames_data as captured
from trio_mesh.filters.stream import Headers
from trio_mesh.protocols.xprotocol import Codec, ErrorKind, header_changes
from trio_mesh.protocols.xprotocol import dubbo_frames as df
from trio_mesh.protocols.xprotocol.bolt import BOLT, BoltFrame
from trio_mesh.protocols.xprotocol.dubbo import DUBBO, DubboFrame
from trio_mesh.protocols.xprotocol.hessian2 import (
    Hessian2Reader,
    encode_int,
    encode_long,
    encode_string,
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DERIVED = {"service", "method", "sofa_head_target_service", "sofa_head_method_name"}


def edited(frame, edit) -> tuple[Headers, dict[str, str]]:
    headers = Headers.from_mapping(frame.headers)
    edit(headers)
    return headers, headers.to_dict()


def folded(mapping) -> dict[str, str]:
    return {k.lower(): v for k, v in mapping.items()}


# -- header_changes -----------------------------------------------------------------------


def test_header_changes_keeps_the_view_spelling_of_a_name_set_in_lower_case():
    view = {"X-Trace": "1", "keep": "k", "gone": "g"}
    h = Headers.from_mapping(view)
    h.set("X-Trace", "2")  # Headers lower-case what they set
    h.remove("gone")
    h.add("new", "n")
    assert header_changes(view, h.to_dict()) == ({"X-Trace": "2", "new": "n"}, ["gone"])
    assert header_changes(view, dict(view)) == ({}, [])


# -- bolt ---------------------------------------------------------------------------------


def bolt_request(**kw) -> BoltFrame:
    return (
        BOLT.decode(frames.CLIENT_REQUEST)[0]
        if not kw
        else BOLT.build_request(
            kw.pop("rid", 3), kw.pop("headers"), kw.pop("content", b"payload"), **kw
        )
    )


def test_bolt_adds_changes_and_removes_header_map_entries_and_keeps_the_rest():
    f = bolt_request()
    _, want = edited(f, lambda h: (h.set("x-tag", "a,b"), h.remove("uid"), h.set("method", "m2")))
    g = BOLT.with_headers(f, want)
    raw = g.raw_headers
    assert raw["x-tag"] == "a,b" and "uid" not in raw
    assert raw["sofa_head_method_name"] == "m2" and "method" not in raw  # where it came from
    assert dict(g.headers) == {**want, "sofa_head_method_name": "m2"}  # the view follows
    assert (g.class_name, bytes(g.content), g.request_id, g.timeout, g.kind, g.codec) == (
        f.class_name,
        bytes(f.content),
        f.request_id,
        f.timeout,
        f.kind,
        f.codec,
    )
    assert (
        struct.unpack(">H", g.data[16:18])[0]
        == g.header_len
        == len(g.data) - 22 - 44 - len(g.content)
    )  # the header length field and the frame agree


def test_bolt_service_goes_to_the_target_service_when_the_map_has_no_service():
    f = bolt_request(headers={"sofa_head_target_service": "a.B:1.0"})
    assert f.headers["service"] == "a.B:1.0"
    g = BOLT.with_headers(f, edited(f, lambda h: h.set("service", "c.D:2.0"))[1])
    assert dict(g.raw_headers) == {"sofa_head_target_service": "c.D:2.0"}
    f = bolt_request(headers={"service": "a.B:1.0", "sofa_head_target_service": "a.B:1.0"})
    g = BOLT.with_headers(f, edited(f, lambda h: h.set("service", "c.D:2.0"))[1])
    assert dict(g.raw_headers) == {"service": "c.D:2.0", "sofa_head_target_service": "a.B:1.0"}


def test_bolt_unchanged_view_is_the_same_frame_and_oversized_maps_are_refused():
    f = bolt_request()
    assert BOLT.with_headers(f, dict(f.headers)) is f
    with pytest.raises(ValueError, match="65535"):
        BOLT.with_headers(f, {**f.headers, "big": "x" * 70000})


@pytest.mark.parametrize("version,ver1,switch", [(1, 1, 0), (2, 1, 0), (2, 2, 1)])
@pytest.mark.parametrize("oneway", [False, True])
def test_bolt_v1_v2_and_crc_frames_rewrite_then_take_a_new_id(version, ver1, switch, oneway):
    f = bolt_request(
        headers={"service": frames.SERVICE, "a": "1"},
        version=version,
        ver1=ver1,
        switch=switch,
        oneway=oneway,
        timeout_ms=2500,
    )
    g = BOLT.with_headers(f, {**f.headers, "x-tag": "t"})
    assert (g.version, g.ver1, g.switch, g.crc, g.is_oneway) == (
        version,
        ver1 if version == 2 else 0,
        switch,
        version == 2 and ver1 == 2,
        oneway,
    )
    assert g.timeout == 2.5 and bytes(g.content) == b"payload"
    wire = bytes(BOLT.set_request_id(g, 0xFEEDBEEF))
    again = BOLT.decode(wire)[0]  # a CRC frame decodes only if its CRC was recomputed
    assert again.request_id == 0xFEEDBEEF and again.raw_headers["x-tag"] == "t"


def test_bolt_responses_rewrite_too():
    resp = BOLT.decode(frames.SERVER_RESPONSE)[0]
    g = BOLT.with_headers(resp, {**resp.headers, "x-tag": "b,a"})
    assert g.is_response and g.status == resp.status and bytes(g.content) == bytes(resp.content)
    assert g.raw_headers["x-tag"] == "b,a"


@pytest.mark.skipif(importlib.util.find_spec("anthunder") is None, reason="needs anthunder")
def test_anthunder_reads_a_rewritten_request():
    from anthunder.protocol import BoltRequest

    f = bolt_request()
    g = BOLT.with_headers(f, {**f.headers, "x-tag": "a,b"})
    raw = bytes(BOLT.set_request_id(g, 99))
    head = BoltRequest.bolt_header_from_stream(raw)
    req = BoltRequest.bolt_content_from_stream(raw[BoltRequest.bolt_header_size() :], head)
    assert req.request_id == 99 and req.header["x-tag"] == "a,b"
    assert req.header["sofa_head_method_name"] == "sayHello"
    assert bytes(req.content) == bytes(f.content)


_names = st.text(st.characters(codec="latin-1"), min_size=1, max_size=8).filter(
    lambda n: n.lower() not in DERIVED
)
_values = st.text(st.characters(codec="latin-1"), max_size=12)
_ops = st.lists(st.tuples(st.sampled_from(["set", "add", "remove"]), _names, _values), max_size=8)


def _apply(headers: Headers, ops) -> None:
    for op, name, value in ops:
        if op == "set":
            headers.set(name, value)
        elif op == "add":
            headers.add(name, value)
        else:
            headers.remove(name)


@PROPS
@given(
    st.dictionaries(_names, _values, max_size=6).filter(
        lambda d: len({k.lower() for k in d}) == len(d)
    ),
    _ops,
    st.sampled_from([(1, 1, 0), (2, 2, 1)]),
    st.booleans(),
)
def test_bolt_any_edit_through_headers_is_what_the_new_frame_carries(raw, ops, layout, method):
    version, ver1, switch = layout
    base = {"service": frames.SERVICE, **({"sofa_head_method_name": "m"} if method else {}), **raw}
    try:
        f = bolt_request(headers=base, version=version, ver1=ver1, switch=switch)
        headers = Headers.from_mapping(f.headers)
    except UnicodeEncodeError:  # a value outside latin-1: the proxy's own fallback's case
        return
    _apply(headers, ops)
    want = headers.to_dict()
    g = BOLT.with_headers(f, want)
    # The same headers, names compared as the filters' Headers compare them.
    assert folded(g.headers) == folded(want)
    assert bytes(g.content) == b"payload" and g.class_name == f.class_name
    assert BOLT.decode(bytes(BOLT.set_request_id(g, 12345)))[0].request_id == 12345


# -- dubbo --------------------------------------------------------------------------------


def consumer_view(frame: DubboFrame) -> list:
    """The body as dubbo-ssl-python's own hessian2 decoder reads it: the arguments and the
    attachments map."""
    from dubbo_ssl.codec.decoder import Response

    r = Response(bytes(frame.data[df.HEADER_LENGTH :]))
    values = [r.read_next() for _ in range(5 + frame.request.argument_count + 1)]
    return values[5:]


def our_arguments(frame: DubboFrame) -> list:
    r = Hessian2Reader(bytes(frame.data[df.HEADER_LENGTH :]))
    for _ in range(5):
        r.read()
    return [r.read() for _ in range(frame.request.argument_count)]


needs_dubbo_client = pytest.mark.skipif(
    importlib.util.find_spec("dubbo_ssl") is None, reason="needs dubbo-ssl-python"
)


@needs_dubbo_client
@pytest.mark.parametrize("raw", captured.ALL_REQUESTS)
def test_dubbo_edits_attachments_and_copies_the_arguments(raw):
    f = DUBBO.decode(raw)[0]
    _, want = edited(
        f,
        lambda h: (
            h.set("x-tag", "a,b"),
            h.set("group", "green"),
            h.remove("traceid"),
            h.set("version", "2.0.0"),
        ),
    )
    g = DUBBO.with_headers(f, want)
    assert dict(g.headers) == want
    before, after = consumer_view(f), consumer_view(g)
    assert after[:-1] == before[:-1]  # arguments (objects, refs, class defs) as they were
    expected = {**before[-1], "x-tag": "a,b", "group": "green", "version": "2.0.0"}
    expected.pop("traceid", None)
    assert after[-1] == expected
    assert our_arguments(g) == our_arguments(f)
    assert (g.request_id, g.kind, g.timeout, g.flag) == (f.request_id, f.kind, f.timeout, f.flag)
    rewired = DUBBO.decode(bytes(DUBBO.set_request_id(g, 2**40)))[0]
    assert rewired.request_id == 2**40 and rewired.headers["x-tag"] == "a,b"


def read_all(frame: DubboFrame) -> list:
    """The arguments and the attachments, read (not skipped) in one hessian2 stream, so that
    references resolve."""
    r = Hessian2Reader(bytes(frame.data[df.HEADER_LENGTH :]))
    for _ in range(5):
        r.read()
    return [r.read() for _ in range(frame.request.argument_count + 1)]


def _invocation(attachments: bytes | None, args: bytes = b"", types: str = "") -> DubboFrame:
    body = (
        encode_string("2.0.2")
        + encode_string("a.Svc")
        + encode_string("1.0")
        + encode_string("m")
        + encode_string(types)
        + args
        + (attachments or b"")
    )
    wire = df.encode_frame(0xC2, 0, 7, body)
    return DUBBO.decode(wire)[0]


def test_dubbo_non_string_attachments_and_references_survive():
    # args: one list [1, 2] (reference 0); attachments (reference 1): a string, an int, a long,
    # a nested map (reference 2) and a reference back to the argument list
    args = b"\x7a" + encode_int(1) + encode_int(2)  # fixed-length untyped list of two
    attachments = (
        b"H"
        + encode_string("s")
        + encode_string("v")
        + encode_string("n")
        + encode_int(5)
        + encode_string("big")
        + encode_long(1 << 40)
        + encode_string("m")
        + b"H"
        + encode_string("k")
        + encode_string("v")
        + b"Z"
        + encode_string("r")
        + b"Q"
        + encode_int(0)
        + b"Z"
    )
    f = _invocation(attachments, args, "[I")
    assert read_all(f)[-1]["r"] == [1, 2]
    g = DUBBO.with_headers(f, {**f.headers, "s": "w", "x-tag": "t", "n": "five"})
    assert read_all(g) == [
        [1, 2],
        {"s": "w", "n": "five", "big": 1 << 40, "m": {"k": "v"}, "r": [1, 2], "x-tag": "t"},
    ]


@pytest.mark.parametrize("attachments", [None, b"N", b"H\x5a"])
def test_dubbo_request_without_attachments_gets_a_map(attachments):
    f = _invocation(attachments)
    g = DUBBO.with_headers(f, {**f.headers, "x-tag": "t"})
    assert g.request.attachments == {"x-tag": "t"}


def test_dubbo_refuses_what_an_attachment_cannot_carry():
    f = DUBBO.decode(captured.SAY_HELLO)[0]
    for edit in (
        lambda h: h.set("service", "x.Y"),
        lambda h: h.set("method", "other"),
        lambda h: h.remove("method"),
    ):
        with pytest.raises(ValueError, match="invocation"):
            DUBBO.with_headers(f, edited(f, edit)[1])
    bare = _invocation(None)  # interface and version come from the invocation itself
    with pytest.raises(ValueError, match="not an attachment"):
        DUBBO.with_headers(bare, edited(bare, lambda h: h.remove("interface"))[1])
    nested = _invocation(b"H" + encode_string("m") + b"H" + b"Z" + b"Z")
    with pytest.raises(ValueError, match="not a scalar"):
        DUBBO.with_headers(nested, {**nested.headers, "m": "flat"})
    response = DUBBO.decode(df.value_response(1, encode_string("hi")))[0]
    with pytest.raises(NotImplementedError):
        DUBBO.with_headers(response, {"x-tag": "t"})
    assert DUBBO.with_headers(f, dict(f.headers)) is f


_att_names = st.text(st.characters(codec="latin-1"), min_size=1, max_size=8).filter(
    lambda n: n.lower() not in {"service", "method", "interface", "version", "path"}
)


@PROPS
@given(
    st.sampled_from(captured.ALL_REQUESTS),
    st.lists(st.tuples(st.sampled_from(["set", "add", "remove"]), _att_names, _values), max_size=8),
)
def test_dubbo_any_attachment_edit_through_headers_is_what_the_new_frame_carries(raw, ops):
    f = DUBBO.decode(raw)[0]
    headers = Headers.from_mapping(f.headers)
    _apply(headers, ops)
    want = headers.to_dict()
    g = DUBBO.with_headers(f, want)
    assert folded(g.headers) == folded(want)
    assert our_arguments(g) == our_arguments(f)


# -- the interface's default ----------------------------------------------------------------


def test_default_with_headers_raises_not_implemented_and_payload_is_the_frame():
    class Plain(type(BOLT)):
        name = "plain"
        with_headers = Codec.with_headers
        payload = Codec.payload

    f = bolt_request()
    with pytest.raises(NotImplementedError, match="plain"):
        Plain().with_headers(f, {})
    assert Plain().payload(f) == bytes(f.data)
    assert BOLT.payload(f) == bytes(f.content)
    assert DUBBO.payload(DUBBO.decode(captured.SAY_HELLO)[0]) == captured.SAY_HELLO[16:]
    assert ErrorKind.INTERNAL in ErrorKind
