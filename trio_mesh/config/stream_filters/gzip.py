"""Config of the `gzip` stream filter: responses compressed for clients that accept gzip.

MOSN's keys (``gzip_level``, ``content_length``, ``content_types``), with Envoy's compressor
defaults where MOSN has none worth keeping (MOSN compresses only ``text/html`` by default).
"""

from __future__ import annotations

from attrs import field, frozen

from ..routes import Problem, _raise

#: Envoy's compressor filter's default list (media types, without parameters).
DEFAULT_CONTENT_TYPES: tuple[str, ...] = (
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "application/json",
    "application/x-json",
    "application/xml",
    "application/xhtml+xml",
    "image/svg+xml",
)
DEFAULT_LEVEL = 6


def _lower_all(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in values)


@frozen(kw_only=True)
class GzipConfig:
    """``gzip_level``: 1 (fastest) to 9 (smallest); 0 means the default, 6, as in MOSN.
    ``content_length``: responses that say they are shorter than this are sent as they are
    (a response of unknown length is compressed). ``content_types``: media types compressed
    (parameters such as ``charset`` are ignored when matching); a response without a
    Content-Type is compressed too, as Envoy does."""

    gzip_level: int = DEFAULT_LEVEL
    content_length: int = 30
    content_types: tuple[str, ...] = field(default=DEFAULT_CONTENT_TYPES, converter=_lower_all)

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not 0 <= self.gzip_level <= 9:
            problems.append((("gzip_level",), f"expected 0 to 9, got {self.gzip_level}"))
        if self.content_length < 0:
            problems.append(
                (("content_length",), f"expected 0 or more bytes, got {self.content_length}")
            )
        for i, media in enumerate(self.content_types):
            kind, slash, sub = media.partition("/")
            if not slash or not kind or not sub or ";" in media or " " in media:
                reason = f"expected a media type such as text/html, got {media!r}"
                problems.append((("content_types", i), reason))
        _raise(problems)

    @property
    def level(self) -> int:
        """The zlib level to use (0 in a file means the default)."""
        return self.gzip_level or DEFAULT_LEVEL
