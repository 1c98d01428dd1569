"""A cluster's ``outlier_detection``: Envoy's keys, names and defaults (the same in YAML and
through CDS). Pure data and its checks; the detector is ``upstream/outlier.py``."""

from __future__ import annotations

from typing import ClassVar

from attrs import frozen

from .errors import at
from .scalars import Duration, NonNegativeInt

#: Envoy's success-rate and failure-percentage detection: loaded, not enforced (a warning).
UNENFORCED_KEYS = frozenset(
    {
        "success_rate_minimum_hosts",
        "success_rate_request_volume",
        "success_rate_stdev_factor",
        "enforcing_success_rate",
        "enforcing_local_origin_success_rate",
        "failure_percentage_threshold",
        "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume",
        "enforcing_failure_percentage",
        "enforcing_failure_percentage_local_origin",
    }
)
_PERCENTS = (
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
)


@frozen(kw_only=True)
class OutlierDetection:
    """Consecutive-failure ejection. A threshold of 0 never ejects (Envoy: the check is off)."""

    #: Any 5xx (and, without the split, a connect failure, reset or timeout as 503/504).
    consecutive_5xx: NonNegativeInt = NonNegativeInt(5)
    #: 502, 503, 504 (the same local-origin failures without the split).
    consecutive_gateway_failure: NonNegativeInt = NonNegativeInt(5)
    #: Connect failures, resets, timeouts: counted apart only with the split.
    consecutive_local_origin_failure: NonNegativeInt = NonNegativeInt(5)
    split_external_local_origin_errors: bool = False
    interval: Duration = Duration(10.0)
    base_ejection_time: Duration = Duration(30.0)
    #: ``None``: Envoy's default, 300s or ``base_ejection_time`` when that is longer.
    max_ejection_time: Duration | None = None
    max_ejection_percent: NonNegativeInt = NonNegativeInt(10)
    enforcing_consecutive_5xx: NonNegativeInt = NonNegativeInt(100)
    enforcing_consecutive_gateway_failure: NonNegativeInt = NonNegativeInt(0)
    enforcing_consecutive_local_origin_failure: NonNegativeInt = NonNegativeInt(100)

    MOSN_PENDING: ClassVar[frozenset[str]] = UNENFORCED_KEYS

    def check(self, path: str) -> list[str]:
        """Errors in the values, each naming its key under ``path``."""
        errors = [
            at(f"{path}.{key}", f"expected a percentage 0..100, got {getattr(self, key)}")
            for key in _PERCENTS
            if getattr(self, key) > 100
        ]
        for key in ("interval", "base_ejection_time"):
            if getattr(self, key) <= 0:
                errors.append(at(f"{path}.{key}", "expected a positive duration"))
        if self.max_ejection_time is not None and self.max_ejection_time < self.base_ejection_time:
            errors.append(
                at(
                    f"{path}.max_ejection_time",
                    f"{self.max_ejection_time:g}s is less than base_ejection_time"
                    f" {self.base_ejection_time:g}s",
                )
            )
        return errors

    def ejection_time(self, times: int) -> float:
        """How long the ``times``-th ejection in a row lasts (Envoy's backoff, capped)."""
        cap: float = self.max_ejection_time or max(300.0, self.base_ejection_time)
        return min(self.base_ejection_time * times, cap)
