"""Hessian 2.0 serialization: a bounded reader (decode or skip) and a small writer. Sans-IO.

The reader follows the Hessian 2.0 serialization grammar and, where the peers that Dubbo talks to
differ from the text of the spec, the peers:

- ``x5f`` is read as a 32-bit int of milli-units (``0.001 * mills``), the way the Java
  implementations (caucho, Dubbo's hessian-lite), dubbo-go-hessian2 and hessian.js write it;
  the grammar's text calls it "32-bit float".
- String lengths count UTF-16 code units, not bytes and not code points: a character outside the
  BMP counts twice. Java writes it as two 3-byte surrogate sequences (CESU-8); a 4-byte UTF-8
  sequence is accepted too. Surrogate pairs are joined into one code point, also across chunks;
  a lone surrogate stays a lone surrogate (Java strings allow it).

Every problem with the input (truncation, a bad tag, a bad length, a reference or class index out
of range, nesting deeper than ``max_depth``, a window larger than ``max_bytes``, a map key Python
cannot hash, a date outside Python's range) raises :class:`Hessian2Error` and nothing else.
Declared lengths and counts are checked against the bytes left before anything is allocated, so the
work and memory of one read are bounded by the size of the window.

One reader per Hessian stream (a Dubbo body is one stream): the class-definition, type and
reference tables are shared by the values read one after another. ``skip()`` walks a value without
building Python objects (class definitions are still recorded, since a later value may use them).
A reference read with ``read()`` to a value that was skipped gives an :class:`UnresolvedRef`.
After an error a reader is in an undefined position: drop it.

No trio here (nor any I/O).
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "SKIPPED_VALUE",
    "Hessian2Error",
    "Hessian2Reader",
    "HessianObject",
    "UnresolvedRef",
    "decode",
    "encode_bool",
    "encode_int",
    "encode_long",
    "encode_null",
    "encode_string",
    "encode_string_map",
]

DEFAULT_MAX_DEPTH = 100
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Hessian2Error(ValueError):
    """Malformed, truncated or over-limit Hessian 2.0 input."""


class HessianObject:
    """A Hessian object instance: its class name and its fields in definition order."""

    __slots__ = ("fields", "type")

    def __init__(self, type: str, fields: dict[str, object] | None = None) -> None:
        self.type = type
        self.fields = {} if fields is None else fields

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HessianObject):
            return NotImplemented
        return self.type == other.type and self.fields == other.fields

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"HessianObject({self.type!r}, {self.fields!r})"


class UnresolvedRef:
    """A reference (``Q``) to a value that this reader skipped instead of building."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnresolvedRef):
            return NotImplemented
        return self.index == other.index

    def __hash__(self) -> int:
        return hash((UnresolvedRef, self.index))

    def __repr__(self) -> str:
        return f"UnresolvedRef({self.index})"


#: What `Hessian2Reader.map_entries` gives for a value it skipped (not a scalar).
SKIPPED_VALUE = type("SkippedValue", (), {"__repr__": lambda self: "SKIPPED_VALUE"})()
_SKIPPED = object()  # placeholder in the reference table for a skipped map/list/object
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

# tag sets
_STRING_TAGS = frozenset([*range(0x00, 0x20), *range(0x30, 0x34), 0x52, 0x53])
_INT_TAGS = frozenset([*range(0x80, 0xD8), 0x49])
# values that are never entries of the reference table (and define no class)
_SCALAR_TAGS = frozenset(
    [
        *_STRING_TAGS,
        *range(0x80, 0x100),
        *range(0x20, 0x30),
        *range(0x34, 0x40),
        0x41,
        0x42,
        0x44,
        0x46,
        0x49,
        0x4A,
        0x4B,
        0x4C,
        0x4E,
        0x54,
        0x59,
        *range(0x5B, 0x60),
    ]
)


