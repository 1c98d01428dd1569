"""The `flowcontrol` stream filter: local rate limiting with token buckets.

A bucket belongs to the filter entry it was built for: ``factory`` runs once per listener
entry and once per route that overrides the entry in ``per_filter_config``, so a listener's
bucket is shared by all its requests and a route's by that route's. Buckets refill lazily
from the clock when a request looks at them (no background task), in whole fills as Envoy's
do. They are per process: with ``--workers N`` each worker has its own.

The per-request cost is what the benchmark sees: the listener-wide bucket's filter is one
object shared by every request (it keeps no per-request state), so a request pays one hook
call, one clock read and a compare.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ..config.stream_filters.flowcontrol import (
    FlowControlConfig,
    LimitKeyType,
    MosnFlowControlConfig,
)
from .stream import (
    FactoryResult,
    Headers,
    LocalReply,
    StreamFilter,
    register_stream_filter,
)

#: gRPC's RESOURCE_EXHAUSTED: what a rate-limited call gets.
GRPC_RESOURCE_EXHAUSTED = 8


class TokenBucket:
    """``max_tokens`` tokens, full at first; ``tokens_per_fill`` more every ``fill_interval``
    seconds, counted from the bucket's creation, added when ``take`` next looks."""

    __slots__ = ("clock", "fill_interval", "max_tokens", "next_fill", "tokens", "tokens_per_fill")

    def __init__(
        self,
        max_tokens: float,
        tokens_per_fill: float,
        fill_interval: float,
        clock: Callable[[], float] = time.monotonic,  # cheaper than Trio's clock, as good
    ) -> None:
        self.max_tokens = float(max_tokens)
        self.tokens_per_fill = float(tokens_per_fill)
        self.fill_interval = float(fill_interval)
        self.tokens = self.max_tokens
        self.clock = clock
        self.next_fill = clock() + self.fill_interval

    def take(self) -> bool:
        """Take one token if there is one."""
        now = self.clock()
        if now >= self.next_fill:
            self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def _refill(self, now: float) -> None:
        fills = math.floor((now - self.next_fill) / self.fill_interval) + 1
        self.tokens = min(self.max_tokens, self.tokens + fills * self.tokens_per_fill)
        self.next_fill += fills * self.fill_interval

    def reset_after(self) -> float:
        """Seconds until the next fill."""
        now = self.clock()
        if now >= self.next_fill:
            self._refill(now)
        return self.next_fill - now


class FlowControl(StreamFilter):
    """Refuses a request when its bucket is empty. One object serves every request of its
    bucket: ``context`` is ``None`` (the hook needs nothing of the request)."""

    __slots__ = ("bucket", "take")

    def __init__(self, config: FlowControlConfig, bucket: TokenBucket) -> None:
        super().__init__(config, None)  # type: ignore[arg-type]
        self.bucket = bucket
        self.take = bucket.take

    @classmethod
    def factory(cls, config: FlowControlConfig, build: Any) -> FactoryResult:
        if not config.global_switch:
            return None
        if config.max_tokens is not None:
            assert config.fill_interval is not None  # the config class checks both
            shared = cls(
                config, TokenBucket(config.max_tokens, config.tokens_per_fill, config.fill_interval)
            )
            return shared
        # MOSN's rules: a bucket per resource, a fixed window of `threshold` a window.
        by_resource = {
            rule.resource: cls(
                config, TokenBucket(rule.threshold, rule.threshold, rule.statIntervalInMs / 1000.0)
            )
            for rule in config.rules
        }
        key = _KEYS[config.limit_key_type]
        get = by_resource.get
        return lambda context: get(key(context.path))

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        if self.take():
            return None
        return self._refuse()

    def _refuse(self) -> LocalReply:
        config = self.config
        reply_headers: list[tuple[str, str]] = []
        if config.ratelimit_headers:
            bucket = self.bucket
            reply_headers = [
                ("x-ratelimit-limit", str(int(bucket.max_tokens))),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", str(math.ceil(bucket.reset_after()))),
            ]
        return LocalReply(
            config.action.status,
            config.action.body,
            headers=reply_headers,
            grpc_status=GRPC_RESOURCE_EXHAUSTED,
            grpc_message=config.action.body,
            rpc_error="OVERFLOW",
            flag="RL",
        )


def _path_only(path: str | None) -> str:
    return (path or "").partition("?")[0]


def _uri(path: str | None) -> str:
    return path or ""


def _args(path: str | None) -> str:
    return (path or "").partition("?")[2]


_KEYS: dict[LimitKeyType, Callable[[str | None], str]] = {
    LimitKeyType.PATH: _path_only,
    LimitKeyType.URI: _uri,
    LimitKeyType.ARG: _args,
}


register_stream_filter("flowcontrol", FlowControl, FlowControlConfig)
# MOSN's name for its Sentinel flow control filter, whose ``rules`` shape this one takes.
register_stream_filter("flowControlFilter", FlowControl, MosnFlowControlConfig)
