"""The Hessian 2.0 reader and writer (trio_mesh.protocols.xprotocol.hessian2).

Values come from three independent encoders: dubbo-ssl-python's (Hessian 2, Java style),
python-hessian's (Hessian 1.0, whose scalar and 'S'/'B' forms are also Hessian 2.0 forms), and a
reference encoder written here from the spec grammar that picks a random valid form for every value
(all compact forms, chunk splits, typed/untyped and fixed/variable lists, typed maps, class
definitions, type and value references).
"""

from __future__ import annotations

import datetime as dt
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mesh.protocols.xprotocol.hessian2 import (
    Hessian2Error,
    Hessian2Reader,
    HessianObject,
    UnresolvedRef,
    decode,
    encode_bool,
    encode_int,
    encode_long,
    encode_null,
    encode_string,
    encode_string_map,
)

UTC = dt.UTC


def h(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def skip_len(data: bytes) -> int:
    r = Hessian2Reader(data)
    r.skip()
    return r.pos


# -- spec examples --------------------------------------------------------------------------

SPEC_EXAMPLES = [
    # ints
    ("90", 0),
    ("80", -16),
    ("bf", 47),
    ("c8 00", 0),
    ("c0 00", -2048),
    ("c7 00", -256),
    ("cf ff", 2047),
    ("d4 00 00", 0),
    ("d0 00 00", -262144),
    ("d7 ff ff", 262143),
    ("49 00 00 00 00", 0),
    ("49 00 00 01 2c", 300),
    ("49 80 00 00 00", -(2**31)),
    # longs
    ("e0", 0),
    ("d8", -8),
    ("ef", 15),
    ("f8 00", 0),
    ("f0 00", -2048),
    ("f7 00", -256),
    ("ff ff", 2047),
    ("3c 00 00", 0),
    ("38 00 00", -262144),
    ("3f ff ff", 262143),
    ("59 00 00 00 00", 0),
    ("59 00 00 01 2c", 300),
    ("4c 00 00 00 00 00 00 01 2c", 300),
    ("4c 80 00 00 00 00 00 00 00", -(2**63)),
    # doubles
    ("5b", 0.0),
    ("5c", 1.0),
    ("5d 00", 0.0),
    ("5d 80", -128.0),
    ("5d 7f", 127.0),
    ("5e 00 00", 0.0),
    ("5e 80 00", -32768.0),
    ("5e 7f ff", 32767.0),
    ("5f 00 00 0c b2", 3.25),  # int milli-units, as the Java/Go/JS peers write it
    ("44 40 28 80 00 00 00 00 00", 12.25),
    # null, booleans
    ("4e", None),
    ("54", True),
    ("46", False),
    # dates
    ("4a 00 00 00 d0 4b 92 84 b8", dt.datetime(1998, 5, 8, 9, 51, 31, tzinfo=UTC)),
    ("4b 00 e3 83 8f", dt.datetime(1998, 5, 8, 9, 51, tzinfo=UTC)),
    # strings
    ("00", ""),
    ("05 68 65 6c 6c 6f", "hello"),
    ("01 c3 83", "\u00c3"),
    ("53 00 05 68 65 6c 6c 6f", "hello"),
    ("30 00", ""),
    ("30 03 61 62 63", "abc"),
    ("52 00 02 68 65 03 6c 6c 6f", "hello"),  # a non-final chunk then a compact final one
    ("52 00 01 61 52 00 01 62 53 00 01 63", "abc"),
    # binary
    ("20", b""),
    ("23 01 02 03", b"\x01\x02\x03"),
    ("34 03 01 02 03", b"\x01\x02\x03"),
    ("42 00 02 01 02", b"\x01\x02"),
    ("41 00 01 09 21 0a", b"\x09\x0a"),
    # lists
    ("72 04 5b 69 6e 74 90 91", [0, 1]),  # compact typed fixed
    ("7a 90 91", [0, 1]),  # compact untyped fixed
    ("56 04 5b 69 6e 74 92 90 91", [0, 1]),
    ("58 92 90 91", [0, 1]),
    ("55 04 5b 69 6e 74 90 91 5a", [0, 1]),
    ("57 90 91 5a", [0, 1]),
    ("78", []),
    ("57 5a", []),
    # maps
    ("48 91 03 66 65 65 a0 03 66 69 65 c9 00 03 66 6f 65 5a", {1: "fee", 16: "fie", 256: "foe"}),
    (
        "4d 13"
        + b"com.caucho.test.Car".hex()
        + "05"
        + b"color".hex()
        + "0a"
        + b"aquamarine".hex()
        + "05"
        + b"model".hex()
        + "06"
        + b"Beetle".hex()
        + "07"
        + b"mileage".hex()
        + "49 00 01 00 00 5a",
        {"color": "aquamarine", "model": "Beetle", "mileage": 65536},
    ),
    ("48 5a", {}),
    # objects
    (
        "43 0b"
        + b"example.Car".hex()
        + "92 05"
        + b"color".hex()
        + "05"
        + b"model".hex()
        + "4f 90 03"
        + b"red".hex()
        + "08"
        + b"corvette".hex(),
        HessianObject("example.Car", {"color": "red", "model": "corvette"}),
    ),
    ("43 01 45 90 60", HessianObject("E")),
]


@pytest.mark.parametrize(("hexstr", "expected"), SPEC_EXAMPLES)
def test_spec_examples(hexstr, expected):
    data = h(hexstr)
    value = decode(data)
    assert value == expected
    assert type(value) is type(expected)
    assert skip_len(data) == len(data)


def test_values_share_tables_across_reads():
    # two objects of one class definition, the second by compact reference; then a type ref
    data = h(
        "43 0b"
        + b"example.Car".hex()
        + "92 05"
        + b"color".hex()
        + "05"
        + b"model".hex()
        + "60 03"
        + b"red".hex()
        + "08"
        + b"corvette".hex()
        + "60 05"
        + b"green".hex()
        + "05"
        + b"civic".hex()
        + "72 04 5b 69 6e 74 90 91"  # typed list "[int", type table entry 0
        + "71 90 92"  # typed list, type reference 0
    )
    r = Hessian2Reader(data)
    assert r.read() == HessianObject("example.Car", {"color": "red", "model": "corvette"})
    r.skip()
    assert r.read() == [0, 1]
    assert r.read() == [2]
    assert r.at_end


def test_circular_reference():
    # the spec's LinkedList: head=1, tail=itself
    data = h(
        "43 0a"
        + b"LinkedList".hex()
        + "92 04"
        + b"head".hex()
        + "04"
        + b"tail".hex()
        + "60 91 51 90"
    )
    obj = decode(data)
    assert obj.type == "LinkedList"
    assert obj.fields["head"] == 1
    assert obj.fields["tail"] is obj
    assert skip_len(data) == len(data)


def test_shared_reference_identity():
    data = h("58 92 57 91 5a 51 91")  # [x, x] where x = [1]; ref 0 is the outer list
    value = decode(data)
    assert value == [[1], [1]]
    assert value[0] is value[1]


def test_reference_to_skipped_value():
    r = Hessian2Reader(h("7a 90 91 51 90"))
    r.skip()
    assert r.read() == UnresolvedRef(0)


@pytest.mark.parametrize(
    ("hexstr", "expected"),
    [
        ("02 ed a0 bd ed b8 80", "\U0001f600"),  # CESU-8 pair (what Java writes): 2 units
        ("02 f0 9f 98 80", "\U0001f600"),  # 4-byte UTF-8: also 2 units
        ("52 00 01 ed a0 bd 01 ed b8 80", "\U0001f600"),  # the pair split across chunks
        ("01 ed a0 bd", "\ud83d"),  # a lone surrogate stays one
        ("04 61 f0 9f 98 80 62", "a\U0001f600b"),
        ("05 c3 a9 e2 82 ac f0 9f 98 80 61", "\u00e9\u20ac\U0001f600a"),
    ],
)
def test_string_lengths_count_utf16_units(hexstr, expected):
    data = h(hexstr)
    assert decode(data) == expected
    assert skip_len(data) == len(data)


@pytest.mark.parametrize(
    "hexstr",
    [
        "01 f0 9f 98 80",  # length counted in code points: a 4-byte sequence is 2 units
        "03 f0 9f 98 80",  # one unit short of data
        "02 c3",  # truncated sequence
        "01 80",  # continuation byte as a lead
        "01 ff",
    ],
)
def test_bad_string_units(hexstr):
    with pytest.raises(Hessian2Error):
        decode(h(hexstr))


def test_miscounted_cesu_pair_leaves_trailing_bytes():
    # a writer that counted code points: the reader reads one unit and stops mid-pair
    with pytest.raises(Hessian2Error, match="trailing"):
        decode(h("01 ed a0 bd ed b8 80"))


@pytest.mark.parametrize(
    "hexstr",
    [
        "",
        "40",
        "45",
        "47",
        "50",
        "5a",  # empty, reserved, stray terminator
        "49 00 00",
        "4c 00",
        "44 00",
        "4a 00",
        "4b 00",
        "59 00",
        "c8",
        "d4 00",
        "f8",
        "38 00",
        "5d",
        "5e 00",
        "5f 00 00",
        "05 61",
        "30",
        "53 00",
        "52 00 01 61",
        "52 00 01 61 90",  # chunk then a non-string
        "25 00",
        "34",
        "42 00 05 00",
        "41 00 01 00",
        "41 00 01 00 90",
        "58 93 90",
        "58 8f",
        "56 90 91 90",  # short list, negative length, type ref missing
        "78 90",
        "55 00 90",
        "57 90",
        "57",  # extra / unterminated
        "48 90",
        "48 90 90",
        "4d 90 5a",  # unterminated map, bad type ref
        "48 57 5a 90 5a",  # unhashable key
        "60",
        "4f 90",
        "43 01 45 91",
        "43 01 45 8f",
        "43 90",  # bad class refs and defs
        "51 90",
        "57 51 91 5a",  # reference out of range
        "4a 7f ff ff ff ff ff ff ff",  # date out of Python's range
    ],
)
def test_malformed(hexstr):
    data = h(hexstr)
    with pytest.raises(Hessian2Error):
        decode(data)


def test_skip_rejects_structure_errors_too():
    for hexstr in ["58 93 90", "48 90", "60", "51 90", "05 61", "41 00 01 00 90", "40"]:
        with pytest.raises(Hessian2Error):
            skip_len(h(hexstr))


def test_depth_limit():
    deep = b"\x79" * 500 + b"\x78"  # 500 nested one-element untyped lists
    with pytest.raises(Hessian2Error, match="deeper"):
        decode(deep)
    with pytest.raises(Hessian2Error, match="deeper"):
        skip_len(deep)
    assert decode(b"\x79" * 10 + b"\x78", max_depth=11) is not None
    with pytest.raises(Hessian2Error):
        decode(b"\x79" * 10 + b"\x78", max_depth=10)
    deep_maps = b"\x48\x90" * 500 + b"\x90" + b"\x5a" * 500
    with pytest.raises(Hessian2Error):
        decode(deep_maps)


def test_byte_limit_and_window():
    data = encode_string("x" * 1000)
    with pytest.raises(Hessian2Error, match="exceeds"):
        Hessian2Reader(data, max_bytes=100)
    framed = b"junk" + data + b"tail"
    r = Hessian2Reader(framed, 4, 4 + len(data))
    assert r.read() == "x" * 1000
    assert r.at_end
    # the window ends inside the value: truncated, even though the buffer goes on
    with pytest.raises(Hessian2Error):
        Hessian2Reader(framed, 4, 4 + len(data) - 1).read()


def test_huge_declared_counts_fail_fast():
    for hexstr in ["58 49 7f ff ff ff 90", "43 01 45 49 7f ff ff ff", "56 01 41 49 7f ff ff ff"]:
        data = h(hexstr)
        with pytest.raises(Hessian2Error, match="exceeds"):
            decode(data)


# -- the writer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0,
        -16,
        47,
        48,
        -17,
        -2048,
        2047,
        2048,
        -2049,
        -262144,
        262143,
        262144,
        -262145,
        2**31 - 1,
        -(2**31),
    ],
)
def test_encode_int_boundaries(value):
    assert decode(encode_int(value)) == value
    assert decode(encode_long(value)) == value


