"""The one cattrs converter of the configuration, with strict scalar hooks.

Structuring runs on data whose keys ``normalize`` has already matched to field names, so the
converter only checks values; its errors go through ``cattrs.transform_error``.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from . import values
from .filter_configs import Protocol, filter_config_class, unknown_filter
from .model import FilterConfig
from .observability import AdminConfig
from .routes import FILTER_DISABLED, PerFilterConfig
from .scalars import (
    Address,
    Duration,
    LogFormat,
    LogLevel,
    NonNegativeInt,
    PositiveInt,
    Weight,
)

converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)

for _tp, _parse in (
    (int, values.parse_int),
    (bool, values.parse_bool),
    (str, values.parse_str),
    (float, values.parse_float),
    (Duration, values.parse_duration_value),
    (Weight, values.parse_weight),
    (PositiveInt, values.parse_positive_int),
    (NonNegativeInt, values.parse_non_negative_int),
    (LogLevel, values.parse_log_level),
    (Address, values.parse_address),
    (LogFormat, values.parse_log_format),
):
    converter.register_structure_hook(_tp, lambda v, _t, _p=_parse: _p(v))


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, str):
        for member in cls:
            if member.value.upper() == value.upper():
                return member
    choices = ", ".join(m.value for m in cls)
    hint = ""
    if cls is Protocol and isinstance(value, str):
        # MOSN's Go plugin codecs are protocol names of their own; here a codec is Python.
        hint = (
            " (another RPC codec: X with extend_config.sub_protocol naming a codec registered"
            " in Python, see docs/xprotocol.md; MOSN's Go plugin codecs cannot run here)"
        )
    raise ValueError(f"expected one of {choices}, got {value!r}{hint}")


converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), _structure_enum
)


def _structure_sequence(value: Any, tp: Any) -> tuple:
    """``tuple[X, ...]`` from a list only: cattrs alone would take a string or a mapping
    as an iterable and report nonsense about its characters or keys."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    (item_tp, *_) = typing.get_args(tp)
    out, errors = [], []
    for i, item in enumerate(value):
        try:
            out.append(converter.structure(item, item_tp))
        except Exception as exc:
            exc.__notes__ = [
                *getattr(exc, "__notes__", []),
                IterableValidationNote(f"Structuring {tp} @ index {i}", i, item_tp),
            ]
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {tp}", errors, tp)
    return tuple(out)


converter.register_structure_hook_func(lambda t: typing.get_origin(t) is tuple, _structure_sequence)


def _mapping_only(cls: type[Any]) -> Callable[[Any, type], Any]:
    """attrs classes from a mapping only (cattrs would read attributes of any object)."""
    inner = make_dict_structure_fn(cls, converter, _cattrs_detailed_validation=True)

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return inner(value, cls)

    return structure


converter.register_structure_hook_factory(
    lambda t: (
        attrs.has(t)
        and not issubclass(t, FilterConfig)
        and t is not Address
        and t is not PerFilterConfig
    ),
    _mapping_only,
)


def _structure_admin(value: Any, _: type) -> AdminConfig:
    if isinstance(value, str):  # the short form: "127.0.0.1:34901"
        return AdminConfig(address=values.parse_address(value))
    return _mapping_only(AdminConfig)(value, AdminConfig)


converter.register_structure_hook(AdminConfig, _structure_admin)


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
        problem = ValueError(unknown_filter(kind, ftype))  # type: ignore[arg-type]
        raise _fail_at(cls, "type", problem) from None
    raw = data.get("config")
    if raw is not None and not isinstance(raw, dict):
        raise _fail_at(cls, "config", ValueError(f"expected a mapping, got {raw!r}"))
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


def _structure_per_filter(data: Any, _: type) -> PerFilterConfig:
    """``{filter type: config}``; ``{disabled: true}`` turns that filter off on the route."""
    if isinstance(data, PerFilterConfig):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of stream filter type to config, got {data!r}")
    out: dict[str, Any] = {}
    for name, raw in data.items():
        try:
            config_cls = filter_config_class("stream", name)
        except KeyError:
            problem = ValueError(unknown_filter("stream", str(name)))
            raise _fail_at(PerFilterConfig, str(name), problem) from None
        if raw is not None and not isinstance(raw, dict):
            problem = ValueError(f"expected a mapping, got {raw!r}")
            raise _fail_at(PerFilterConfig, str(name), problem)
        if raw == {"disabled": True}:
            out[name] = FILTER_DISABLED
            continue
        if config_cls is None:
            if raw not in (None, {}):
                raise _fail_at(
                    PerFilterConfig, str(name), ValueError(f"filter {name!r} takes no config")
                )
            out[name] = None
            continue
        try:
            out[name] = converter.structure({} if raw is None else raw, config_cls)
        except Exception as exc:
            raise _fail_at(PerFilterConfig, str(name), exc) from None
    return PerFilterConfig(out)


converter.register_structure_hook(PerFilterConfig, _structure_per_filter)


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
