"""Config of the ``health_check`` stream filter (Envoy's ``envoy.filters.http.health_check``):
requests whose headers match are answered by the proxy itself, 200 while the server is
healthy, 503 once ``/healthcheck/fail`` was posted or a drain began."""

from __future__ import annotations

from attrs import frozen

from ..routes import HeaderMatcher, Problem, _raise


@frozen(kw_only=True)
class HealthCheckConfig:
    #: Envoy's pass-through mode forwards the checks to the upstream; here the proxy always
    #: answers them itself (``false``): ``true`` is refused rather than ignored, since it
    #: would change who answers a load balancer.
    pass_through_mode: bool = False
    #: The requests that are health checks: ``[{name: ":path", value: /healthz}]``.
    headers: tuple[HeaderMatcher, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if self.pass_through_mode:
            problems.append(
                (
                    ("pass_through_mode",),
                    "only false is supported (the proxy answers health checks itself)",
                )
            )
        if not self.headers:
            problems.append((("headers",), "at least one matcher is required (e.g. :path)"))
        _raise(problems)