@pytest.mark.parametrize("value", [-8, 15, 16, -9, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)])
def test_encode_long_boundaries(value):
    assert decode(encode_long(value)) == value


def test_encode_int_range():
    with pytest.raises(ValueError):
        encode_int(2**31)


def test_encode_scalars():
    assert encode_null() == b"N"
    assert decode(encode_bool(True)) is True
    assert decode(encode_bool(False)) is False
    assert encode_string("") == b"\x00"
    assert encode_string("\U0001f600") == h("02 ed a0 bd ed b8 80")  # CESU-8, as Java writes
    assert encode_string("a" * 32) == b"\x30\x20" + b"a" * 32
    assert encode_string("a" * 1024) == b"S\x04\x00" + b"a" * 1024


def test_encode_string_chunks_never_split_a_pair():
    s = "a" + "\U0001f600" * 40000  # 80001 units: a pair straddles 0x8000
    data = encode_string(s)
    assert data[0] == 0x52
    first = struct.unpack(">H", data[1:3])[0]
    assert first == 0x8000 - 1  # shortened by one so the chunk ends after a low surrogate
    assert decode(data) == s
    assert decode(encode_string("z" * 100000)) == "z" * 100000


def test_encode_string_map():
    data = encode_string_map({"path": "com.Foo", "x": None, "\u00fc": "\U0001f600"})
    assert decode(data) == {"path": "com.Foo", "x": None, "\u00fc": "\U0001f600"}