class Hessian2Reader:
    """Reads Hessian 2.0 values from ``data[pos:end]``; ``pos`` is where the next value starts."""

    __slots__ = ("_classes", "_data", "_depth", "_end", "_max_depth", "_refs", "_types", "pos")

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        pos: int = 0,
        end: int | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if isinstance(data, memoryview):
            data = data.tobytes()
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"expected bytes-like data, got {type(data).__name__}")
        if end is None:
            end = len(data)
        if not 0 <= pos <= end <= len(data):
            raise Hessian2Error(f"bad window [{pos}:{end}] of {len(data)} bytes")
        if end - pos > max_bytes:
            raise Hessian2Error(f"hessian2 input of {end - pos} bytes exceeds {max_bytes}")
        self._data = data
        self.pos = pos
        self._end = end
        self._max_depth = max_depth
        self._depth = 0
        self._refs: list[object] = []
        self._types = 0  # number of entries in the type table (the names are never needed)
        self._classes: list[tuple[str, tuple[str, ...]]] = []

    # -- public -----------------------------------------------------------------------------

    @property
    def at_end(self) -> bool:
        return self.pos >= self._end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def peek_tag(self) -> int | None:
        """The tag byte of the next value, or None at the end of the window."""
        return self._data[self.pos] if self.pos < self._end else None

    def read(self) -> object:
        """Decodes the next value (None, bool, int, float, str, bytes, datetime, list, dict,
        :class:`HessianObject`, or :class:`UnresolvedRef`)."""
        self._depth = 0
        return self._value()

    def skip(self) -> None:
        """Steps over the next value without building it."""
        self._depth = 0
        self._skip()

    def read_string(self) -> str:
        """The next value, which must be a string."""
        tag = self._tag()
        if tag not in _STRING_TAGS:
            raise Hessian2Error(f"expected a string, got tag 0x{tag:02x}")
        return self._string(tag)

    def read_string_or_none(self) -> str | None:
        """The next value, which must be a string or null."""
        if self.peek_tag() == 0x4E:
            self.pos += 1
            return None
        return self.read_string()

    def read_int(self) -> int:
        """The next value, which must be a 32-bit int (any of its forms)."""
        return self._int(self._tag())

    def map_entries(self) -> tuple[int, list[tuple[object, object, int, int]]]:
        """Walks the map that is next (untyped 'H' or typed 'M') without building its
        values: where its first entry starts (after the tag and type), and per entry its key
        (decoded), its value (decoded when a scalar: str, int, float, bool, None, bytes,
        datetime; else `SKIPPED_VALUE`: a list, map, object or reference), where the entry
        starts and where it ends; the reader is left after the 'Z'. The reference and class
        tables advance as a read would, so the entries' bytes can be copied into an edited
        map."""
        self._depth = 0
        tag = self._tag()
        if tag != 0x48 and tag != 0x4D:
            raise Hessian2Error(f"expected a map, got tag 0x{tag:02x}")
        self._enter()
        self._refs.append(_SKIPPED)
        if tag == 0x4D:
            self._type()
        first = self.pos
        entries: list[tuple[object, object, int, int]] = []
        while not self._at_z():
            start = self.pos
            key = self._value()
            value_at = self.pos
            vtag = self._data[value_at] if value_at < self._end else None
            if vtag is not None and vtag in _SCALAR_TAGS:
                value = self._value()
            else:
                self._skip()
                value = SKIPPED_VALUE
            entries.append((key, value, start, self.pos))
        self._depth -= 1
        return first, entries

    # -- primitives -------------------------------------------------------------------------

    def _tag(self) -> int:
        p = self.pos
        if p >= self._end:
            raise Hessian2Error("truncated hessian2 value: no tag byte")
        self.pos = p + 1
        return self._data[p]

    def _take(self, n: int) -> int:
        """Reserves ``n`` bytes; returns their start."""
        p = self.pos
        if n > self._end - p:
            raise Hessian2Error(f"truncated hessian2 value: need {n} bytes, have {self._end - p}")
        self.pos = p + n
        return p

    def _u8(self) -> int:
        return self._data[self._take(1)]

    def _u16(self) -> int:
        value: int = _U16.unpack_from(self._data, self._take(2))[0]
        return value

    def _i32(self) -> int:
        value: int = _I32.unpack_from(self._data, self._take(4))[0]
        return value

    def _i64(self) -> int:
        value: int = _I64.unpack_from(self._data, self._take(8))[0]
        return value

    def _int(self, tag: int) -> int:
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90
        if 0xC0 <= tag <= 0xCF:
            return ((tag - 0xC8) << 8) + self._u8()
        if 0xD0 <= tag <= 0xD7:
            return ((tag - 0xD4) << 16) + self._u16()
        if tag == 0x49:
            return self._i32()
        raise Hessian2Error(f"expected an int, got tag 0x{tag:02x}")

    def _count(self, what: str, per_item: int = 1) -> int:
        """Reads an int that counts items of at least ``per_item`` bytes each, and checks it."""
        n = self._int(self._tag())
        if n < 0:
            raise Hessian2Error(f"negative {what}: {n}")
        if n * per_item > self._end - self.pos:
            raise Hessian2Error(f"{what} {n} exceeds the {self._end - self.pos} bytes left")
        return n

    def _long(self, tag: int) -> int:
        if 0xD8 <= tag <= 0xEF:
            return tag - 0xE0
        if 0xF0 <= tag <= 0xFF:
            return ((tag - 0xF8) << 8) + self._u8()
        if 0x38 <= tag <= 0x3F:
            return ((tag - 0x3C) << 16) + self._u16()
        if tag == 0x59:
            return self._i32()
        return self._i64()  # 'L'

    def _double(self, tag: int) -> float:
        if tag == 0x5B:
            return 0.0
        if tag == 0x5C:
            return 1.0
        if tag == 0x5D:
            b = self._u8()
            return float(b - 256 if b > 127 else b)
        if tag == 0x5E:
            return float(_I16.unpack_from(self._data, self._take(2))[0])
        if tag == 0x5F:
            return 0.001 * self._i32()
        value: float = _F64.unpack_from(self._data, self._take(8))[0]  # 'D'
        return value

    def _date(self, tag: int) -> _dt.datetime:
        ms = self._i64() if tag == 0x4A else self._i32() * 60000
        try:
            return _EPOCH + _dt.timedelta(milliseconds=ms)
        except OverflowError:
            raise Hessian2Error(f"date {ms} ms from the epoch is out of range") from None

    # -- strings and binary -----------------------------------------------------------------

    def _string_chunk(self, tag: int) -> tuple[int, bool]:
        """For a string tag: (length in UTF-16 units, is this the final chunk)."""
        if tag <= 0x1F:
            return tag, True
        if 0x30 <= tag <= 0x33:
            return ((tag - 0x30) << 8) + self._u8(), True
        if tag == 0x53:
            return self._u16(), True
        if tag == 0x52:
            return self._u16(), False
        raise Hessian2Error(f"expected a string chunk, got tag 0x{tag:02x}")

    def _utf8_span(self, units: int) -> int:
        """Reserves the bytes of ``units`` UTF-16 code units of UTF-8/CESU-8 data; returns the
        start. Only lead bytes are examined here (decoding checks the rest)."""
        data = self._data
        p = start = self.pos
        end = self._end
        q = p + units
        if q <= end and data[p:q].isascii():
            self.pos = q
            return start
        while units > 0:
            if p >= end:
                raise Hessian2Error("truncated hessian2 string")
            b = data[p]
            if b < 0x80:
                p += 1
            elif b < 0xC0:
                raise Hessian2Error(f"bad UTF-8 lead byte 0x{b:02x} in hessian2 string")
            elif b < 0xE0:
                p += 2
            elif b < 0xF0:
                p += 3
            elif b < 0xF8:  # a supplementary character: a surrogate pair, two units
                if units < 2:
                    raise Hessian2Error("4-byte UTF-8 sequence split by a string chunk length")
                units -= 1
                p += 4
            else:
                raise Hessian2Error(f"bad UTF-8 lead byte 0x{b:02x} in hessian2 string")
            units -= 1
        if p > end:
            raise Hessian2Error("truncated hessian2 string")
        self.pos = p
        return start

    def _string(self, tag: int) -> str:
        data = self._data
        units, final = self._string_chunk(tag)
        start = self._utf8_span(units)
        if final:
            raw = data[start : self.pos]
        else:
            parts = [data[start : self.pos]]
            while not final:
                units, final = self._string_chunk(self._tag())
                start = self._utf8_span(units)
                parts.append(data[start : self.pos])
            raw = b"".join(parts)
        if raw.isascii():
            return raw.decode("ascii")
        try:
            s = str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise Hessian2Error(f"bad UTF-8 in hessian2 string: {e.reason}") from None
        if b"\xed" in raw:  # CESU-8 surrogates: join the pairs, keep lone ones
            s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return s

    def _skip_string(self, tag: int) -> None:
        units, final = self._string_chunk(tag)
        self._utf8_span(units)
        while not final:
            units, final = self._string_chunk(self._tag())
            self._utf8_span(units)

    def _binary_chunk(self, tag: int) -> tuple[int, bool]:
        if 0x20 <= tag <= 0x2F:
            return tag - 0x20, True
        if 0x34 <= tag <= 0x37:
            return ((tag - 0x34) << 8) + self._u8(), True
        if tag == 0x42:
            return self._u16(), True
        if tag == 0x41:
            return self._u16(), False
        raise Hessian2Error(f"expected a binary chunk, got tag 0x{tag:02x}")

    def _binary(self, tag: int, build: bool) -> bytes | None:
        parts = []
        final = False
        while not final:
            n, final = self._binary_chunk(tag)
            p = self._take(n)
            if build:
                parts.append(self._data[p : p + n])
            if not final:
                tag = self._tag()
        return b"".join(parts) if build else None

    # -- tables -----------------------------------------------------------------------------

    def _type(self) -> None:
        """A list or map type: a string (a new entry of the type table) or an int (an entry)."""
        tag = self._tag()
        if tag in _STRING_TAGS:
            self._skip_string(tag)
            self._types += 1
            return
        ref = self._int(tag)
        if not 0 <= ref < self._types:
            raise Hessian2Error(f"type reference {ref} out of range ({self._types} types)")

    def _class_def(self) -> None:
        name = self.read_string()
        n = self._count("class field count")
        fields = tuple(self.read_string() for _ in range(n))
        self._classes.append((name, fields))

    def _class_ref(self, tag: int) -> tuple[str, tuple[str, ...]]:
        idx = tag - 0x60 if tag != 0x4F else self._int(self._tag())
        if not 0 <= idx < len(self._classes):
            raise Hessian2Error(f"class reference {idx} out of range ({len(self._classes)})")
        return self._classes[idx]

    def _ref(self) -> int:
        idx = self._int(self._tag())
        if not 0 <= idx < len(self._refs):
            raise Hessian2Error(f"value reference {idx} out of range ({len(self._refs)})")
        return idx

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > self._max_depth:
            raise Hessian2Error(f"hessian2 value nested deeper than {self._max_depth}")

    def _at_z(self) -> bool:
        """Consumes a 'Z' terminator if it is next."""
        p = self.pos
        if p >= self._end:
            raise Hessian2Error("truncated hessian2 list or map: no 'Z'")
        if self._data[p] == 0x5A:
            self.pos = p + 1
            return True
        return False

    # -- values -----------------------------------------------------------------------------

    def _value_tag(self) -> int:
        tag = self._tag()
        while tag == 0x43:  # 'C': class definitions precede the value that uses them
            self._class_def()
            tag = self._tag()
        return tag

    def _value(self) -> object:
        tag = self._value_tag()
        if tag in _STRING_TAGS:
            return self._string(tag)
        if tag >= 0x80:
            return self._int(tag) if tag < 0xD8 else self._long(tag)
        if tag == 0x4E:
            return None
        if tag == 0x54:
            return True
        if tag == 0x46:
            return False
        if tag == 0x49:
            return self._i32()
        if tag == 0x4C or 0x38 <= tag <= 0x3F or tag == 0x59:
            return self._long(tag)
        if 0x5B <= tag <= 0x5F or tag == 0x44:
            return self._double(tag)
        if tag == 0x48 or tag == 0x4D:
            return self._map(tag)
        if 0x55 <= tag <= 0x58 or 0x70 <= tag <= 0x7F:
            return self._list(tag)
        if 0x60 <= tag <= 0x6F or tag == 0x4F:
            return self._object(tag)
        if tag == 0x51:
            idx = self._ref()
            obj = self._refs[idx]
            return UnresolvedRef(idx) if obj is _SKIPPED else obj
        if 0x20 <= tag <= 0x2F or 0x34 <= tag <= 0x37 or tag == 0x41 or tag == 0x42:
            return self._binary(tag, True)
        if tag == 0x4A or tag == 0x4B:
            return self._date(tag)
        raise Hessian2Error(f"unexpected hessian2 tag 0x{tag:02x}")

    def _list_count(self, tag: int) -> int | None:
        """Reads a list's type and length; None for a variable-length list."""
        if tag == 0x55:
            self._type()
            return None
        if tag == 0x56:
            self._type()
            return self._count("list length")
        if tag == 0x57:
            return None
        if tag == 0x58:
            return self._count("list length")
        if tag <= 0x77:
            self._type()
            n = tag - 0x70
        else:
            n = tag - 0x78
        if n > self._end - self.pos:
            raise Hessian2Error(f"list length {n} exceeds the {self._end - self.pos} bytes left")
        return n

    def _list(self, tag: int) -> list[Any]:
        self._enter()
        out: list[Any] = []
        self._refs.append(out)
        n = self._list_count(tag)
        if n is None:
            while not self._at_z():
                out.append(self._value())
        else:
            for _ in range(n):
                out.append(self._value())
        self._depth -= 1
        return out

    def _map(self, tag: int) -> dict[Any, Any]:
        self._enter()
        out: dict[Any, Any] = {}
        self._refs.append(out)
        if tag == 0x4D:
            self._type()
        while not self._at_z():
            key = self._value()
            value = self._value()
            try:
                out[key] = value
            except TypeError:
                raise Hessian2Error(f"unhashable hessian2 map key {type(key).__name__}") from None
        self._depth -= 1
        return out

    def _object(self, tag: int) -> HessianObject:
        self._enter()
        name, fields = self._class_ref(tag)
        if len(fields) > self._end - self.pos:
            raise Hessian2Error("object fields exceed the bytes left")
        obj = HessianObject(name)
        self._refs.append(obj)
        values = obj.fields
        for f in fields:
            values[f] = self._value()
        self._depth -= 1
        return obj

    def _skip(self) -> None:
        tag = self._value_tag()
        if tag in _STRING_TAGS:
            self._skip_string(tag)
        elif tag >= 0x80:
            if 0xC0 <= tag <= 0xCF or 0xF0 <= tag:
                self._take(1)
            elif 0xD0 <= tag <= 0xD7:
                self._take(2)
        elif tag == 0x4E or tag == 0x54 or tag == 0x46 or tag == 0x5B or tag == 0x5C:
            pass
        elif tag == 0x49 or tag == 0x59 or tag == 0x5F or tag == 0x4B:
            self._take(4)
        elif tag == 0x4C or tag == 0x44 or tag == 0x4A:
            self._take(8)
        elif 0x38 <= tag <= 0x3F:
            self._take(2)
        elif tag == 0x5D:
            self._take(1)
        elif tag == 0x5E:
            self._take(2)
        elif tag == 0x48 or tag == 0x4D:
            self._enter()
            self._refs.append(_SKIPPED)
            if tag == 0x4D:
                self._type()
            while not self._at_z():
                self._skip()
                self._skip()
            self._depth -= 1
        elif 0x55 <= tag <= 0x58 or 0x70 <= tag <= 0x7F:
            self._enter()
            self._refs.append(_SKIPPED)
            n = self._list_count(tag)
            if n is None:
                while not self._at_z():
                    self._skip()
            else:
                for _ in range(n):
                    self._skip()
            self._depth -= 1
        elif 0x60 <= tag <= 0x6F or tag == 0x4F:
            self._enter()
            _, fields = self._class_ref(tag)
            if len(fields) > self._end - self.pos:
                raise Hessian2Error("object fields exceed the bytes left")
            self._refs.append(_SKIPPED)
            for _ in range(len(fields)):
                self._skip()
            self._depth -= 1
        elif tag == 0x51:
            self._ref()
        elif 0x20 <= tag <= 0x2F or 0x34 <= tag <= 0x37 or tag == 0x41 or tag == 0x42:
            self._binary(tag, False)
        else:
            raise Hessian2Error(f"unexpected hessian2 tag 0x{tag:02x}")


