"""Config of the ``fault`` stream filter: MOSN's fault injection (``pkg/filter/stream/
faultinject``, ``v2.StreamFaultInject``) with Envoy's HTTP fault filter's gRPC abort."""

from __future__ import annotations

import attrs
from attrs import frozen

from ..routes import HeaderMatcher, Problem, _raise
from ..scalars import Duration

#: The RPC error kinds a fault may answer with (``trio_mesh.protocols.xprotocol.ErrorKind``
#: names; the config layer does not import the protocols).
RPC_ERRORS = (
    "NO_ROUTE",
    "NO_HEALTHY_HOST",
    "TIMEOUT",
    "UPSTREAM_FAILURE",
    "UPSTREAM_RESET",
    "OVERFLOW",
    "CODEC_ERROR",
    "INTERNAL",
)


def percent_problem(value: float) -> str | None:
    if not 0 <= value <= 100:
        return f"expected a percentage from 0 to 100, got {value:g}"
    return None


@frozen(kw_only=True)
class FaultDelay:
    """``{fixed_delay: 1s, percentage: 50}`` (MOSN's and Envoy's keys)."""

    fixed_delay: Duration
    #: Share of the requests delayed, 0 to 100 (fractions allowed). As in MOSN and Envoy,
    #: leaving it out means 0: no request is delayed.
    percentage: float = 0.0

    def __attrs_post_init__(self) -> None:
        if (p := percent_problem(self.percentage)) is not None:
            _raise([(("percentage",), p)])


@frozen(kw_only=True)
class FaultAbort:
    """``{status: 503, percentage: 10}``: MOSN writes ``status``, Envoy ``http_status`` (give
    one of them); ``grpc_status`` is what a gRPC request gets (Envoy's key). With only
    ``grpc_status``, HTTP requests get the HTTP status gRPC maps that code to; with only an
    HTTP status, gRPC requests get Envoy's gRPC code for it. ``rpc_error`` (an RPC error kind
    such as ``OVERFLOW``) is what bolt / Dubbo requests get; by default it follows the status
    (503: OVERFLOW, 504: TIMEOUT, 404/403: NO_ROUTE, other: INTERNAL)."""

    status: int | None = None
    http_status: int | None = None
    grpc_status: int | None = None
    rpc_error: str | None = None
    #: Share of the requests aborted, 0 to 100; left out: 0, as in MOSN and Envoy.
    percentage: float = 0.0

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if self.status is not None and self.http_status is not None:
            problems.append((("http_status",), "give status or http_status, not both"))
        for name in ("status", "http_status"):
            value = getattr(self, name)
            if value is not None and not 200 <= value <= 599:
                problems.append(((name,), f"expected an HTTP status from 200 to 599, got {value}"))
        code = self.grpc_status
        if code is not None and not 1 <= code <= 16:
            problems.append((("grpc_status",), f"expected a gRPC code from 1 to 16, got {code}"))
        if self.rpc_error is not None and self.rpc_error.upper() not in RPC_ERRORS:
            problems.append(
                (("rpc_error",), f"expected one of {', '.join(RPC_ERRORS)}, got {self.rpc_error!r}")
            )
        if (p := percent_problem(self.percentage)) is not None:
            problems.append((("percentage",), p))
        if self.status is None and self.http_status is None and self.grpc_status is None:
            problems.append(((), "give status (or http_status), or grpc_status"))
        _raise(problems)

    @property
    def http(self) -> int | None:
        return self.status if self.status is not None else self.http_status


@frozen(kw_only=True)
class FaultConfig:
    """The ``fault`` stream filter: delays and/or aborts a share of the requests.

    MOSN's stream filter shape (Envoy's keys inside ``delay`` and ``abort``)::

        delay: {fixed_delay: 2s, percentage: 50}
        abort: {status: 503, grpc_status: 14, percentage: 10}
        upstream_cluster: backend          # only requests routed to this cluster
        headers:                           # only requests matching all of these
          - {name: x-fault, value: "yes"}   # the router's header matchers

    or the flat shape of MOSN's ``fault_inject`` network filter, with the abort keys named
    the same way::

        delay_percent: 50
        delay_duration: 2s
        abort_percent: 10
        abort_status: 503

    A percentage is 0 to 100, fractions allowed; a left-out percentage is 0 (MOSN's and
    Envoy's default): nothing happens. A delayed request is then aborted or not (two separate
    draws, as in MOSN). The delay runs inside the request's timeout, so a route ``timeout``
    shorter than the delay answers 504.
    """

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    upstream_cluster: str | None = attrs.field(default=None, metadata={"refers_to": "cluster"})
    headers: tuple[HeaderMatcher, ...] = ()
    delay_percent: float | None = None
    delay_duration: Duration | None = None
    abort_percent: float | None = None
    abort_status: int | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        flat_delay = self.delay_percent is not None or self.delay_duration is not None
        if self.delay is not None and flat_delay:
            name = "delay_percent" if self.delay_percent is not None else "delay_duration"
            problems.append(((name,), "give delay: {...} or delay_percent / delay_duration"))
        flat_abort = self.abort_percent is not None or self.abort_status is not None
        if self.abort is not None and flat_abort:
            name = "abort_percent" if self.abort_percent is not None else "abort_status"
            problems.append(((name,), "give abort: {...} or abort_percent / abort_status"))
        for name in ("delay_percent", "abort_percent"):
            value = getattr(self, name)
            if value is not None and (p := percent_problem(value)) is not None:
                problems.append(((name,), p))
        if self.abort_status is not None and not 200 <= self.abort_status <= 599:
            problems.append(
                (
                    ("abort_status",),
                    f"expected an HTTP status from 200 to 599, got {self.abort_status}",
                )
            )
        elif self.abort_percent and self.abort_status is None and self.abort is None:
            problems.append((("abort_status",), "abort_percent needs abort_status"))
        _raise(problems)

    def delay_of(self) -> tuple[float, float]:
        """``(seconds, percentage)`` of the delay, whichever shape gave it (0: none)."""
        if self.delay is not None:
            return self.delay.fixed_delay, self.delay.percentage
        return self.delay_duration or 0.0, self.delay_percent or 0.0

    def abort_of(self) -> FaultAbort | None:
        """The abort, whichever shape gave it."""
        if self.abort is not None:
            return self.abort
        if self.abort_status is None:
            return None
        return FaultAbort(status=self.abort_status, percentage=self.abort_percent or 0.0)