def test_writer_read_by_dubbo_ssl_decoder():
    pytest.importorskip("dubbo_ssl")
    from dubbo_ssl.codec.decoder import Response

    payload = encode_int(1) + encode_string("h\u00e9llo \u65e5\u672c") + encode_int(-300000)
    payload += encode_string_map({"k": "v", "n": "\u00fc" * 100})
    r = Response(bytearray(payload))
    assert r.read_next() == 1
    assert r.read_next() == "h\u00e9llo \u65e5\u672c"
    assert r.read_next() == -300000
    assert r.read_next() == {"k": "v", "n": "\u00fc" * 100}


@given(st.text(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_writer_string_roundtrip(s):
    assert decode(encode_string(s)) == s


# -- python-hessian (Hessian 1.0 encoder; the shared forms) ---------------------------------

pyhessian_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ("long", v)),
    st.floats(allow_nan=False),
    st.text(max_size=2000),  # astral characters included: written as CESU-8 surrogate pairs
    st.binary(max_size=3000).map(lambda b: ("binary", b)),
)


@given(pyhessian_scalars)
@settings(max_examples=300, deadline=None)
def test_python_hessian_scalars(value):
    from pyhessian.data_types import long
    from pyhessian.encoder import encode_object
    from pyhessian.protocol import Binary

    if isinstance(value, tuple):
        kind, v = value
        data = encode_object(long(v) if kind == "long" else Binary(v))
        expected = v
    else:
        data = encode_object(value)
        expected = value
    assert decode(data) == expected
    assert skip_len(data) == len(data)


