"""The ``fault`` stream filter: delay and/or abort a share of the requests (MOSN's fault
inject filter, Envoy's HTTP fault filter).

Everything is worked out once per configuration in `Fault.factory`. When the faults do not
depend on the request's headers, the decision is made as the request's filters are made: a
request that gets no fault gets no filter object at all, and at 0% (or with no delay and no
abort) the factory makes nothing, not even a random draw.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from ..config.stream_filters.fault import FaultAbort, FaultConfig
from ..router.table import _headers_match, _value_matcher
from .stream import (
    FactoryResult,
    Headers,
    LocalReply,
    RequestContext,
    StreamFilter,
    register_stream_filter,
)

__all__ = ["Fault", "chosen"]

#: Envoy's local reply body for an injected abort.
ABORT_BODY = "fault filter abort\n"
#: Envoy's response flag of an injected abort.
FAULT_FLAG = "FI"

# The HTTP status of a gRPC code (the gRPC project's HTTP mapping), for an abort given only
# a grpc_status that an HTTP/1 or plain HTTP/2 request meets.
_GRPC_TO_HTTP = {
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}


_PSEUDO: dict[str, Callable[[RequestContext], str | None]] = {
    ":method": lambda c: c.method,
    ":path": lambda c: c.path,
    ":authority": lambda c: c.authority,
}


def _none(context: RequestContext) -> None:
    return None


def chosen(percentage: float, rand: Callable[[], float]) -> bool:
    """Whether this request is one of ``percentage`` percent: no draw at 0 or 100."""
    if percentage >= 100:
        return True
    return percentage > 0 and rand() * 100 < percentage


class _Plan:
    """One configuration, compiled: the delay, the abort's reply fields, the matchers."""

    __slots__ = (
        "abort",
        "abort_percent",
        "cluster",
        "config",
        "delay",
        "delay_percent",
        "matchers",
        "rand",
    )

    def __init__(self, config: FaultConfig, rand: Callable[[], float]) -> None:
        self.config = config
        delay, delay_percent = config.delay_of()
        self.delay = delay if delay > 0 and delay_percent > 0 else 0.0
        self.delay_percent = delay_percent if self.delay else 0.0
        abort = config.abort_of()
        self.abort: tuple[int, int | None, str | None] | None  # see _reply_fields
        if abort is not None and abort.percentage > 0:
            self.abort = _reply_fields(abort)
            self.abort_percent = abort.percentage
        else:
            self.abort = None
            self.abort_percent = 0.0
        self.cluster = config.upstream_cluster
        self.matchers = tuple(
            (h.name.lower(), *_value_matcher(h), h.invert) for h in config.headers
        )
        self.rand = rand

    @property
    def idle(self) -> bool:
        return not self.delay and self.abort is None

    def draw(self) -> tuple[float, LocalReply | None]:
        """This request's delay (0: none) and abort (``None``: none)."""
        delay = self.delay if self.delay and chosen(self.delay_percent, self.rand) else 0.0
        abort = None
        if self.abort is not None and chosen(self.abort_percent, self.rand):
            status, grpc_status, rpc_error = self.abort
            abort = LocalReply(
                status,
                ABORT_BODY,
                grpc_status=grpc_status,
                grpc_message="fault filter abort",
                rpc_error=rpc_error,
                flag=FAULT_FLAG,
            )
        return delay, abort


def _reply_fields(abort: FaultAbort) -> tuple[int, int | None, str | None]:
    """``(HTTP status, gRPC status or None: from the HTTP status, RPC error or None: from
    the HTTP status)`` of an abort."""
    status = abort.http
    if status is None:
        status = _GRPC_TO_HTTP.get(abort.grpc_status or 2, 500)
    return status, abort.grpc_status, abort.rpc_error.upper() if abort.rpc_error else None


class Fault(StreamFilter):
    """Delays the request (``trio.sleep`` inside its own timeout), then aborts it or lets it
    go on. ``decided``: the draws were made when the filter was (no header matchers);
    otherwise the headers are matched first and the draws made then."""

    config_class = FaultConfig

    def __init__(
        self,
        plan: _Plan,
        context: RequestContext,
        delay: float = 0.0,
        abort: LocalReply | None = None,
        decided: bool = False,
    ) -> None:
        super().__init__(plan.config, context)
        self.plan = plan
        self.delay = delay
        self.abort = abort
        self.decided = decided

    @classmethod
    def factory(
        cls,
        config: FaultConfig,
        build: object,
        *,
        rand: Callable[[], float] = random.random,
    ) -> FactoryResult:
        """``rand``: the source of draws in [0, 1) (tests pass a seeded one)."""
        plan = _Plan(config, rand)
        cluster = plan.cluster
        if plan.idle:
            return None
        if plan.matchers:

            def by_headers(context: RequestContext) -> StreamFilter | None:
                if cluster is not None and context.cluster != cluster:
                    return None
                return cls(plan, context)

            return by_headers

        def drawn(context: RequestContext) -> StreamFilter | None:
            if cluster is not None and context.cluster != cluster:
                return None
            delay, abort = plan.draw()
            if not delay and abort is None:
                return None
            return cls(plan, context, delay, abort, True)

        return drawn

    async def on_request_headers(self, headers: Headers, end_stream: bool) -> LocalReply | None:
        if self.decided:
            delay, abort = self.delay, self.abort
        else:
            context = self.context

            def lookup(name: str) -> str | None:
                if name.startswith(":"):  # HTTP/1 has no pseudo-headers: the context has them
                    value = _PSEUDO.get(name, _none)(context)
                    return value or None
                return headers.get(name)

            if not _headers_match(self.plan.matchers, lookup):
                return None
            delay, abort = self.plan.draw()
        if delay:
            await trio.sleep(delay)
        return abort


register_stream_filter("fault", Fault, FaultConfig)
