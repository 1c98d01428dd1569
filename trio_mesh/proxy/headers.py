"""The router's view of an HTTP request's headers (HTTP/1 and HTTP/2 alike)."""

from __future__ import annotations

from collections.abc import Callable


def header_getter(headers: list[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """``get(name)``: the first value of header ``name`` (lower-case), or ``None``. The
    router asks only for the names its routes match on, so nothing is decoded up front."""

    def get(name: str) -> str | None:
        key = name.encode("latin-1")
        for n, v in headers:
            if n == key:
                return v.decode("latin-1")
        return None

    return get