def test_python_hessian_surrogates_long_text():
    from pyhessian.encoder import encode_object

    s = "\U0001f600x\u00e9" * 8000  # 32000 units in one 'S' chunk
    assert decode(encode_object(s)) == s


# -- dubbo-ssl-python's encoder -------------------------------------------------------------

_PATHS = {f"com.example.T{i}": tuple(f"f{j}" for j in range(i)) for i in range(4)}


def _dubbo_ssl_values():
    scalar = st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(-1e300, 1e300),
        st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=300),
    )

    def extend(children):
        def lists_of(elem):
            return st.lists(elem, min_size=1, max_size=9)

        obj = (
            st.sampled_from(sorted(_PATHS))
            .flatmap(
                lambda p: st.tuples(
                    st.just(p), st.lists(children, min_size=len(_PATHS[p]), max_size=len(_PATHS[p]))
                )
            )
            .map(lambda t: ("object", t[0], t[1]))
        )
        homogeneous = st.one_of(
            lists_of(st.booleans()),
            lists_of(st.integers(-(2**63), 2**63 - 1)),
            lists_of(st.floats(-1e300, 1e300)),
            lists_of(
                st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=20)
            ),
            lists_of(obj),
        )
        return st.one_of(obj, homogeneous)

    return st.recursive(scalar, extend, max_leaves=25)


def _to_dubbo_ssl(v):
    from dubbo_ssl.codec.encoder import Object

    if isinstance(v, tuple):
        _, path, vals = v
        return Object(path, {f: _to_dubbo_ssl(x) for f, x in zip(_PATHS[path], vals, strict=True)})
    if isinstance(v, list):
        return [_to_dubbo_ssl(x) for x in v]
    return v


