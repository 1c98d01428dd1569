"""The ``health_check`` stream filter (Envoy's HTTP health check filter, non pass-through):
a request that matches its headers is answered by the proxy: 200, or 503 when the server's
health failed (``POST /healthcheck/fail``) or it is draining.

Matchers on pseudo-headers only (the usual ``:path``) are decided when the request's filters
are made: other requests get no filter object at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.stream_filters.health_check import HealthCheckConfig
from ..health import Health
from ..router.table import _headers_match, _value_matcher
from .stream import (
    FactoryResult,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilter,
    register_stream_filter,
)

_PSEUDO: dict[str, Callable[[RequestContext], str]] = {
    ":method": lambda c: c.method,
    ":path": lambda c: c.path,
    ":authority": lambda c: c.authority,
}

#: Envoy's header on a failed check: the load balancer may take the host out at once.
FAIL_HEADER = ("x-envoy-immediate-health-check-fail", "true")


class HealthCheck(StreamFilter):
    __slots__ = ("health", "matchers")

    def __init__(
        self, config: HealthCheckConfig, context: RequestContext, health: Health, matchers: tuple
    ) -> None:
        super().__init__(config, context)
        self.health = health
        self.matchers = matchers  # () when the factory already matched

    @classmethod
    def factory(cls, config: HealthCheckConfig, build: Any) -> FactoryResult:
        health = getattr(build, "health", None) or Health()
        matchers = tuple((h.name.lower(), *_value_matcher(h), h.invert) for h in config.headers)
        if all(m[0] in _PSEUDO for m in matchers):

            def by_pseudo(context: RequestContext) -> StreamFilter | None:
                def lookup(name: str) -> str | None:
                    return _PSEUDO[name](context) or None

                if not _headers_match(matchers, lookup):
                    return None
                return cls(config, context, health, ())

            return by_pseudo
        return lambda context: cls(config, context, health, matchers)

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        if self.matchers:
            context = self.context

            def lookup(name: str) -> str | None:
                if name in _PSEUDO:  # HTTP/1 has no pseudo-headers: the context has them
                    return _PSEUDO[name](context) or None
                return headers.get(name)

            if not _headers_match(self.matchers, lookup):
                return None
        if self.health.healthy:
            return LocalReply(200, b"")
        return LocalReply(503, b"", headers=(FAIL_HEADER,))


register_stream_filter("health_check", HealthCheck, HealthCheckConfig)
