"""Config of the `payload_limit` stream filter (MOSN's name and keys): request bodies over
``max_entity_size`` bytes are refused with ``http_status`` before they reach the upstream."""

from __future__ import annotations

from attrs import frozen

from ..routes import Problem, _raise


@frozen(kw_only=True)
class PayloadLimitConfig:
    #: The largest request body let through, in bytes; 0: no limit (as in MOSN).
    max_entity_size: int
    #: The status of the refusal (MOSN's key; Envoy's buffer filter answers 413 too).
    http_status: int = 413

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if self.max_entity_size < 0:
            problems.append(
                (("max_entity_size",), f"expected 0 (no limit) or more, got {self.max_entity_size}")
            )
        if not 200 <= self.http_status <= 599:
            problems.append(
                (("http_status",), f"expected an HTTP status 200-599, got {self.http_status}")
            )
        _raise(problems)
