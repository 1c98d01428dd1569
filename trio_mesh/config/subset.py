"""Subset load balancing: a cluster's ``lb_subset_config`` (MOSN's keys; Envoy's through CDS)
and a route's ``metadata_match``. Pure data and its checks; the balancer is
``upstream/subset.py``."""

from __future__ import annotations

import enum
from typing import Any

import attrs
from attrs import frozen

from .errors import at


class FallbackPolicy(enum.Enum):
    NO_FALLBACK = "NO_FALLBACK"
    ANY_ENDPOINT = "ANY_ENDPOINT"
    DEFAULT_SUBSET = "DEFAULT_SUBSET"


#: MOSN writes the policy as a number (``fall_back_policy: 1``).
_MOSN_POLICIES = (
    FallbackPolicy.NO_FALLBACK,
    FallbackPolicy.ANY_ENDPOINT,
    FallbackPolicy.DEFAULT_SUBSET,
)

#: The metadata namespaces a ``filter_metadata`` match may use (MOSN's and Envoy's).
LB_NAMESPACES = ("mosn.lb", "envoy.lb")


@frozen(kw_only=True)
class LbSubsetConfig:
    """``fall_back_policy`` (MOSN's, a number 0/1/2 or the name) or ``fallback_policy``
    (Envoy's name): what a request whose match has no subset gets."""

    fall_back_policy: Any = None
    fallback_policy: Any = None
    default_subset: dict[str, Any] = attrs.field(factory=dict)
    subset_selectors: tuple[tuple[str, ...], ...] = ()

    def policy(self) -> FallbackPolicy:
        """The fallback policy (``check`` has refused anything else)."""
        return parse_policy(self.fallback_policy, self.fall_back_policy) or (
            FallbackPolicy.NO_FALLBACK
        )

    def check(self, path: str) -> list[str]:
        """Errors in the values, each naming its key under ``path``."""
        errors = []
        for key in ("fall_back_policy", "fallback_policy"):
            value = getattr(self, key)
            if value is not None and parse_policy(value, None) is None:
                errors.append(
                    at(
                        f"{path}.{key}",
                        "expected NO_FALLBACK, ANY_ENDPOINT, DEFAULT_SUBSET (or 0, 1, 2),"
                        f" got {value!r}",
                    )
                )
        for i, sel in enumerate(self.subset_selectors):
            if not sel or len(set(sel)) != len(sel) or not all(sel):
                errors.append(
                    at(f"{path}.subset_selectors[{i}]", f"expected distinct keys, got {list(sel)}")
                )
        for k, v in self.default_subset.items():
            if isinstance(v, (dict, list)):
                errors.append(at(f"{path}.default_subset.{k}", f"expected a value, got {v!r}"))
        return errors


def parse_policy(value: Any, other: Any) -> FallbackPolicy | None:
    """``value`` (else ``other``) as a policy; ``None`` when neither is one."""
    for v in (value, other):
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int) and 0 <= v < len(_MOSN_POLICIES):
            return _MOSN_POLICIES[v]
        if isinstance(v, str) and v.upper() in FallbackPolicy.__members__:
            return FallbackPolicy[v.upper()]
    return None


MatchKey = tuple[tuple[str, str], ...]


def match_values(match: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``metadata_match`` as its key/value pairs: MOSN's flat map or
    ``{filter_metadata: {mosn.lb|envoy.lb: {...}}}``; ``None``: no match."""
    if not match:
        return None
    fm = match.get("filter_metadata")
    if isinstance(fm, dict):
        for ns in LB_NAMESPACES:
            inner = fm.get(ns)
            if isinstance(inner, dict):
                return inner or None
        return None
    return match


def check_match(match: dict[str, Any] | None, path: str) -> list[str]:
    """Errors in a ``metadata_match`` (values must be scalars)."""
    if not match:
        return []
    fm = match.get("filter_metadata")
    if fm is not None:
        if not isinstance(fm, dict) or not any(ns in fm for ns in LB_NAMESPACES):
            return [
                at(f"{path}.filter_metadata", f"expected a map with {' or '.join(LB_NAMESPACES)}")
            ]
        return check_match(match_values(match), f"{path}.filter_metadata")
    return [
        at(f"{path}.{k}", f"expected a value, got {v!r}")
        for k, v in match.items()
        if isinstance(v, (dict, list)) or v is None
    ]


def match_key(values: dict[str, Any]) -> MatchKey:
    """The subset table's key for these key/value pairs: sorted by key, values as text (MOSN's
    metadata is strings; a YAML ``v: 2`` matches ``"2"``)."""
    return tuple(sorted((str(k), _text(v)) for k, v in values.items()))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # a protobuf Struct's numbers are floats: 2.0 matches 2
    return str(v)