def _expected(v):
    if isinstance(v, tuple):
        _, path, vals = v
        fields = {f: _expected(x) for f, x in zip(_PATHS[path], vals, strict=True)}
        return HessianObject(path, fields)
    if isinstance(v, list):
        return [_expected(x) for x in v]
    return v


_SLOW_AND_BIG = [HealthCheck.too_slow, HealthCheck.data_too_large]


@given(st.lists(_dubbo_ssl_values(), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=_SLOW_AND_BIG)
def test_dubbo_ssl_encoder_roundtrip(values):
    pytest.importorskip("dubbo_ssl")
    from dubbo_ssl.codec.encoder import Request

    enc = Request({})  # one encoder for all values: class and type tables are shared
    data = bytearray()
    for v in values:
        data += bytes(b & 0xFF for b in enc._encode_single_value(_to_dubbo_ssl(v)))
    data = bytes(data)
    r = Hessian2Reader(data)
    for v in values:
        assert r.read() == _expected(v)
    assert r.at_end
    r = Hessian2Reader(data)
    for _ in values:
        r.skip()
    assert r.pos == len(data)


# -- the reference encoder: every form -----------------------------------------------------


class RefEncoder:
    """Writes Hessian 2.0 from the grammar, with every choice (form, chunking) drawn."""

    def __init__(self, draw):
        self.draw = draw
        self.types: list[str] = []
        self.classes: list[tuple[str, tuple[str, ...]]] = []
        self.refs: dict[int, int] = {}  # id(container) -> reference index
        self.nrefs = 0

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def int_(self, v: int) -> bytes:
        forms = ["I"]
        if -0x10 <= v <= 0x2F:
            forms.append("1")
        if -0x800 <= v <= 0x7FF:
            forms.append("2")
        if -0x40000 <= v <= 0x3FFFF:
            forms.append("3")
        f = self.choice(forms)
        if f == "1":
            return bytes([0x90 + v])
        if f == "2":
            return bytes([0xC8 + (v >> 8), v & 0xFF])
        if f == "3":
            return bytes([0xD4 + (v >> 16), (v >> 8) & 0xFF, v & 0xFF])
        return b"I" + struct.pack(">i", v)

    def long_(self, v: int) -> bytes:
        forms = ["L"]
        if -8 <= v <= 15:
            forms.append("1")
        if -0x800 <= v <= 0x7FF:
            forms.append("2")
        if -0x40000 <= v <= 0x3FFFF:
            forms.append("3")
        if -(2**31) <= v < 2**31:
            forms.append("Y")
        f = self.choice(forms)
        if f == "1":
            return bytes([0xE0 + v])
        if f == "2":
            return bytes([0xF8 + (v >> 8), v & 0xFF])
        if f == "3":
            return bytes([0x3C + (v >> 16), (v >> 8) & 0xFF, v & 0xFF])
        if f == "Y":
            return b"Y" + struct.pack(">i", v)
        return b"L" + struct.pack(">q", v)

    def double(self, v: float) -> bytes:
        forms = ["D"]
        if v == 0.0 and math.copysign(1, v) > 0:
            forms.append("0")
        if v == 1.0:
            forms.append("1")
        if v.is_integer() and -128 <= v <= 127 and not (v == 0 and math.copysign(1, v) < 0):
            forms.append("b")
        if v.is_integer() and -32768 <= v <= 32767 and not (v == 0 and math.copysign(1, v) < 0):
            forms.append("s")
        if abs(v) < 2**31 / 1000:
            mills = round(v * 1000)
            if -(2**31) <= mills < 2**31 and 0.001 * mills == v:
                forms.append("m")
        f = self.choice(forms)
        if f == "0":
            return b"\x5b"
        if f == "1":
            return b"\x5c"
        if f == "b":
            return b"\x5d" + struct.pack(">b", int(v))
        if f == "s":
            return b"\x5e" + struct.pack(">h", int(v))
        if f == "m":
            return b"\x5f" + struct.pack(">i", round(v * 1000))
        return b"D" + struct.pack(">d", v)

    def chunks(self, n: int, max_chunk: int) -> list[int]:
        """Random chunk lengths adding up to n (each <= max_chunk)."""
        out = []
        while True:
            if n <= max_chunk and self.draw(st.booleans()):
                out.append(n)
                return out
            k = self.draw(st.integers(0, min(n, max_chunk)))
            if k == n and n <= max_chunk:
                out.append(n)
                return out
            out.append(k)
            n -= k

    def string(self, s: str) -> bytes:
        raw16 = s.encode("utf-16-le", "surrogatepass")
        units = [
            raw16[i : i + 2].decode("utf-16-le", "surrogatepass") for i in range(0, len(raw16), 2)
        ]
        lengths = self.chunks(len(units), self.choice([0xFFFF, 7, 40]))
        out = bytearray()
        i = 0
        for ci, n in enumerate(lengths):
            part = "".join(units[i : i + n])
            i += n
            if self.draw(st.booleans()):  # complete pairs inside the chunk as 4-byte UTF-8
                part = part.encode("utf-16-le", "surrogatepass").decode(
                    "utf-16-le", "surrogatepass"
                )
            raw = part.encode("utf-8", "surrogatepass")
            if ci < len(lengths) - 1:
                out += b"R" + struct.pack(">H", n) + raw
                continue
            forms = ["S"]
            if n <= 31:
                forms.append("c")
            if n <= 1023:
                forms.append("m")
            f = self.choice(forms)
            if f == "c":
                out += bytes([n]) + raw
            elif f == "m":
                out += bytes([0x30 + (n >> 8), n & 0xFF]) + raw
            else:
                out += b"S" + struct.pack(">H", n) + raw
        return bytes(out)

    def binary(self, b: bytes) -> bytes:
        lengths = self.chunks(len(b), self.choice([0xFFFF, 5]))
        out = bytearray()
        i = 0
        for ci, n in enumerate(lengths):
            part = b[i : i + n]
            i += n
            if ci < len(lengths) - 1:
                out += b"A" + struct.pack(">H", n) + part
                continue
            forms = ["B"]
            if n <= 15:
                forms.append("c")
            if n <= 1023:
                forms.append("m")
            f = self.choice(forms)
            if f == "c":
                out += bytes([0x20 + n]) + part
            elif f == "m":
                out += bytes([0x34 + (n >> 8), n & 0xFF]) + part
            else:
                out += b"B" + struct.pack(">H", n) + part
        return bytes(out)

    def type_(self) -> bytes:
        if self.types and self.draw(st.booleans()):
            return self.int_(self.draw(st.integers(0, len(self.types) - 1)))
        name = self.choice(["[int", "[string", "java.util.HashMap", "com.example.Foo", "\u00e9t"])
        self.types.append(name)
        return self.string(name)

    def ref_or_register(self, obj) -> bytes | None:
        if id(obj) in self.refs:
            return b"Q" + self.int_(self.refs[id(obj)])
        self.refs[id(obj)] = self.nrefs
        self.nrefs += 1
        return None

    def value(self, v) -> bytes:
        if v is None:
            return b"N"
        if v is True:
            return b"T"
        if v is False:
            return b"F"
        if isinstance(v, int):
            if -(2**31) <= v < 2**31 and self.draw(st.booleans()):
                return self.int_(v)
            return self.long_(v)
        if isinstance(v, float):
            return self.double(v)
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, bytes):
            return self.binary(v)
        if isinstance(v, dt.datetime):
            ms = (v - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)
            if ms % 60000 == 0 and self.draw(st.booleans()):
                return b"\x4b" + struct.pack(">i", ms // 60000)
            return b"\x4a" + struct.pack(">q", ms)
        ref = self.ref_or_register(v)
        if ref is not None:
            return ref
        if isinstance(v, list):
            n = len(v)
            forms = ["U", "V", "W", "X"] + (["c", "u"] if n <= 7 else [])
            f = self.choice(forms)
            head = {
                "U": lambda: b"U" + self.type_(),
                "V": lambda: b"V" + self.type_() + self.int_(n),
                "W": lambda: b"W",
                "X": lambda: b"X" + self.int_(n),
                "c": lambda: bytes([0x70 + n]) + self.type_(),
                "u": lambda: bytes([0x78 + n]),
            }[f]()
            body = b"".join(self.value(x) for x in v)
            return head + body + (b"Z" if f in "UW" else b"")
        if isinstance(v, dict):
            head = b"M" + self.type_() if self.draw(st.booleans()) else b"H"
            body = b"".join(self.value(k) + self.value(x) for k, x in v.items())
            return head + body + b"Z"
        if isinstance(v, HessianObject):
            key = (v.type, tuple(v.fields))
            pre = b""
            if key not in self.classes or self.draw(st.integers(0, 9)) == 0:
                pre = b"C" + self.string(v.type) + self.int_(len(key[1]))
                pre += b"".join(self.string(f) for f in key[1])
                self.classes.append(key)
                idx = len(self.classes) - 1
            else:
                idx = self.classes.index(key)
            if idx < 16 and self.draw(st.booleans()):
                head = bytes([0x60 + idx])
            else:
                head = b"O" + self.int_(idx)
            return pre + head + b"".join(self.value(x) for x in v.fields.values())
        raise TypeError(v)


_dates = st.integers(-(2**40), 2**40).map(
    lambda ms: dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)
)
_keys = st.one_of(st.text(max_size=10), st.integers(-(2**63), 2**63 - 1))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=60),
    st.binary(max_size=60),
    _dates,
    st.sampled_from([dt.datetime(1998, 5, 8, 9, 51, tzinfo=UTC)]),
    st.text(max_size=5).map(lambda s: s + "\U0001f600" * 3 + s),
)


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=9),
        st.dictionaries(_keys, children, max_size=5),
        st.tuples(
            st.sampled_from(["com.example.A", "B", "\u00e9x.C"]),
            st.dictionaries(st.sampled_from(["a", "b", "c", "\u00fc"]), children, max_size=3),
        ).map(lambda t: HessianObject(t[0], t[1])),
    )


