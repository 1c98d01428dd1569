"""Tracing of one ``proxy`` filter: Envoy's HTTP connection manager ``tracing`` settings.

A listener's ``proxy`` config may carry ``tracing:`` (from a file, or translated from an xDS
HCM's ``tracing``), with the fields of Envoy's ``HttpConnectionManager.Tracing`` that mean
something here::

    tracing:
      random_sampling: 10          # percent of new traces started, 0-100
      provider:                    # MOSN's tracing block; absent: the top-level one
        enable: true
        driver: opentelemetry
        config: {endpoint: "http://127.0.0.1:4318/v1/traces", service_name: ingress}

`effective_tracing` says what a listener's tracer is built from. Tracing changes neither
security nor access, so the Envoy fields not enforced here load with a warning each
(`proxy_tracing_warnings`) instead of being refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from attrs import frozen

from .errors import at
from .observability import TracingConfig
from .routes import Problem, _header_value_problem, _raise, header_name_problem
from .scalars import PositiveInt

if TYPE_CHECKING:
    from .filter_configs import ProxyConfig

#: The tracer drivers a provider may name (MOSN's ``driver``, or its older ``tracer``).
DRIVERS = ("opentelemetry",)


def _percent_problem(value: float) -> str | None:
    # bool is an int, but true is no percentage; NaN fails the range too
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value <= 100):
        return f"expected a percentage from 0 to 100, got {value!r}"
    return None


def _provider_problems(provider: TracingConfig) -> list[Problem]:
    """What a listener's provider must be to be built; a disabled one is not read."""
    if not provider.enable:
        return []
    problems: list[Problem] = []
    driver = (provider.driver or provider.tracer).lower()
    if driver not in DRIVERS:
        key = "driver" if provider.driver or not provider.tracer else "tracer"
        expected = ", ".join(DRIVERS)
        got = repr(driver) if driver else "nothing"
        problems.append(((key,), f"expected {expected}, got {got}"))
    endpoint = provider.config.get("endpoint")
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))
    ):
        problems.append(
            (("config", "endpoint"), f"expected an http:// or https:// URL, got {endpoint!r}")
        )
    sampling = provider.config.get("random_sampling")
    if sampling is not None and (p := _percent_problem(sampling)) is not None:
        problems.append((("config", "random_sampling"), p))
    name = provider.config.get("service_name")
    if name is not None and not (isinstance(name, str) and name):
        problems.append((("config", "service_name"), f"expected a name, got {name!r}"))
    headers = provider.config.get("headers")
    if headers is not None and not (
        isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        problems.append(
            (("config", "headers"), f"expected a mapping of names to strings, got {headers!r}")
        )
    elif headers is not None:
        for k, v in headers.items():
            if (p := header_name_problem(k) or _header_value_problem(v)) is not None:
                problems.append((("config", "headers", k), p))
    return problems


@frozen(kw_only=True)
class ProxyTracing:
    """Envoy's HCM ``tracing`` on a ``proxy`` filter (see the module doc)."""

    #: Percent of requests without a trace context that start a new trace; ``None``: the
    #: provider's ``config.random_sampling`` (whose default is Envoy's, 100).
    random_sampling: float | None = None
    #: Envoy's force tracing by ``x-client-trace-id``: not enforced (a warning says so).
    client_sampling: float = 100.0
    #: Envoy's cap after every other sampling decision: not enforced (a warning says so).
    overall_sampling: float = 100.0
    #: MOSN's ``tracing`` block for this listener; ``None``: the top-level one. With
    #: ``enable: false`` this listener is not traced at all.
    provider: TracingConfig | None = None
    #: Span annotations Envoy adds; not enforced here (a warning says so).
    custom_tags: tuple[dict[str, Any], ...] = ()
    verbose: bool = False
    max_path_tag_length: PositiveInt | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        for key in ("random_sampling", "client_sampling", "overall_sampling"):
            value = getattr(self, key)
            if value is not None and (p := _percent_problem(value)) is not None:
                problems.append(((key,), p))
        if self.provider is not None:
            for path, why in _provider_problems(self.provider):
                problems.append((("provider", *path), why))
        _raise(problems)


def proxy_tracing_warnings(path: str, tracing: ProxyTracing) -> list[str]:
    """One warning per Envoy field that is set but not enforced (``path``: the ``tracing``)."""
    warnings = []
    for key, why in (
        ("client_sampling", "x-client-trace-id forces no trace here"),
        ("overall_sampling", "random_sampling alone decides which requests start a trace"),
    ):
        value = getattr(tracing, key)
        if not math.isclose(value, 100.0):
            warnings.append(at(f"{path}.{key}", f"{value:g}: not enforced: {why}: ignored"))
    if tracing.custom_tags:
        warnings.append(at(f"{path}.custom_tags", "spans get no custom tags yet: ignored"))
    if tracing.verbose:
        warnings.append(at(f"{path}.verbose", "spans get no stream event logs yet: ignored"))
    if tracing.max_path_tag_length is not None:
        warnings.append(
            at(f"{path}.max_path_tag_length", "spans carry no path tag to truncate: ignored")
        )
    provider = tracing.provider
    if provider is not None and not provider.enable and (provider.driver or provider.config):
        warnings.append(
            at(
                f"{path}.provider.enable",
                "false: this listener is not traced (enable: true uses this provider)",
            )
        )
    return warnings


def effective_tracing(proxy: ProxyConfig, global_: TracingConfig | None) -> TracingConfig | None:
    """What the tracer of a listener's ``proxy`` is built from, at config time: its own
    provider if it has one (none if that one is disabled), else the top-level one if enabled;
    its ``random_sampling``, when set, overriding the provider's ``config.random_sampling``.
    ``None``: tracing is off for this listener."""
    own = proxy.tracing
    base: TracingConfig | None
    if own is not None and own.provider is not None:
        base = own.provider
    else:
        base = global_
    if base is None or not base.enable:
        return None
    if own is None or own.random_sampling is None:
        return base
    return attrs.evolve(base, config={**base.config, "random_sampling": own.random_sampling})


__all__ = ["ProxyTracing", "effective_tracing", "proxy_tracing_warnings"]
