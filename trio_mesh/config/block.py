"""Structuring a block that a configuration carries as a free mapping (a metrics sink's
``config``, an ``extends`` entry's ``config``): the same key matching, errors with paths and
warnings as the rest of the configuration."""

from __future__ import annotations

from typing import Any, TypeVar

from .converter import converter, structure_errors
from .errors import at
from .normalize import Report, normalize

T = TypeVar("T")


def structure_block(raw: Any, cls: type[T], path: str) -> tuple[T | None, Report]:
    """``raw`` (a mapping, or ``None`` for an empty one) as ``cls``; ``None`` and the errors
    at ``path`` when it does not structure."""
    report = Report()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        report.errors.append(at(path, f"expected a mapping, got {raw!r}"))
        return None, report
    normalized = normalize(raw, cls, path, report)
    try:
        value = converter.structure(normalized, cls)
    except Exception as exc:  # every structuring error becomes a path line
        report.errors += [f"{path}.{line}" for line in structure_errors(exc)]
        return None, report
    return value, report
