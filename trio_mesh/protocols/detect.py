"""Protocol detection from a connection's first bytes (MOSN's protocol auto-detection).

Each protocol registers a matcher: a pure function from the first bytes of a connection to
MATCH, NEED_MORE or NO_MATCH. `detect()` asks the candidates in priority order (highest first,
ties in registration order) and the first one that does not say NO_MATCH decides: MATCH names the
protocol, NEED_MORE means wait for more bytes. So a higher-priority protocol that might still match
holds back a lower one that already does: "PRI " is an HTTP/1 method and a space, but also the
start of the HTTP/2 preface.

A matcher needs at most MAX_DETECT_BYTES bytes; it is given no more than that, and a NEED_MORE at
that length counts as NO_MATCH, so a connection never buffers more than MAX_DETECT_BYTES waiting.
RPC codecs register themselves here (bolt: first byte 0x01 or 0x02; dubbo: 0xda 0xbb).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_DETECT_BYTES",
    "Detection",
    "UnknownProtocol",
    "detect",
    "match_http1",
    "match_http2",
    "register_protocol",
    "registered_protocols",
    "unregister_protocol",
]

#: The most bytes any matcher needs: the length of the HTTP/2 connection preface.
MAX_DETECT_BYTES = 24


class Detection(enum.Enum):
    MATCH = "match"
    NEED_MORE = "need_more"
    NO_MATCH = "no_match"


Matcher = Callable[[bytes], Detection]


class UnknownProtocol(Exception):
    """No candidate protocol can match the bytes a connection started with."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__(prefix)
        self.prefix = prefix

    def __str__(self) -> str:
        return f"unknown protocol; first bytes {self.prefix!r}"


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    matcher: Matcher
    priority: int


# kept sorted by priority (highest first); registration order among equals (sort is stable)
_registry: list[_Entry] = []


def register_protocol(name: str, matcher: Matcher, *, priority: int = 0) -> None:
    """Add a protocol to detection. Registering a name again with the same matcher only updates
    its priority; another matcher under a taken name is a ValueError."""
    if not name:
        raise ValueError("protocol name must not be empty")
    for i, entry in enumerate(_registry):
        if entry.name == name:
            if entry.matcher is not matcher:
                raise ValueError(f"protocol {name!r} is already registered")
            del _registry[i]
            break
    _registry.append(_Entry(name, matcher, priority))
    _registry.sort(key=lambda e: -e.priority)


def unregister_protocol(name: str) -> None:
    """Remove a protocol from detection (KeyError if it is not registered)."""
    for i, entry in enumerate(_registry):
        if entry.name == name:
            del _registry[i]
            return
    raise KeyError(name)


def registered_protocols() -> list[str]:
    """Registered names in the order `detect` asks them."""
    return [e.name for e in _registry]


def detect(prefix: bytes, candidates: Iterable[str] | None = None) -> str | None:
    """The protocol of a connection that started with `prefix`, or None if more bytes are needed
    (never once `prefix` has MAX_DETECT_BYTES bytes). `candidates` limits the protocols asked
    (names must be registered). Raises UnknownProtocol if none can match."""
    if candidates is None:
        entries = _registry
    else:
        wanted = set(candidates)
        entries = [e for e in _registry if e.name in wanted]
        if len(entries) != len(wanted):
            unknown = wanted - {e.name for e in entries}
            raise ValueError(f"unregistered protocol(s): {', '.join(sorted(unknown))}")
    head = bytes(prefix[:MAX_DETECT_BYTES])
    complete = len(head) >= MAX_DETECT_BYTES
    for entry in entries:
        result = entry.matcher(head)
        if result is Detection.MATCH:
            return entry.name
        if result is Detection.NEED_MORE and not complete:
            return None
    raise UnknownProtocol(head)


# -- built-in matchers ----------------------------------------------------------------------

# same bytes as trio_mesh.protocols.http2.PREFACE; not imported to keep detection free of h2
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_METHOD = 20


def match_http2(prefix: bytes) -> Detection:
    """The HTTP/2 connection preface (prior knowledge), all 24 bytes of it."""
    n = min(len(prefix), len(_H2_PREFACE))
    if prefix[:n] != _H2_PREFACE[:n]:
        return Detection.NO_MATCH
    return Detection.MATCH if n == len(_H2_PREFACE) else Detection.NEED_MORE


def match_http1(prefix: bytes) -> Detection:
    """An HTTP/1 request line's start: a method of 1 to 20 letters A-Z, then a space."""
    for i, byte in enumerate(prefix[: _MAX_METHOD + 1]):
        if byte == 0x20:  # space
            return Detection.MATCH if i else Detection.NO_MATCH
        if not 0x41 <= byte <= 0x5A or i == _MAX_METHOD:  # not A-Z, or a 21st letter
            return Detection.NO_MATCH
    return Detection.NEED_MORE


# HTTP/2 first: its preface also reads as an HTTP/1 method ("PRI") and a space
register_protocol("Http2", match_http2, priority=10)
register_protocol("Http1", match_http1, priority=0)
