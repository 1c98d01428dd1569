"""Durations written as MOSN and Go write them: ``"3s"``, ``"250ms"``, ``"1m30s"``."""

from __future__ import annotations

import re
from decimal import Decimal

# Nanoseconds per unit: sums are exact in integers, and the one division to seconds at the
# end makes "11s370ms" and "11370ms" the same float.
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_NS = 2**63 - 1  # Go's time.Duration range


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ``ValueError`` naming the bad text.

    Follows Go's ``time.ParseDuration``: one or more decimal numbers each with a unit,
    ``"0"`` alone allowed, no sign (a negative timeout means nothing here).
    """
    bad = ValueError(f"expected a duration such as '3s' or '250ms', got {text!r}")
    if text == 0 and type(text) is int:  # MOSN's JSON numbers are nanoseconds: 0 is 0 in any unit
        return 0.0
    if not isinstance(text, str):
        raise bad
    s = text.strip()
    if s == "0":
        return 0.0
    pos = 0
    total_ns = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        total_ns += int(Decimal(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise bad
    if total_ns > _MAX_NS:
        raise ValueError(f"duration out of range (at most about 292 years), got {text!r}")
    return total_ns / 1e9


def format_duration(seconds: float) -> str:
    """A string in one unit that ``parse_duration`` reads back to ``seconds``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms", "us"):
        if ns % _UNIT_NS[unit] == 0:
            return f"{ns // _UNIT_NS[unit]}{unit}"
    return f"{ns}ns"
