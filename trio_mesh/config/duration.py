"""Durations written as MOSN and Go write them: ``"3s"``, ``"250ms"``, ``"1m30s"``."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ``ValueError`` naming the bad text.

    Follows Go's ``time.ParseDuration``: one or more decimal numbers each with a unit,
    ``"0"`` alone allowed, no sign (a negative timeout means nothing here).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '3s' or '250ms', got {text!r}")
    s = text.strip()
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"expected a duration such as '3s' or '250ms', got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact string ``parse_duration`` reads back to ``seconds``."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        n = seconds / scale
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{round(n)}{unit}"
    return f"{round(seconds * 1e9)}ns"