def decode(data: bytes | bytearray | memoryview, **limits: int) -> object:
    """Decodes exactly one value that fills ``data``."""
    r = Hessian2Reader(data, **limits)
    value = r.read()
    if not r.at_end:
        raise Hessian2Error(f"{r.remaining} trailing bytes after the hessian2 value")
    return value


# -- writer ---------------------------------------------------------------------------------

_CHUNK = 0x8000
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _pair(m: re.Match[str]) -> str:
    c = ord(m.group()) - 0x10000
    return chr(0xD800 | (c >> 10)) + chr(0xDC00 | (c & 0x3FF))


def encode_null() -> bytes:
    return b"N"


def encode_bool(value: bool) -> bytes:
    return b"T" if value else b"F"


def encode_int(value: int) -> bytes:
    """A 32-bit int in its shortest form."""
    if -0x10 <= value <= 0x2F:
        return bytes((value + 0x90,))
    if -0x800 <= value <= 0x7FF:
        return bytes((0xC8 + (value >> 8), value & 0xFF))
    if -0x40000 <= value <= 0x3FFFF:
        return bytes((0xD4 + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return b"I" + _I32.pack(value)
    raise ValueError(f"{value} does not fit a hessian2 int")


def encode_long(value: int) -> bytes:
    """A 64-bit long in its shortest form."""
    if -0x08 <= value <= 0x0F:
        return bytes((value + 0xE0,))
    if -0x800 <= value <= 0x7FF:
        return bytes((0xF8 + (value >> 8), value & 0xFF))
    if -0x40000 <= value <= 0x3FFFF:
        return bytes((0x3C + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return b"Y" + _I32.pack(value)
    return b"L" + _I64.pack(value)


def _final_chunk_head(units: int) -> bytes:
    if units <= 0x1F:
        return bytes((units,))
    if units <= 0x3FF:
        return bytes((0x30 + (units >> 8), units & 0xFF))
    return b"S" + _U16.pack(units)


def encode_string(value: str) -> bytes:
    """A string, as Java writes it: lengths in UTF-16 units, supplementary characters as CESU-8
    surrogate pairs (Java's reader rejects 4-byte UTF-8), chunks of 0x8000 units that never
    split a pair."""
    if value.isascii():
        raw = value.encode("ascii")
        if len(raw) <= _CHUNK:
            return _final_chunk_head(len(raw)) + raw
        units_str = None
    else:
        units_str = _ASTRAL.sub(_pair, value)
        if len(units_str) <= _CHUNK:
            return _final_chunk_head(len(units_str)) + units_str.encode("utf-8", "surrogatepass")
    out = bytearray()
    s = value if units_str is None else units_str
    i = 0
    while len(s) - i > _CHUNK:
        n = _CHUNK
        if "\ud800" <= s[i + n - 1] <= "\udbff":  # do not end a chunk on a high surrogate
            n -= 1
        out += b"R" + _U16.pack(n) + s[i : i + n].encode("utf-8", "surrogatepass")
        i += n
    tail = s[i:]
    out += _final_chunk_head(len(tail)) + tail.encode("utf-8", "surrogatepass")
    return bytes(out)


def encode_string_map(value: Mapping[str, str | None]) -> bytes:
    """An untyped map ('H') of string keys to string (or null) values."""
    out = bytearray(b"H")
    for k, v in value.items():
        out += encode_string(k)
        out += b"N" if v is None else encode_string(v)
    out += b"Z"
    return bytes(out)
