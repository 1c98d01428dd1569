"""The one cattrs converter of the configuration, with strict scalar hooks.

Structuring runs on data whose keys ``normalize`` has already matched to field names, so the
converter only checks values; its errors go through ``cattrs.transform_error``.
"""

from __future__ import annotations

import enum
from typing import Any

import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError

from . import values
from .filters import filter_config_class, known_filters
from .model import Address, Duration, FilterConfig, LogLevel, PositiveInt, Weight

converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)

for _tp, _parse in (
    (int, values.parse_int),
    (bool, values.parse_bool),
    (str, values.parse_str),
    (float, values.parse_float),
    (Duration, values.parse_duration_value),
    (Weight, values.parse_weight),
    (PositiveInt, values.parse_positive_int),
    (LogLevel, values.parse_log_level),
    (Address, values.parse_address),
):
    converter.register_structure_hook(_tp, lambda v, _t, _p=_parse: _p(v))


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, str):
        for member in cls:
            if member.value.upper() == value.upper():
                return member
    choices = ", ".join(m.value for m in cls)
    raise ValueError(f"expected one of {choices}, got {value!r}")


converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum
)


def _fail_at(cls: type, name: str, exc: Exception) -> ClassValidationError:
    exc.__notes__ = [
        *getattr(exc, "__notes__", []),
        AttributeValidationNote(f"Structuring {cls.__qualname__} @ {name}", name, Any),
    ]
    return ClassValidationError(f"While structuring {cls.__name__}", [exc], cls)


def _structure_filter(data: Any, cls: type[FilterConfig]) -> FilterConfig:
    """``{type, config}``: ``config`` is structured with the class its type registered."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping with 'type' and 'config', got {data!r}")
    kind = cls.KIND
    ftype = data.get("type")
    if ftype is None:
        raise _fail_at(cls, "type", KeyError("required field missing"))
    if not isinstance(ftype, str):
        raise _fail_at(cls, "type", ValueError(f"expected a string, got {ftype!r}"))
    try:
        config_cls = filter_config_class(kind, ftype)  # type: ignore[arg-type]
    except KeyError:
        known = ", ".join(known_filters(kind)) or "none"  # type: ignore[arg-type]
        raise _fail_at(
            cls, "type", ValueError(f"unknown {kind} filter type {ftype!r} (known: {known})")
        ) from None
    raw = data.get("config")
    if config_cls is None:
        if raw not in (None, {}):
            raise _fail_at(cls, "config", ValueError(f"filter {ftype!r} takes no config"))
        return cls(type=ftype, config=None)
    try:
        config = converter.structure({} if raw is None else raw, config_cls)
    except Exception as exc:
        raise _fail_at(cls, "config", exc) from None
    return cls(type=ftype, config=config)


converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, FilterConfig), _structure_filter
)


def format_exception(exc: BaseException, _type: Any) -> str:
    """The reason part of an error line; our parsers' messages are already sentences."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError):
        return str(exc)
    return cattrs.v.format_exception(exc, _type)


def structure_errors(exc: BaseException) -> list[str]:
    """``servers[0].listeners[1].address: expected host:port, got '80'`` lines."""
    lines = []
    for line in cattrs.transform_error(exc, path="$", format_exception=format_exception):
        reason, _, path = line.rpartition(" @ ")
        path = path.removeprefix("$").removeprefix(".")
        lines.append(f"{path}: {reason}" if path else reason)
    return lines
