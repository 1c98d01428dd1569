"""Key matching before structuring: MOSN's Go loader matches JSON keys case-insensitively.

Walks the raw document along the attrs classes, renames each key to its field, reports unknown
keys as errors, known-but-pending MOSN keys as warnings, and refused MOSN keys (security or
access, ``config.refused``) as errors while their value turns them on, all with their paths.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import attrs

from .errors import at, join_path
from .filter_configs import filter_config_class
from .model import FilterConfig, Listener
from .routes import PerFilterConfig
from .scalars import Address

# attrs classes written as one scalar in files ("host:port"): their hooks parse them whole.
_LEAVES = (Address,)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[str, Any, str | None]]:
    attrs.resolve_types(cls)
    return {
        f.name.lower(): (f.name, f.type, f.metadata.get("refers_to")) for f in attrs.fields(cls)
    }


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        #: ``(kind, path, name)`` of every field marked ``cluster_ref()`` or ``router_ref()``,
        #: checked after the walk so that a wrong reference is reported even when other
        #: values fail to structure.
        self.refs: list[tuple[str, str, str]] = []


def normalize(data: Any, tp: Any, path: str, report: Report) -> Any:
    """Return ``data`` with every mapping's keys renamed to the fields of ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return data if data is None or len(inner) != 1 else normalize(data, inner[0], path, report)
    if origin in (tuple, list) and isinstance(data, list):
        (item_tp, *_) = typing.get_args(tp)
        return [normalize(x, item_tp, join_path(path, i), report) for i, x in enumerate(data)]
    if origin is dict and isinstance(data, dict):
        _, value_tp = typing.get_args(tp)
        if attrs.has(value_tp):
            return {k: normalize(v, value_tp, f"{path}[{k!r}]", report) for k, v in data.items()}
        return data
    if tp is PerFilterConfig and isinstance(data, dict):
        return _normalize_per_filter(data, path, report)
    if isinstance(tp, type) and attrs.has(tp) and tp not in _LEAVES and isinstance(data, dict):
        out = _normalize_class(data, tp, path, report)
        if issubclass(tp, FilterConfig):
            _normalize_filter_config(out, tp, path, report)
        if tp is Listener:
            _normalize_listener(out, path, report)
        return out
    return data


def _normalize_class(data: dict, cls: type, path: str, report: Report) -> dict:
    fields = _fields(cls)
    pending: frozenset[str] = getattr(cls, "MOSN_PENDING", frozenset())
    refusals: dict[str, Any] = getattr(cls, "MOSN_REFUSED", {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        lowered = str(key).lower()
        known = lowered in fields or lowered in pending or lowered in refusals
        key_path = join_path(path, lowered if known else str(key))
        if lowered in fields:
            name, field_tp, refers_to = fields[lowered]
            if name in out:
                report.errors.append(at(key_path, f"duplicate key (also given as {name!r})"))
                continue
            if refers_to is not None and isinstance(value, str):
                report.refs.append((refers_to, key_path, value))
            out[name] = normalize(value, field_tp, key_path, report)
        elif lowered in refusals:
            turns_on, reason = refusals[lowered]
            if turns_on(value):
                report.errors.append(at(key_path, reason))
        elif lowered in pending:
            report.warnings.append(at(key_path, "known MOSN key, not implemented yet: ignored"))
        else:
            names = ", ".join(sorted(fields))
            report.errors.append(at(key_path, f"unknown key (known keys: {names})"))
    return out


def _normalize_filter_config(out: dict, cls: type[FilterConfig], path: str, report: Report) -> None:
    ftype = out.get("type")
    if ftype in getattr(cls, "MOSN_PENDING_TYPES", ()):
        report.warnings.append(
            at(join_path(path, "type"), f"{ftype}: known MOSN filter, not implemented yet: ignored")
        )
    if not isinstance(ftype, str) or not isinstance(out.get("config"), dict):
        return
    try:
        config_cls = filter_config_class(cls.KIND, ftype)  # type: ignore[arg-type]
    except KeyError:
        return  # the converter reports the unknown type with the known ones
    if config_cls is not None:
        out["config"] = normalize(out["config"], config_cls, join_path(path, "config"), report)


def _normalize_per_filter(data: dict, path: str, report: Report) -> dict:
    """Each value is normalized as its filter type's config (unknown types: the converter)."""
    out = {}
    for name, value in data.items():
        try:
            config_cls = filter_config_class("stream", str(name))
        except KeyError:
            config_cls = None
        if config_cls is not None and isinstance(value, dict) and value != {"disabled": True}:
            value = normalize(value, config_cls, join_path(path, str(name)), report)
        out[name] = value
    return out


def _normalize_listener(out: dict, path: str, report: Report) -> None:
    """MOSN's listener defaults and values it has that trio-mesh does not."""
    if "name" not in out and isinstance(out.get("address"), str):
        # MOSN names an unnamed listener by its address (pkg/server AddOrUpdateListener).
        out["name"] = out["address"]
    if isinstance(out.get("use_original_dst"), str):
        value = out.pop("use_original_dst")
        reason = (
            "tproxy (transparent proxying with IP_TRANSPARENT) is not supported;"
            " true (connections redirected with iptables REDIRECT) is"
            if value.strip().lower() == "tproxy"
            else f"expected true or false, got {value!r}"
        )
        report.errors.append(at(join_path(path, "use_original_dst"), reason))
