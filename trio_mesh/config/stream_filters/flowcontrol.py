"""Config of the `flowcontrol` stream filter: local rate limiting with token buckets.

Two shapes, one of them per filter entry:

* Envoy's ``local_ratelimit`` token bucket: ``max_tokens``, ``tokens_per_fill``,
  ``fill_interval``: one bucket for every request of the entry (of the listener, or of the
  route whose ``per_filter_config`` gives it).
* MOSN's ``flowControlFilter`` (Sentinel) shape: ``rules`` of ``{resource, threshold,
  statIntervalInMs}``, one bucket per rule, a request counted against the rule whose
  ``resource`` equals its key (``limit_key_type``: ``PATH``, ``URI`` or ``ARG``); requests no
  rule names pass. ``action: {status, body}`` is the refusal, ``global_switch: false`` turns
  the filter off. Only Sentinel's "reject above a QPS threshold" rule is implemented.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from attrs import frozen

from ..refused import Refusal, given
from ..routes import Problem, _raise
from ..scalars import Duration, PositiveInt

#: MOSN's default refusal text.
DEFAULT_BODY = "current request is limited"


class LimitKeyType(enum.Enum):
    """What a request is counted by in the ``rules`` shape (MOSN's ``limit_key_type``)."""

    PATH = "PATH"  # the path without the query
    URI = "URI"  # the path with the query
    ARG = "ARG"  # the query alone


@frozen(kw_only=True)
class FlowControlAction:
    """MOSN's ``action``: the reply to a refused request (HTTP status and body)."""

    status: int = 429
    body: str = DEFAULT_BODY

    def __attrs_post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            _raise([(("status",), f"expected an HTTP status 200-599, got {self.status}")])


@frozen(kw_only=True)
class FlowControlRule:
    """One Sentinel flow rule as MOSN's configs write it: at most ``threshold`` requests
    for ``resource`` per ``statIntervalInMs`` (counted in a fixed window, refilled whole)."""

    resource: str
    threshold: float
    statIntervalInMs: PositiveInt = PositiveInt(1000)  # Sentinel's key, as written
    #: Sentinel's 1 (QPS); 0 (concurrent requests) is not implemented.
    grade: int = 1
    #: Sentinel's 0 (Reject); warm-up and throttling are not implemented.
    controlBehavior: int = 0  # Sentinel's key, as written
    #: Sentinel's 0 (Direct).
    tokenCalculateStrategy: int = 0  # Sentinel's key, as written

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {"id", "limitapp", "strategy", "relationstrategy", "refresource"}
    )

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not self.resource:
            problems.append((("resource",), "expected a non-empty resource"))
        if self.threshold < 1:
            problems.append((("threshold",), f"expected at least 1, got {self.threshold}"))
        for name, value, what in (
            ("grade", self.grade, "1 (QPS): concurrency limits are not implemented"),
            ("controlBehavior", self.controlBehavior, "0 (reject): only rejecting is implemented"),
            ("tokenCalculateStrategy", self.tokenCalculateStrategy, "0 (direct)"),
        ):
            expected = 1 if name == "grade" else 0
            if value != expected:
                problems.append(((name,), f"expected {what}, got {value}"))
        _raise(problems)


@frozen(kw_only=True)
class FlowControlConfig:
    """A token bucket (Envoy's keys) or MOSN's Sentinel rules; see the module doc."""

    #: The bucket's size; it starts full.
    max_tokens: PositiveInt | None = None
    #: Tokens added every ``fill_interval`` (never above ``max_tokens``).
    tokens_per_fill: PositiveInt = PositiveInt(1)
    fill_interval: Duration | None = None
    #: MOSN's switch (MOSN's own default is off; here it is on).
    global_switch: bool = True
    limit_key_type: LimitKeyType = LimitKeyType.PATH
    action: FlowControlAction = FlowControlAction()
    rules: tuple[FlowControlRule, ...] = ()
    #: ``x-ratelimit-limit`` / ``-remaining`` / ``-reset`` on a refused HTTP request.
    ratelimit_headers: bool = True

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {"app_name", "log_path", "monitor", "callback_name", "direction"}
    )
    #: Rules fetched from a data source: without them nothing would be limited.
    MOSN_REFUSED: ClassVar[dict[str, Refusal]] = {
        "dynamic_data_resources": (
            given,
            "rules from a data source (Nacos, ...) are not supported: give the rules inline"
            " in 'rules'",
        )
    }

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        bucket = self.max_tokens is not None or self.fill_interval is not None
        if bucket and self.rules:
            problems.append(
                (
                    ("rules",),
                    "give either a token bucket (max_tokens, fill_interval) or rules, not both",
                )
            )
        if self.max_tokens is not None and self.fill_interval is None:
            problems.append((("fill_interval",), "required with max_tokens"))
        if self.fill_interval is not None:
            if self.max_tokens is None:
                problems.append((("max_tokens",), "required with fill_interval"))
            if self.fill_interval <= 0:
                problems.append(
                    (("fill_interval",), f"expected a positive duration, got {self.fill_interval}")
                )
        if not bucket and not self.rules and self.global_switch:
            problems.append(
                ((), "needs a token bucket (max_tokens and fill_interval) or MOSN's rules")
            )
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.resource in seen:
                problems.append((("rules", i, "resource"), f"duplicate resource {rule.resource!r}"))
            seen.add(rule.resource)
        _raise(problems)


@frozen(kw_only=True)
class MosnFlowControlConfig(FlowControlConfig):
    """``flowControlFilter``, MOSN's name: MOSN's default too, ``global_switch`` off (its
    filter passes every request unless the config turns it on), so a MOSN configuration
    limits here exactly what it limited there."""

    global_switch: bool = False