values = st.recursive(_scalars, _containers, max_leaves=30)


def _share(v, draw):
    """Makes some containers appear twice (the second time as a reference)."""
    pool = []

    def walk(x):
        if isinstance(x, list | dict | HessianObject):
            pool.append(x)
            children = (
                x
                if isinstance(x, list)
                else (x.fields if isinstance(x, HessianObject) else x).values()
            )
            for c in list(children):
                walk(c)

    walk(v)
    if isinstance(v, list) and pool and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            target = draw(st.sampled_from(pool))
            if target is not v:
                v.append(target)
    return v


@given(st.data())
@settings(max_examples=500, deadline=None, suppress_health_check=_SLOW_AND_BIG)
def test_reference_encoder_roundtrip(data):
    vs = [_share(data.draw(values), data.draw) for _ in range(data.draw(st.integers(1, 3)))]
    enc = RefEncoder(data.draw)
    blob = b"".join(enc.value(v) for v in vs)
    r = Hessian2Reader(blob)
    for v in vs:
        assert r.read() == v
    assert r.at_end
    r = Hessian2Reader(blob)
    for _ in vs:
        r.skip()
    assert r.pos == len(blob)
    # mutations of valid input: a value, or only ever Hessian2Error
    i = data.draw(st.integers(0, len(blob) - 1))
    mutated = bytearray(blob)
    mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    for variant in (bytes(mutated), blob[:cut], bytes(mutated[:cut]) + blob[cut:] * 2):
        _only_hessian_errors(variant)


def _only_hessian_errors(blob: bytes) -> None:
    for mode in ("read", "skip"):
        r = Hessian2Reader(blob, max_depth=50)
        try:
            while not r.at_end:
                r.read() if mode == "read" else r.skip()
        except Hessian2Error:
            pass


@given(st.binary(max_size=300))
@settings(max_examples=1500, deadline=None)
def test_random_bytes_only_hessian2error(blob):
    _only_hessian_errors(blob)


@given(
    st.lists(
        st.sampled_from(
            [
                b"N",
                b"\x90",
                b"\x79",
                b"\x57",
                b"Z",
                b"H",
                b"M\x00",
                b"C\x01E\x91\x01a",
                b"\x60",
                b"O\x90",
                b"Q\x90",
                b"Q\x91",
                b"\x72\x90",
                b"\x52\x00\x01",
                b"\xed\xa0\xbd",
                b"\xf0\x9f",
                b"\x41\x00\x01",
                b"x",
                b"\x02",
                b"I",
                b"\x43",
            ]
        ),
        max_size=60,
    ).map(b"".join)
)
@settings(max_examples=1500, deadline=None)
def test_token_soup_only_hessian2error(blob):
    _only_hessian_errors(blob)
