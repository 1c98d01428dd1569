"""Envoy v3 xDS resources -> trio-mesh's MOSN-shaped configuration documents.

Each function turns one resource into the plain dicts a YAML file would hold, so the result
goes through ``trio_mesh.config.load.parse_config`` and is validated like a file. Conversion is
strict: a field that is set but that trio-mesh does not implement raises `ConvertError` naming
its Envoy path, instead of being dropped (a dropped auth or match field would change what the
proxy does). Only fields with no effect on forwarding (stats names, metadata, tuning hints) are
ignored. The HCM's ``tracing`` is the one exception (neither security nor access): a tracer
trio-mesh cannot export to leaves that listener untraced, with a warning (see `_tracing`).

Upstream protocol: MOSN puts it on the ``proxy`` filter, Envoy on the cluster. The listener's
``proxy`` is given ``upstream_protocol: Http1`` (Envoy's default); `cluster_is_http2` tells a
caller which clusters want HTTP/2, e.g. for the xDS server's own cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import re
from typing import Any

import attrs

from ..config.duration import format_duration
from ..config.routes import RETRY_CONDITIONS, _header_value_problem, header_name_problem
from ..config.scalars import MAX_HOST_WEIGHT, MIN_HOST_WEIGHT, format_hostport
from . import types as t
from .envoy_import import envoy_import

log = logging.getLogger("trio_mesh.xds")

# Importing these also registers the filter configs in the message pool Any.unpack() reads.
with envoy_import():
    from envoy_data_plane.envoy.config.route.v3 import FilterConfig
    from envoy_data_plane.envoy.extensions.compression.gzip.compressor.v3 import Gzip
    from envoy_data_plane.envoy.extensions.filters.http.compressor.v3 import (
        Compressor,
        CompressorPerRoute,
    )
    from envoy_data_plane.envoy.extensions.filters.http.fault.v3 import HttpFault
    from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3 import (
        LocalRateLimit,
    )
    from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac, RbacPerRoute

UNSUPPORTED = "not supported by trio-mesh"


class ConvertError(ValueError):
    """A resource trio-mesh cannot honour: ``"<Kind> '<name>': <envoy.field.path>: <why>"``."""

    def __init__(self, kind: str, name: str, path: str, reason: str) -> None:
        self.kind, self.name, self.path, self.reason = kind, name, path, reason
        where = f"{path}: " if path else ""
        super().__init__(f"{kind} {name!r}: {where}{reason}")


@attrs.frozen
class _At:
    """Where we are inside one resource, for error messages."""

    kind: str
    name: str
    path: str = ""

    def __truediv__(self, seg: str | int) -> _At:
        if isinstance(seg, int):
            return attrs.evolve(self, path=f"{self.path}[{seg}]")
        return attrs.evolve(self, path=f"{self.path}.{seg}" if self.path else seg)

    def error(self, reason: str = UNSUPPORTED) -> ConvertError:
        return ConvertError(self.kind, self.name, self.path, reason)


@functools.cache
def _empty(cls: type) -> Any:
    return cls()


def _only(msg: Any, at: _At, handled: frozenset[str] | set[str]) -> None:
    """Raise for the first field of ``msg`` that differs from its default and is not handled
    (or deliberately ignored) by the caller: nothing set is silently dropped."""
    cls: type = type(msg)  # type[Any] would not count as Hashable for the cache
    empty = _empty(cls)
    for f in dataclasses.fields(msg):
        if f.name not in handled and getattr(msg, f.name) != getattr(empty, f.name):
            raise (at / f.name).error()


def _duration(td: datetime.timedelta, at: _At, *, positive: bool = False) -> str:
    seconds = td.total_seconds()
    if seconds < 0 or (positive and seconds == 0):
        raise at.error(
            f"expected a {'positive' if positive else 'non-negative'} duration, got {seconds}s"
        )
    return format_duration(seconds)


def _unpack(any_: Any, at: _At, expected: tuple[str, ...]) -> Any:
    """Unpack a typed_config after checking its type URL, so an unknown extension is reported
    by name instead of as betterproto's TypeError."""
    if any_ is None:
        raise at.error("typed_config is required")
    if any_.type_url not in expected:
        raise (at / "type_url").error(f"{any_.type_url!r}: {UNSUPPORTED}")
    try:
        return any_.unpack()
    except Exception as exc:  # a malformed payload
        raise at.error(f"cannot decode {any_.type_url}: {exc}") from None


RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
RAW_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"


TLS_SOCKET = "envoy.transport_sockets.tls"
SDS_REASON = (
    "SDS is not supported: give the certificates in the resource (filename, inline_string or"
    " inline_bytes)"
)


def _transport_socket(ts: Any, at: _At, *, server: bool) -> dict[str, Any] | None:
    """``raw_buffer`` (Envoy's default, cleartext): ``None``; ``envoy.transport_sockets.tls``
    with a ``DownstreamTlsContext`` (listener) or ``UpstreamTlsContext`` (cluster): the MOSN
    ``tls_context`` of it. Any other transport socket is refused, never served as cleartext."""
    if ts is None:
        return None
    tat = at / "transport_socket"
    url = ts.typed_config.type_url if ts.typed_config is not None else None
    if url == RAW_BUFFER_TYPE or (url is None and ts.name == RAW_BUFFER):
        return None
    expected = t.DOWNSTREAM_TLS_TYPE if server else t.UPSTREAM_TLS_TYPE
    if url is None and ts.name == TLS_SOCKET:
        raise (tat / "typed_config").error(f"a {expected.rpartition('.')[2]} is required")
    if url != expected:
        raise tat.error(
            f"{ts.name or url!r}: {UNSUPPORTED} (only raw_buffer, and {TLS_SOCKET} with a"
            f" {expected.rpartition('.')[2]})"
        )
    ctx = _unpack(ts.typed_config, tat / "typed_config", (expected,))
    cat = tat / "typed_config"
    return _downstream_tls(ctx, cat) if server else _upstream_tls(ctx, cat)


def _data_source(ds: Any, at: _At) -> str:
    """A file path, or the PEM text itself (MOSN tells them apart by the PEM header)."""
    _only(ds, at, {"filename", "inline_bytes", "inline_string"})
    if ds.filename is not None:
        if not ds.filename or "-----BEGIN" in ds.filename:
            raise (at / "filename").error("expected a file path")
        return ds.filename
    if ds.inline_string is not None:
        text = ds.inline_string
    elif ds.inline_bytes is not None:
        try:
            text = ds.inline_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise (at / "inline_bytes").error("expected PEM text (DER is not supported)") from None
    else:
        raise at.error("filename, inline_string or inline_bytes is required")
    if "-----BEGIN" not in text:
        raise (at / ("inline_string" if ds.inline_string is not None else "inline_bytes")).error(
            "expected PEM text"
        )
    return text


_TLS_VERSIONS = {"TLS_AUTO": "", "TLSv1_0": "TLSv1_0", "TLSv1_1": "TLSv1_1"}


def _common_tls(ctx: Any, at: _At, *, server: bool) -> list[dict[str, Any]]:
    """``CommonTlsContext`` -> one MOSN ``tls_context`` per certificate (a listener with
    several certificates gets a ``tls_context_set``, chosen by SNI as Envoy does)."""
    if ctx is None:
        return [{"status": True}]
    for name in ("tls_certificate_sds_secret_configs", "validation_context_sds_secret_config"):
        if getattr(ctx, name):
            raise (at / name).error(SDS_REASON)
    _only(ctx, at, {"tls_params", "tls_certificates", "validation_context", "alpn_protocols"})
    common: dict[str, Any] = {"status": True}
    if ctx.tls_params is not None:
        pat = at / "tls_params"
        params = ctx.tls_params
        _only(
            params,
            pat,
            {"tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites",
             "ecdh_curves"},
        )  # fmt: skip
        for field, key in (
            ("tls_minimum_protocol_version", "min_version"),
            ("tls_maximum_protocol_version", "max_version"),
        ):
            name = getattr(params, field).name
            version = _TLS_VERSIONS.get(name, name)
            if version:
                common[key] = version  # below 1.2: parse_config refuses it with the reason
        for cipher in params.cipher_suites:
            if cipher.startswith("["):
                raise (pat / "cipher_suites").error(
                    f"{cipher!r}: equal-preference groups are not supported"
                )
        if params.cipher_suites:
            common["cipher_suites"] = ":".join(params.cipher_suites)
        if params.ecdh_curves:
            common["ecdh_curves"] = ",".join(params.ecdh_curves)
    if ctx.validation_context is not None:
        vat = at / "validation_context"
        # SAN matching, pinning, CRLs: checks trio-mesh does not make: refused, not dropped.
        _only(ctx.validation_context, vat, {"trusted_ca"})
        if ctx.validation_context.trusted_ca is not None:
            common["ca_cert"] = _data_source(ctx.validation_context.trusted_ca, vat / "trusted_ca")
    if ctx.alpn_protocols:
        common["alpn"] = ",".join(ctx.alpn_protocols)
    if not server and len(ctx.tls_certificates) > 1:
        raise (at / "tls_certificates").error("an upstream connection has one client certificate")
    out = []
    for i, cert in enumerate(ctx.tls_certificates):
        cat = at / "tls_certificates" / i
        if cert.password is not None:
            raise (cat / "password").error("encrypted private keys are not supported")
        _only(cert, cat, {"certificate_chain", "private_key"})
        if cert.certificate_chain is None or cert.private_key is None:
            missing = "certificate_chain" if cert.certificate_chain is None else "private_key"
            raise (cat / missing).error("required")
        out.append(
            {
                **common,
                "cert_chain": _data_source(cert.certificate_chain, cat / "certificate_chain"),
                "private_key": _data_source(cert.private_key, cat / "private_key"),
            }
        )
    return out or [common]


def _downstream_tls(ctx: Any, at: _At) -> dict[str, Any]:
    """A listener chain's ``tls_context`` (one certificate) or ``tls_context_set``."""
    if ctx.session_ticket_keys_sds_secret_config is not None:
        raise (at / "session_ticket_keys_sds_secret_config").error(SDS_REASON)
    if ctx.session_ticket_keys is not None:
        raise (at / "session_ticket_keys").error(
            "session ticket keys cannot be set (Python's ssl): tickets stay off"
        )
    _only(
        ctx,
        at,
        {
            "common_tls_context",
            "require_client_certificate",
            # Tickets are off unless configured (a safe default Envoy's users can turn on
            # only with keys, refused above); resumption by session id needs no setting.
            "disable_stateless_session_resumption",
            "disable_stateful_session_resumption",
            "session_timeout",
        },
    )
    configs = _common_tls(ctx.common_tls_context, at / "common_tls_context", server=True)
    for config in configs:
        if "ca_cert" in config:
            # Envoy: with a trusted CA, a client certificate is verified when given, and
            # required with require_client_certificate.
            config["verify_client"] = True
            if ctx.require_client_certificate:
                config["require_client_cert"] = True
        elif ctx.require_client_certificate:
            raise (at / "require_client_certificate").error(
                "needs common_tls_context.validation_context.trusted_ca"
            )
    if len(configs) == 1:
        return {"tls_context": configs[0]}
    return {"tls_context_set": configs}


def _upstream_tls(ctx: Any, at: _At) -> dict[str, Any]:
    """A cluster's ``tls_context``. Without a ``validation_context`` Envoy verifies nothing;
    trio-mesh verifies against the system's CAs instead (MOSN's default): never weaker."""
    _only(ctx, at, {"common_tls_context", "sni", "max_session_keys"})
    (config,) = _common_tls(ctx.common_tls_context, at / "common_tls_context", server=False)
    if ctx.sni:
        config["server_name"] = ctx.sni
    return config


def _filter_chain_match(m: Any, at: _At) -> dict[str, Any]:
    # Addresses, ports and source matching would narrow what the chain takes: refused.
    _only(m, at, {"server_names", "transport_protocol", "application_protocols"})
    out: dict[str, Any] = {}
    if m.server_names:
        out["server_names"] = list(m.server_names)
    if m.transport_protocol:
        out["transport_protocol"] = m.transport_protocol
    if m.application_protocols:
        out["application_protocols"] = list(m.application_protocols)
    return out


def _socket_address(addr: Any, at: _At) -> str:
    if addr is None or addr.socket_address is None:
        raise at.error("a socket_address is required")
    sa = addr.socket_address
    sat = at / "socket_address"
    _only(addr, at, {"socket_address"})
    # protocol TCP is the default; resolver_name etc. change resolution
    _only(sa, sat, {"protocol", "address", "port_value"})
    if sa.protocol != t.SocketAddressProtocol.TCP:
        raise (sat / "protocol").error(f"{sa.protocol.name}: only TCP is supported")
    if sa.port_value is None:
        raise (sat / "port_value").error("a port_value is required")
    return format_hostport(sa.address, sa.port_value)


# --------------------------------------------------------------------------- clusters

_LB = {
    t.ClusterLbPolicy.ROUND_ROBIN: "LB_ROUNDROBIN",
    t.ClusterLbPolicy.RANDOM: "LB_RANDOM",
    t.ClusterLbPolicy.LEAST_REQUEST: "LB_LEAST_REQUEST",
    t.ClusterLbPolicy.MAGLEV: "LB_MAGLEV",
    t.ClusterLbPolicy.RING_HASH: "LB_RING_HASH",
}

_CLUSTER_FIELDS = frozenset(
    {
        "name",
        "type",
        "eds_cluster_config",
        "connect_timeout",
        "lb_policy",
        "load_assignment",
        "max_requests_per_connection",
        "circuit_breakers",
        "health_checks",
        "outlier_detection",
        "lb_subset_config",
        "common_http_protocol_options",
        "http2_protocol_options",
        "http_protocol_options",
        "typed_extension_protocol_options",
        "per_connection_buffer_limit_bytes",  # not enforced upstream: a warning says so
        # no effect on forwarding: stats, metadata, warm-up hints, DNS knobs of
        # non-DNS clusters, per-policy tuning of the policies we map
        "alt_stat_name",
        "metadata",
        "dns_lookup_family",
        "dns_refresh_rate",  # STRICT_DNS / LOGICAL_DNS (see _dns)
        "respect_dns_ttl",  # not enforced: a warning says so
        "wait_for_warm_on_init",
        "track_cluster_stats",
        "common_lb_config",
        "least_request_lb_config",
        "round_robin_lb_config",
        "cleanup_interval",
        "transport_socket",  # raw_buffer or TLS: see _transport_socket
    }
)


def _upstream_http_options(c: Any, at: _At) -> Any | None:
    """The cluster's ``envoy.extensions.upstreams.http.v3.HttpProtocolOptions``, if any."""
    opts = c.typed_extension_protocol_options or {}
    for key in opts:
        if key != t.UPSTREAM_HTTP_OPTIONS_KEY:
            raise (at / "typed_extension_protocol_options" / key).error()
    if t.UPSTREAM_HTTP_OPTIONS_KEY not in opts:
        return None
    return _unpack(
        opts[t.UPSTREAM_HTTP_OPTIONS_KEY],
        at / "typed_extension_protocol_options" / t.UPSTREAM_HTTP_OPTIONS_KEY,
        (t.UPSTREAM_HTTP_OPTIONS_TYPE,),
    )


def cluster_is_http2(c: t.Cluster) -> bool:
    """Whether the cluster asks for HTTP/2 upstream (``http2_protocol_options`` or the
    upstream HttpProtocolOptions extension's ``explicit_http_config.http2_protocol_options``)."""
    if c.http2_protocol_options is not None:
        return True
    try:
        opts = _upstream_http_options(c, _At("Cluster", c.name))
    except ConvertError:
        return False
    explicit = opts.explicit_http_config if opts is not None else None
    return explicit is not None and explicit.http2_protocol_options is not None


def _thresholds(th: Any, at: _At) -> dict[str, Any]:
    _only(
        th,
        at,
        {
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "retry_budget",
            "track_remaining",
        },
    )
    out: dict[str, Any] = {"priority": th.priority.name}
    for key in ("max_connections", "max_pending_requests", "max_requests"):
        value = getattr(th, key)
        if value is not None:
            if value < 1:
                raise (at / key).error(f"expected 1 or more, got {value}")
            out[key] = value
    if th.max_retries is not None:
        out["max_retries"] = th.max_retries
    if th.retry_budget is not None:
        rb = at / "retry_budget"
        # budget_interval (requests of a past window) is not kept: refused, not ignored
        _only(th.retry_budget, rb, {"budget_percent", "min_retry_concurrency"})
        budget: dict[str, Any] = {}
        if th.retry_budget.budget_percent is not None:
            value = th.retry_budget.budget_percent.value
            if not 0.0 <= value <= 100.0:
                raise (rb / "budget_percent").error(f"expected 0..100, got {value}")
            budget["budget_percent"] = value
        if th.retry_budget.min_retry_concurrency is not None:
            budget["min_retry_concurrency"] = th.retry_budget.min_retry_concurrency
        out["retry_budget"] = budget
    return out


def _common_http(opts: Any, at: _At, doc: dict[str, Any], idle_key: str) -> None:
    """``idle_timeout`` and ``max_requests_per_connection`` of core HttpProtocolOptions."""
    _only(opts, at, {"idle_timeout", "max_requests_per_connection"})
    if opts.idle_timeout is not None and opts.idle_timeout.total_seconds() > 0:
        # Envoy: 0 disables the timeout, which is our None
        doc[idle_key] = _duration(opts.idle_timeout, at / "idle_timeout")
    if opts.max_requests_per_connection is not None:
        doc["max_request_per_conn"] = opts.max_requests_per_connection


def _payload(p: Any, at: _At) -> str:
    """A TCP check's ``Payload`` as hex (``text`` is hex already, ``binary`` raw bytes)."""
    if p.binary:
        return bytes(p.binary).hex()
    return p.text or ""


def _health_check(hc: Any, at: _At) -> dict[str, Any]:
    """Envoy's ``HealthCheck`` as our cluster ``health_check`` (MOSN's keys)."""
    _only(
        hc,
        at,
        {
            "timeout",
            "interval",
            "interval_jitter",
            "unhealthy_threshold",
            "healthy_threshold",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
            # our checks never reuse a connection; logging choices change no verdict
            "reuse_connection",
            "event_log_path",
            "always_log_health_check_failures",
            "always_log_health_check_success",
        },
    )
    if hc.timeout is None or hc.interval is None:
        raise at.error("timeout and interval are required")
    doc: dict[str, Any] = {
        "timeout": _duration(hc.timeout, at / "timeout", positive=True),
        "interval": _duration(hc.interval, at / "interval", positive=True),
    }
    if hc.interval_jitter is not None:
        doc["interval_jitter"] = _duration(hc.interval_jitter, at / "interval_jitter")
    for key in ("unhealthy_threshold", "healthy_threshold"):
        value = getattr(hc, key)
        if value is not None:
            if value < 1:
                raise (at / key).error(f"expected 1 or more, got {value}")
            doc[key] = value
    check: dict[str, Any] = {}
    if hc.http_health_check is not None:
        http = hc.http_health_check
        hat = at / "http_health_check"
        _only(http, hat, {"host", "path", "expected_statuses"})
        doc["protocol"] = "http"
        if http.host:
            check["host"] = http.host
        if http.path:
            check["path"] = http.path
        if http.expected_statuses:
            check["expected_statuses"] = [
                {"start": r.start, "end": r.end} for r in http.expected_statuses
            ]
    elif hc.tcp_health_check is not None:
        tcp = hc.tcp_health_check
        tat = at / "tcp_health_check"
        _only(tcp, tat, {"send", "receive"})
        doc["protocol"] = "tcp"
        if tcp.send is not None:
            check["send"] = _payload(tcp.send, tat / "send")
        if tcp.receive:
            # Envoy matches the payloads in order: the same as their concatenation.
            check["expect"] = "".join(
                _payload(r, tat / "receive" / i) for i, r in enumerate(tcp.receive)
            )
    elif hc.grpc_health_check is not None:
        grpc = hc.grpc_health_check
        _only(grpc, at / "grpc_health_check", {"service_name", "authority"})
        doc["protocol"] = "grpc"
        if grpc.service_name:
            doc["service_name"] = grpc.service_name
        if grpc.authority:
            check["authority"] = grpc.authority
    else:
        raise at.error("give http_health_check, tcp_health_check or grpc_health_check")
    if check:
        doc["check_config"] = check
    return doc


_OUTLIER_COUNTS = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
)
_OUTLIER_PERCENTS = (
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
)
_OUTLIER_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")
# Loaded, not enforced (each set one warns): success-rate and failure-percentage detection,
# the jitter, what the health checker and degraded hosts would add.
_OUTLIER_UNENFORCED = (
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
    "max_ejection_time_jitter",
    "successful_active_health_check_uneject_host",
    "detect_degraded_hosts",
)


def _outlier_detection(od: Any, at: _At) -> dict[str, Any]:
    """``outlier_detection``: the consecutive-failure kinds; Envoy's defaults are ours."""
    _only(
        od,
        at,
        {
            *_OUTLIER_COUNTS,
            *_OUTLIER_PERCENTS,
            *_OUTLIER_DURATIONS,
            *_OUTLIER_UNENFORCED,
            "split_external_local_origin_errors",
            "always_eject_one_host",  # at least one host can always be ejected here
        },
    )
    out: dict[str, Any] = {}
    for key in _OUTLIER_COUNTS:
        if getattr(od, key) is not None:
            out[key] = getattr(od, key)
    for key in _OUTLIER_PERCENTS:
        value = getattr(od, key)
        if value is not None:
            if value > 100:
                raise (at / key).error(f"expected a percentage 0..100, got {value}")
            out[key] = value
    for key in _OUTLIER_DURATIONS:
        value = getattr(od, key)
        if value is not None:
            out[key] = _duration(value, at / key, positive=True)
    if od.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
    for key in _OUTLIER_UNENFORCED:
        if getattr(od, key) not in (None, False):
            _warn(at / key, "not enforced (consecutive failures only): ignored")
    return out


def _lb_subset(cfg: Any, at: _At) -> dict[str, Any]:
    """``lb_subset_config``: the fallback policy, default subset and selectors (the
    per-selector fallbacks, locality and list options are refused)."""
    _only(cfg, at, {"fallback_policy", "default_subset", "subset_selectors"})
    selectors = []
    for i, sel in enumerate(cfg.subset_selectors):
        _only(sel, at / "subset_selectors" / i, {"keys"})
        selectors.append(list(sel.keys))
    default = cfg.default_subset.to_dict() if cfg.default_subset is not None else {}
    return {
        "fallback_policy": cfg.fallback_policy.name,
        "default_subset": default,
        "subset_selectors": selectors,
    }


def _lb_metadata(md: Any) -> dict[str, Any] | None:
    """The ``envoy.lb`` part of a ``Metadata`` (what subsets and ``metadata_match`` use;
    other filters' metadata changes no choice), or ``None``."""
    if md is None:
        return None
    lb = md.filter_metadata.get("envoy.lb")
    return lb.to_dict() if lb is not None else None


def cluster_doc(c: t.Cluster) -> tuple[dict[str, Any], str | None]:
    """A ``cluster_manager.clusters[]`` entry, and the EDS service name whose
    ClusterLoadAssignment gives its hosts (``None`` for a STATIC cluster, whose hosts are in
    the entry)."""
    at = _At("Cluster", c.name)
    _only(c, at, _CLUSTER_FIELDS)
    tls = _transport_socket(c.transport_socket, at, server=False)
    if c.cluster_type is not None:
        raise (at / "cluster_type").error()
    kind = c.type if c.type is not None else t.ClusterDiscoveryType.STATIC
    original_dst = kind == t.ClusterDiscoveryType.ORIGINAL_DST
    if original_dst and c.lb_policy != t.ClusterLbPolicy.CLUSTER_PROVIDED:
        raise (at / "lb_policy").error(f"{c.lb_policy.name}: ORIGINAL_DST needs CLUSTER_PROVIDED")
    if c.lb_policy not in _LB and not original_dst:
        raise (at / "lb_policy").error(f"{c.lb_policy.name}: {UNSUPPORTED}")
    lb_type = "LB_ORIGINAL_DST" if original_dst else _LB[c.lb_policy]
    doc: dict[str, Any] = {"name": c.name, "type": "SIMPLE", "lb_type": lb_type}
    if tls is not None:
        doc["tls_context"] = tls
    if c.per_connection_buffer_limit_bytes is not None:
        # upstream reads are bounded by the frame size and the streams' windows, not by this
        log.warning(
            "%s %r: %s: not enforced on a cluster (upstream buffers are not budgeted yet)",
            at.kind,
            at.name,
            (at / "per_connection_buffer_limit_bytes").path,
        )
    if c.common_lb_config is not None:
        # the merge window batches updates: it changes no choice; locality and zone
        # awareness would
        _only(
            c.common_lb_config,
            at / "common_lb_config",
            {"healthy_panic_threshold", "update_merge_window"},
        )
        panic = c.common_lb_config.healthy_panic_threshold
        if panic is not None and panic.value != 50:
            log.warning(
                "%s %r: %s: not enforced: the panic threshold is Envoy's default, 50%%",
                at.kind,
                at.name,
                (at / "common_lb_config" / "healthy_panic_threshold").path,
            )
    if c.least_request_lb_config is not None:
        # choice_count / active_request_bias tune the choice; slow start would change it
        _only(
            c.least_request_lb_config,
            at / "least_request_lb_config",
            {"choice_count", "active_request_bias"},
        )
    if c.round_robin_lb_config is not None:
        _only(c.round_robin_lb_config, at / "round_robin_lb_config", set())
    # Envoy's default connect timeout is 5s
    timeout = c.connect_timeout if c.connect_timeout is not None else datetime.timedelta(seconds=5)
    doc["connect_timeout"] = _duration(timeout, at / "connect_timeout", positive=True)
    if c.circuit_breakers is not None:
        cb = at / "circuit_breakers"
        _only(c.circuit_breakers, cb, {"thresholds"})
        doc["circuit_breakers"] = [
            _thresholds(th, cb / "thresholds" / i)
            for i, th in enumerate(c.circuit_breakers.thresholds)
        ]
    if c.health_checks:
        if len(c.health_checks) > 1:
            raise (at / "health_checks" / 1).error("one health check per cluster is supported")
        doc["health_check"] = _health_check(c.health_checks[0], at / "health_checks" / 0)
    if c.max_requests_per_connection is not None:
        doc["max_request_per_conn"] = c.max_requests_per_connection
    if c.outlier_detection is not None:
        doc["outlier_detection"] = _outlier_detection(c.outlier_detection, at / "outlier_detection")
    if c.lb_subset_config is not None:
        doc["lb_subset_config"] = _lb_subset(c.lb_subset_config, at / "lb_subset_config")
    if c.common_http_protocol_options is not None:
        _common_http(
            c.common_http_protocol_options, at / "common_http_protocol_options", doc, "idle_timeout"
        )
    if c.http_protocol_options is not None:
        # HTTP/1 codec tuning (header case, absolute URLs...): nothing of it is mapped
        _only(c.http_protocol_options, at / "http_protocol_options", set())
    if c.http2_protocol_options is not None:
        _http2_options(c.http2_protocol_options, at / "http2_protocol_options", cluster=True)
    opts = _upstream_http_options(c, at)
    if opts is not None:
        oat = at / "typed_extension_protocol_options" / t.UPSTREAM_HTTP_OPTIONS_KEY
        _only(opts, oat, {"common_http_protocol_options", "explicit_http_config"})
        if opts.common_http_protocol_options is not None:
            _common_http(
                opts.common_http_protocol_options,
                oat / "common_http_protocol_options",
                doc,
                "idle_timeout",
            )
        if opts.explicit_http_config is not None:
            ex = opts.explicit_http_config
            _only(
                ex,
                oat / "explicit_http_config",
                {"http_protocol_options", "http2_protocol_options"},
            )
            if ex.http_protocol_options is not None:
                _only(
                    ex.http_protocol_options,
                    oat / "explicit_http_config" / "http_protocol_options",
                    set(),
                )
            if ex.http2_protocol_options is not None:
                _http2_options(
                    ex.http2_protocol_options,
                    oat / "explicit_http_config" / "http2_protocol_options",
                    cluster=True,
                )

    if original_dst:
        # Each connection's original destination is the host (upstream/original_dst.py).
        if c.load_assignment is not None:
            raise (at / "load_assignment").error("an ORIGINAL_DST cluster takes no hosts")
        if c.eds_cluster_config is not None:
            raise (at / "eds_cluster_config").error("only an EDS cluster reads it")
        doc["type"] = "ORIGINAL_DST"
        doc["hosts"] = []
        return doc, None
    if kind == t.ClusterDiscoveryType.STATIC:
        if c.eds_cluster_config is not None:
            raise (at / "eds_cluster_config").error("only an EDS cluster reads it")
        hosts = _hosts(c.load_assignment, at / "load_assignment") if c.load_assignment else []
        doc["hosts"] = hosts
        return doc, None
    if kind == t.ClusterDiscoveryType.EDS:
        if c.load_assignment is not None:
            raise (at / "load_assignment").error("an EDS cluster takes its hosts from EDS")
        doc["hosts"] = []
        service = c.eds_cluster_config.service_name if c.eds_cluster_config else ""
        return doc, service or c.name
    if kind in (t.ClusterDiscoveryType.STRICT_DNS, t.ClusterDiscoveryType.LOGICAL_DNS):
        if c.eds_cluster_config is not None:
            raise (at / "eds_cluster_config").error("only an EDS cluster reads it")
        _dns(c, at, doc)
        doc["type"] = kind.name
        doc["hosts"] = (
            _hosts(c.load_assignment, at / "load_assignment") if c.load_assignment else []
        )
        return doc, None
    raise (at / "type").error(
        f"{kind.name}: {UNSUPPORTED} (use STATIC, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST or EDS)"
    )


def _dns(c: t.Cluster, at: _At, doc: dict[str, Any]) -> None:
    """A DNS cluster's knobs (upstream/dns.py): the endpoints' addresses are names."""
    family = c.dns_lookup_family
    if family is not None:
        if family.name not in ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED"):
            raise (at / "dns_lookup_family").error(f"{family.name}: {UNSUPPORTED}")
        doc["dns_lookup_family"] = family.name
    if c.dns_refresh_rate is not None:
        doc["dns_refresh_rate"] = _duration(
            c.dns_refresh_rate, at / "dns_refresh_rate", positive=True
        )
    if c.respect_dns_ttl:
        log.warning(
            "%s %r: %s: not enforced (names are resolved again every dns_refresh_rate)",
            at.kind,
            at.name,
            (at / "respect_dns_ttl").path,
        )


_HTTP2_KEYS = (
    "max_concurrent_streams",
    "initial_stream_window_size",
    "initial_connection_window_size",
)
# Envoy's frame-flood limits: same names and meaning as ``Http2Options``
_HTTP2_FLOOD_KEYS = (
    "max_outbound_control_frames",
    "max_consecutive_inbound_frames_with_empty_payload",
    "max_inbound_priority_frames_per_stream",
    "max_inbound_window_update_frames_per_data_frame_sent",
)


def _http2_options(opts: Any, at: _At, *, cluster: bool = False) -> dict[str, Any]:
    """The HTTP/2 settings trio-mesh has (``Http2Options``); any other one set is refused.
    On a cluster, the flood limits are the listener's (its ``proxy`` applies them to both
    sides): set there, they are not enforced, and a warning says so."""
    _only(opts, at, {*_HTTP2_KEYS, *_HTTP2_FLOOD_KEYS})
    if cluster:
        for key in _HTTP2_FLOOD_KEYS:
            if getattr(opts, key) is not None:
                log.warning(
                    "%s %r: %s: not enforced on a cluster (the listener's limit applies)",
                    at.kind,
                    at.name,
                    (at / key).path,
                )
    return {
        key: getattr(opts, key)
        for key in (*_HTTP2_KEYS, *_HTTP2_FLOOD_KEYS)
        if getattr(opts, key) is not None
    }


# --------------------------------------------------------------------------- endpoints

_SKIPPED_HEALTH = frozenset(
    {t.HealthStatus.UNHEALTHY, t.HealthStatus.DRAINING, t.HealthStatus.TIMEOUT}
)


def _hosts(cla: Any, at: _At) -> list[dict[str, Any]]:
    _only(cla, at, {"cluster_name", "endpoints", "policy"})
    if cla.policy is not None:
        # overprovisioning_factor only matters across priorities, which are refused below
        _only(cla.policy, at / "policy", {"overprovisioning_factor"})
    hosts: list[dict[str, Any]] = []
    for li, loc in enumerate(cla.endpoints):
        lat = at / "endpoints" / li
        # locality and its weight only matter to locality-weighted balancing (not enabled)
        _only(
            loc, lat, {"locality", "lb_endpoints", "load_balancing_weight", "metadata", "priority"}
        )
        if loc.priority:
            raise (lat / "priority").error(f"priority {loc.priority}: failover {UNSUPPORTED}")
        for ei, lb in enumerate(loc.lb_endpoints):
            eat = lat / "lb_endpoints" / ei
            _only(lb, eat, {"endpoint", "health_status", "load_balancing_weight", "metadata"})
            if lb.health_status in _SKIPPED_HEALTH:
                continue  # the control plane says: send nothing there
            if lb.endpoint is None:
                raise (eat / "endpoint").error("an endpoint is required")
            _only(lb.endpoint, eat / "endpoint", {"address", "hostname", "health_check_config"})
            host: dict[str, Any] = {
                "address": _socket_address(lb.endpoint.address, eat / "endpoint" / "address")
            }
            if lb.endpoint.hostname:
                host["hostname"] = lb.endpoint.hostname
            if (md := _lb_metadata(lb.metadata)) is not None:
                host["metadata"] = md
            if lb.load_balancing_weight is not None:
                w = lb.load_balancing_weight
                if not MIN_HOST_WEIGHT <= w <= MAX_HOST_WEIGHT:
                    raise (eat / "load_balancing_weight").error(
                        f"weight {w}: trio-mesh takes {MIN_HOST_WEIGHT} to {MAX_HOST_WEIGHT}"
                    )
                host["weight"] = w
            hosts.append(host)
    return hosts


def endpoint_hosts(cla: t.ClusterLoadAssignment) -> list[dict[str, Any]]:
    """The ``hosts`` of the cluster a ClusterLoadAssignment is for, from every locality;
    endpoints reported UNHEALTHY, DRAINING or TIMEOUT are left out."""
    return _hosts(cla, _At("ClusterLoadAssignment", cla.cluster_name))


# --------------------------------------------------------------------------- routes

_APPEND = {
    t.HeaderValueOptionHeaderAppendAction.APPEND_IF_EXISTS_OR_ADD: True,
    t.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD: False,
}


def _headers_to_add(options: list[Any], at: _At) -> list[dict[str, Any]]:
    out = []
    for i, opt in enumerate(options):
        oat = at / i
        _only(opt, oat, {"header", "append", "append_action"})
        if opt.header is None:
            raise (oat / "header").error("a header is required")
        _only(opt.header, oat / "header", {"key", "value"})
        if opt.append is not None:  # the deprecated BoolValue wins when set, as in Envoy
            append = opt.append
        elif opt.append_action in _APPEND:
            append = _APPEND[opt.append_action]
        else:
            raise (oat / "append_action").error(f"{opt.append_action.name}: {UNSUPPORTED}")
        out.append({"header": {"key": opt.header.key, "value": opt.header.value}, "append": append})
    return out


_HEADER_MUTATIONS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)


def _mutations(msg: Any, at: _At, doc: dict[str, Any]) -> None:
    for key in _HEADER_MUTATIONS:
        value = getattr(msg, key)
        if not value:
            continue
        doc[key] = _headers_to_add(value, at / key) if key.endswith("_add") else list(value)


def _regex(m: Any, at: _At) -> str:
    # RE2 and Python's re agree on the common syntax; routes.py rejects what re cannot compile
    _only(m, at, {"regex", "google_re2"})
    return m.regex


def _string_match(sm: Any, at: _At) -> tuple[str, bool]:
    """A StringMatcher as our ``(value, regex)`` pair: prefix, suffix and contains become
    anchored regexes, ``ignore_case`` an inline flag."""
    _only(sm, at, {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    flag = "(?i)" if sm.ignore_case else ""
    if sm.exact is not None:
        return (f"{flag}{re.escape(sm.exact)}", True) if flag else (sm.exact, False)
    if sm.prefix is not None:
        return f"{flag}{re.escape(sm.prefix)}.*", True
    if sm.suffix is not None:
        return f"{flag}.*{re.escape(sm.suffix)}", True
    if sm.contains is not None:
        return f"{flag}.*{re.escape(sm.contains)}.*", True
    if sm.safe_regex is not None:
        return f"{flag}{_regex(sm.safe_regex, at / 'safe_regex')}", True
    raise at.error("a match pattern is required")


def _header_matcher(h: Any, at: _At) -> dict[str, Any]:
    _only(
        h,
        at,
        {
            "name",
            "exact_match",
            "safe_regex_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
        },
    )
    out: dict[str, Any] = {"name": h.name}
    invert = h.invert_match
    if h.present_match is not None:
        out["present"] = True
        invert = invert != (not h.present_match)  # present_match false: matches when absent
    elif h.exact_match is not None:
        out["value"] = h.exact_match
    elif h.safe_regex_match is not None:
        out["value"], out["regex"] = _regex(h.safe_regex_match, at / "safe_regex_match"), True
    elif h.prefix_match is not None:
        out["value"], out["regex"] = f"{re.escape(h.prefix_match)}.*", True
    elif h.suffix_match is not None:
        out["value"], out["regex"] = f".*{re.escape(h.suffix_match)}", True
    elif h.contains_match is not None:
        out["value"], out["regex"] = f".*{re.escape(h.contains_match)}.*", True
    elif h.string_match is not None:
        value, regex = _string_match(h.string_match, at / "string_match")
        out["value"] = value
        if regex:
            out["regex"] = True
    else:
        out["present"] = True  # Envoy: no specifier means "the header is present"
    if invert:
        out["invert"] = True
    return out


def _query_matcher(q: Any, at: _At) -> dict[str, Any]:
    _only(q, at, {"name", "string_match", "present_match"})
    if q.string_match is not None:
        value, regex = _string_match(q.string_match, at / "string_match")
        return {"name": q.name, "value": value, "regex": regex}
    if q.present_match:
        return {"name": q.name, "present": True}
    raise at.error("give string_match or present_match: true")


def _route_match(m: Any, at: _At) -> dict[str, Any]:
    _only(m, at, {"prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters"})
    out: dict[str, Any] = {}
    if m.prefix is not None:
        out["prefix"] = m.prefix
    elif m.path is not None:
        out["path"] = m.path
    elif m.safe_regex is not None:
        out["regex"] = _regex(m.safe_regex, at / "safe_regex")
    if m.case_sensitive is not None:
        out["case_sensitive"] = m.case_sensitive
    if m.headers:
        out["headers"] = [_header_matcher(h, at / "headers" / i) for i, h in enumerate(m.headers)]
    if m.query_parameters:
        out["query_parameters"] = [
            _query_matcher(q, at / "query_parameters" / i) for i, q in enumerate(m.query_parameters)
        ]
    return out


def _retry_policy(rp: Any, at: _At) -> dict[str, Any]:
    _only(rp, at, {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes"})
    conditions = [c.strip() for c in rp.retry_on.split(",") if c.strip()]
    for c in conditions:
        if c not in RETRY_CONDITIONS:
            raise (at / "retry_on").error(f"retry condition {c!r}: {UNSUPPORTED}")
    out: dict[str, Any] = {
        "retry_on": ",".join(conditions),
        # Envoy's default is one retry
        "num_retries": rp.num_retries if rp.num_retries is not None else 1,
    }
    if rp.per_try_timeout is not None:
        out["per_try_timeout"] = _duration(rp.per_try_timeout, at / "per_try_timeout")
    if rp.retriable_status_codes:
        out["retriable_status_codes"] = list(rp.retriable_status_codes)
    return out


def _route_action(ra: Any, at: _At) -> dict[str, Any]:
    _only(
        ra,
        at,
        {
            "cluster",
            "cluster_header",
            "weighted_clusters",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "timeout",
            "retry_policy",
            "hash_policy",
            "metadata_match",
        },
    )
    out: dict[str, Any] = {}
    if (match := _lb_metadata(ra.metadata_match)) is not None:
        out["metadata_match"] = match
    if ra.cluster is not None:
        out["cluster_name"] = ra.cluster
    elif ra.cluster_header is not None:
        out["cluster_header"] = ra.cluster_header
    elif ra.weighted_clusters is not None:
        wat = at / "weighted_clusters"
        _only(ra.weighted_clusters, wat, {"clusters", "total_weight"})
        entries = []
        for i, cw in enumerate(ra.weighted_clusters.clusters):
            cat = wat / "clusters" / i
            _only(cw, cat, {"name", "weight", "metadata_match"})
            if not cw.weight:
                raise (cat / "weight").error("a weight of 1 or more is required")
            entry: dict[str, Any] = {"name": cw.name, "weight": cw.weight}
            if (match := _lb_metadata(cw.metadata_match)) is not None:
                entry["metadata_match"] = match
            entries.append({"cluster": entry})
        out["weighted_clusters"] = entries
    else:
        raise at.error("a cluster, cluster_header or weighted_clusters is required")
    if ra.prefix_rewrite:  # "" means no rewrite in both
        out["prefix_rewrite"] = ra.prefix_rewrite
    if ra.regex_rewrite is not None:
        rr = ra.regex_rewrite
        _only(rr, at / "regex_rewrite", {"pattern", "substitution"})
        if rr.pattern is None:
            raise (at / "regex_rewrite" / "pattern").error("a pattern is required")
        out["regex_rewrite"] = {
            "pattern": {"regex": _regex(rr.pattern, at / "regex_rewrite" / "pattern")},
            "substitution": rr.substitution,
        }
    if ra.host_rewrite_literal is not None:
        out["host_rewrite"] = ra.host_rewrite_literal
    if ra.auto_host_rewrite:
        out["auto_host_rewrite"] = True
    if ra.timeout is not None:  # unset: Envoy's 15s, which is our default too
        out["timeout"] = _duration(ra.timeout, at / "timeout")
    if ra.retry_policy is not None:
        out["retry_policy"] = _retry_policy(ra.retry_policy, at / "retry_policy")
    if ra.hash_policy:
        out["hash_policy"] = [
            _hash_policy(hp, at / "hash_policy" / i) for i, hp in enumerate(ra.hash_policy)
        ]
    return out


def _hash_policy(hp: Any, at: _At) -> dict[str, Any]:
    """One of a route's hash policies (``terminal`` and ``filter_state`` are refused)."""
    _only(hp, at, {"header", "cookie", "connection_properties", "query_parameter"})
    if hp.header is not None:
        _only(hp.header, at / "header", {"header_name"})
        return {"header": {"key": hp.header.header_name}}
    if hp.cookie is not None:
        _only(hp.cookie, at / "cookie", {"name", "ttl", "path"})
        cookie: dict[str, Any] = {"name": hp.cookie.name}
        if hp.cookie.path:
            cookie["path"] = hp.cookie.path
        if hp.cookie.ttl is not None:
            cookie["ttl"] = _duration(hp.cookie.ttl, at / "cookie" / "ttl")
        return {"cookie": cookie}
    if hp.connection_properties is not None:
        if not hp.connection_properties.source_ip:
            raise (at / "connection_properties" / "source_ip").error("only source_ip: true")
        return {"source_ip": {}}
    if hp.query_parameter is not None:
        return {"query_parameter": {"name": hp.query_parameter.name}}
    raise at.error("a header, cookie, connection_properties or query_parameter is required")


_REDIRECT_CODES = {
    t.RedirectActionRedirectResponseCode.MOVED_PERMANENTLY: 301,
    t.RedirectActionRedirectResponseCode.FOUND: 302,
    t.RedirectActionRedirectResponseCode.SEE_OTHER: 303,
    t.RedirectActionRedirectResponseCode.TEMPORARY_REDIRECT: 307,
    t.RedirectActionRedirectResponseCode.PERMANENT_REDIRECT: 308,
}


def _redirect(rd: Any, at: _At) -> dict[str, Any]:
    _only(
        rd,
        at,
        {
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
            "strip_query",
        },
    )
    out: dict[str, Any] = {"response_code": _REDIRECT_CODES[rd.response_code]}
    if rd.https_redirect:
        out["scheme_redirect"] = "https"
    elif rd.scheme_redirect is not None:
        out["scheme_redirect"] = rd.scheme_redirect
    if rd.host_redirect:
        out["host_redirect"] = rd.host_redirect
    if rd.path_redirect is not None:
        out["path_redirect"] = rd.path_redirect
    elif rd.prefix_rewrite is not None:
        out["prefix_rewrite"] = rd.prefix_rewrite
    if rd.strip_query:
        out["strip_query"] = True
    return out


def _direct_response(dr: Any, at: _At) -> dict[str, Any]:
    _only(dr, at, {"status", "body"})
    out: dict[str, Any] = {"status": dr.status}
    if dr.body is not None:
        bat = at / "body"
        _only(dr.body, bat, {"inline_string", "inline_bytes"})
        if dr.body.inline_string is not None:
            out["body"] = dr.body.inline_string
        elif dr.body.inline_bytes is not None:
            try:
                out["body"] = dr.body.inline_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise (bat / "inline_bytes").error("only UTF-8 text bodies are supported") from None
    return out


def _route(r: Any, at: _At) -> dict[str, Any]:
    # decorator, tracing and stat_prefix only name things in traces and stats
    _only(
        r,
        at,
        {
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "metadata",
            "decorator",
            "tracing",
            "stat_prefix",
            "typed_per_filter_config",
            *_HEADER_MUTATIONS,
        },
    )
    out: dict[str, Any] = {}
    if r.name:
        out["name"] = r.name
    if r.typed_per_filter_config:
        out["per_filter_config"] = _per_filter_configs(
            r.typed_per_filter_config, at / "typed_per_filter_config"
        )
    out["match"] = _route_match(r.match, at / "match") if r.match is not None else {}
    if r.route is not None:
        action = _route_action(r.route, at / "route")
        # our header mutations live on the action: a Route's own ones join it
        _mutations(r, at, action)
        out["route"] = action
        return out
    for key in _HEADER_MUTATIONS:
        if getattr(r, key):
            raise (at / key).error("header mutations are supported on forwarding routes only")
    if r.redirect is not None:
        out["redirect"] = _redirect(r.redirect, at / "redirect")
    elif r.direct_response is not None:
        out["direct_response"] = _direct_response(r.direct_response, at / "direct_response")
    else:
        raise at.error("a route, redirect or direct_response is required")
    return out


def _virtual_host(vh: Any, at: _At) -> dict[str, Any]:
    _only(vh, at, {"name", "domains", "routes", "metadata", *_HEADER_MUTATIONS})
    out: dict[str, Any] = {
        "name": vh.name,
        "domains": list(vh.domains),
        "routers": [_route(r, at / "routes" / i) for i, r in enumerate(vh.routes)],
    }
    _mutations(vh, at, out)
    return out


def _route_config(rc: Any, at: _At, name: str) -> dict[str, Any]:
    # validate_clusters is a load-time check we always do; the size cap has no equivalent
    # to enforce, and our domains are always matched without the port
    _only(
        rc,
        at,
        {
            "name",
            "virtual_hosts",
            "validate_clusters",
            "metadata",
            "max_direct_response_body_size_bytes",
            "ignore_port_in_host_matching",
            *_HEADER_MUTATIONS,
        },
    )
    out: dict[str, Any] = {
        "router_config_name": name,
        "virtual_hosts": [
            _virtual_host(vh, at / "virtual_hosts" / i) for i, vh in enumerate(rc.virtual_hosts)
        ],
    }
    _mutations(rc, at, out)
    return out


def route_config_doc(rc: t.RouteConfiguration) -> dict[str, Any]:
    """A ``servers[].routers[]`` entry named as the RouteConfiguration."""
    return _route_config(rc, _At("RouteConfiguration", rc.name), rc.name)


# --------------------------------------------------------------------------- HTTP filters

FAULT_TYPE = t.type_url(HttpFault)
COMPRESSOR_TYPE = t.type_url(Compressor)
COMPRESSOR_PER_ROUTE_TYPE = t.type_url(CompressorPerRoute)
GZIP_TYPE = t.type_url(Gzip)
LOCAL_RATELIMIT_TYPE = t.type_url(LocalRateLimit)
RBAC_TYPES = (t.type_url(Rbac), t.type_url(RbacPerRoute))
FILTER_CONFIG_TYPE = t.type_url(FilterConfig)

#: Envoy's usual filter names -> our stream filter types, for a per-route
#: ``FilterConfig{disabled: true}`` that carries no config to tell the filter by.
_WELL_KNOWN = {
    "envoy.filters.http.fault": "fault",
    "envoy.filters.http.compressor": "gzip",
    "envoy.filters.http.local_ratelimit": "flowcontrol",
}

_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}  # HUNDRED, TEN_THOUSAND, MILLION


def _percent(fp: Any, at: _At) -> float:
    """A FractionalPercent as 0-100; unset is 0 and over the denominator is 100, as in Envoy."""
    if fp is None:
        return 0.0
    _only(fp, at, {"numerator", "denominator"})
    return min(100.0, fp.numerator * 100 / _DENOMINATORS[int(fp.denominator)])


def _runtime_percent(rfp: Any, at: _At) -> float:
    # trio-mesh has no runtime layer: a runtime key always reads its default, as in an Envoy
    # without that key
    _only(rfp, at, {"default_value", "runtime_key"})
    return _percent(rfp.default_value, at / "default_value")


def _fault(f: Any, at: _At) -> dict[str, Any]:
    # the *_runtime keys only rename runtime overrides (none here); stats and metadata
    _only(
        f,
        at,
        {
            "delay",
            "abort",
            "upstream_cluster",
            "headers",
            "delay_percent_runtime",
            "abort_percent_runtime",
            "delay_duration_runtime",
            "abort_http_status_runtime",
            "abort_grpc_status_runtime",
            "disable_downstream_cluster_stats",
            "filter_metadata",
        },
    )
    out: dict[str, Any] = {}
    if f.delay is not None:
        dat = at / "delay"
        _only(f.delay, dat, {"fixed_delay", "percentage"})
        if f.delay.fixed_delay is None:
            raise (dat / "fixed_delay").error("a fixed_delay is required")
        out["delay"] = {
            "fixed_delay": _duration(f.delay.fixed_delay, dat / "fixed_delay"),
            "percentage": _percent(f.delay.percentage, dat / "percentage"),
        }
    if f.abort is not None:
        aat = at / "abort"
        _only(f.abort, aat, {"http_status", "grpc_status", "percentage"})
        abort: dict[str, Any] = {"percentage": _percent(f.abort.percentage, aat / "percentage")}
        if f.abort.http_status is not None:
            abort["http_status"] = f.abort.http_status
        elif f.abort.grpc_status is not None:
            abort["grpc_status"] = f.abort.grpc_status
        else:
            raise aat.error("an http_status or grpc_status is required")
        out["abort"] = abort
    if f.upstream_cluster:
        out["upstream_cluster"] = f.upstream_cluster
    if f.headers:
        out["headers"] = [_header_matcher(h, at / "headers" / i) for i, h in enumerate(f.headers)]
    return out


def _content_filter(common: Any, at: _At, out: dict[str, Any]) -> bool:
    """The response direction's common config into ``out``; False when it is switched off."""
    _only(common, at, {"enabled", "min_content_length", "content_type"})
    if common.enabled is not None:
        _only(common.enabled, at / "enabled", {"default_value", "runtime_key"})
        if common.enabled.default_value is False:
            return False
    if common.min_content_length is not None:
        out["content_length"] = common.min_content_length
    if common.content_type:
        out["content_types"] = list(common.content_type)
    return True


def _gzip(c: Any, at: _At) -> dict[str, Any] | None:
    """Our ``gzip`` config, or None for a compressor switched off (it compresses nothing)."""
    # choose_first only ranks several compressor filters, which would be refused as duplicates
    _only(
        c,
        at,
        {
            "content_length",
            "content_type",
            "runtime_enabled",
            "compressor_library",
            "response_direction_config",
            "choose_first",
        },
    )
    out: dict[str, Any] = {}
    lib_at = at / "compressor_library"
    if c.compressor_library is None:
        raise lib_at.error("a compressor_library is required")
    _only(c.compressor_library, lib_at, {"name", "typed_config"})
    gz = _unpack(c.compressor_library.typed_config, lib_at / "typed_config", (GZIP_TYPE,))
    # memory_level, window_bits, strategy and chunk_size tune zlib: same content, other bytes
    _only(
        gz,
        lib_at / "typed_config",
        {"compression_level", "memory_level", "window_bits", "compression_strategy", "chunk_size"},
    )
    # DEFAULT_COMPRESSION (0, unset) is zlib's 6, as ours; BEST_SPEED is 1, BEST_COMPRESSION 9
    if int(gz.compression_level):
        out["gzip_level"] = int(gz.compression_level)
    enabled = True
    if c.runtime_enabled is not None:
        _only(c.runtime_enabled, at / "runtime_enabled", {"default_value", "runtime_key"})
        enabled = c.runtime_enabled.default_value is not False
    if c.content_length is not None:  # deprecated, but still read when set
        out["content_length"] = c.content_length
    if c.content_type:
        out["content_types"] = list(c.content_type)
    rd = c.response_direction_config
    if rd is not None:
        rat = at / "response_direction_config"
        # a strong ETag is weakened (weaken_etag_on_compress); Envoy's default drops it:
        # either way no cache takes the compressed bytes as the upstream's
        _only(rd, rat, {"common_config", "weaken_etag_on_compress"})
        if rd.common_config is not None:
            enabled = _content_filter(rd.common_config, rat / "common_config", out) and enabled
    return out if enabled else None


def _local_ratelimit(rl: Any, at: _At) -> dict[str, Any]:
    # gRPC refusals are always RESOURCE_EXHAUSTED (rate_limited_as_resource_exhausted);
    # stage and always_consume_default_token_bucket only matter with descriptors (refused)
    _only(
        rl,
        at,
        {
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "enable_x_ratelimit_headers",
            "rate_limited_as_resource_exhausted",
            "always_consume_default_token_bucket",
        },
    )
    out: dict[str, Any] = {}
    # Envoy enables and enforces the limit on 0% of the requests unless told otherwise
    shares = []
    for key in ("filter_enabled", "filter_enforced"):
        value = getattr(rl, key)
        share = _runtime_percent(value, at / key) if value is not None else 0.0
        if share not in (0.0, 100.0):
            raise (at / key).error(f"{share:g}%: only 0% or 100% is supported")
        shares.append(share)
    if shares != [100.0, 100.0]:
        # limits nothing; kept (switched off) so that routes can still turn it on
        out["global_switch"] = False
    if rl.token_bucket is not None:
        bat = at / "token_bucket"
        tb = rl.token_bucket
        _only(tb, bat, {"max_tokens", "tokens_per_fill", "fill_interval"})
        if tb.max_tokens < 1:
            raise (bat / "max_tokens").error("a max_tokens of 1 or more is required")
        if tb.fill_interval is None:
            raise (bat / "fill_interval").error("a fill_interval is required")
        out["max_tokens"] = tb.max_tokens
        out["tokens_per_fill"] = tb.tokens_per_fill if tb.tokens_per_fill is not None else 1
        out["fill_interval"] = _duration(tb.fill_interval, bat / "fill_interval", positive=True)
    elif out.get("global_switch", True):
        raise (at / "token_bucket").error("a token_bucket is required")
    # Envoy's refusal: 429 (or the status given) with the body "local_rate_limited"
    status = int(rl.status.code) if rl.status is not None else 0
    out["action"] = {"status": status or 429, "body": "local_rate_limited"}
    # Envoy sends the x-ratelimit-* headers only when asked to (ours by default)
    out["ratelimit_headers"] = int(rl.enable_x_ratelimit_headers) != 0
    return out


def _http_filter(hf: Any, at: _At) -> dict[str, Any] | None:
    """An HTTP filter other than the router as a ``stream_filters`` entry (None: it does
    nothing, e.g. a compressor switched off)."""
    url = hf.typed_config.type_url if hf.typed_config is not None else "no typed_config"
    cat = at / "typed_config"
    if url == FAULT_TYPE:
        return {"type": "fault", "config": _fault(_unpack(hf.typed_config, cat, (url,)), cat)}
    if url == COMPRESSOR_TYPE:
        config = _gzip(_unpack(hf.typed_config, cat, (url,)), cat)
        return {"type": "gzip", "config": config} if config is not None else None
    if url == LOCAL_RATELIMIT_TYPE:
        config = _local_ratelimit(_unpack(hf.typed_config, cat, (url,)), cat)
        return {"type": "flowcontrol", "config": config}
    if url in RBAC_TYPES:
        raise at.error(
            f"HTTP filter {hf.name!r} ({url}): RBAC is {UNSUPPORTED}"
            " (the ip_access filter allows or denies client addresses)"
        )
    raise at.error(f"HTTP filter {hf.name!r} ({url}): {UNSUPPORTED}")


def _per_filter(name: str, any_: Any, at: _At) -> tuple[str, Any]:
    """One ``typed_per_filter_config`` entry as ``(our filter type, its per_filter_config)``.
    The filter is told by the config's type (RDS arrives without the listener), or by
    Envoy's usual name for a bare ``FilterConfig{disabled: true}``."""
    if any_ is not None and any_.type_url == FILTER_CONFIG_TYPE:
        fc = _unpack(any_, at, (FILTER_CONFIG_TYPE,))
        # is_optional only lets Envoy skip a filter it does not know: refusing is stricter
        _only(fc, at, {"config", "disabled", "is_optional"})
        if fc.disabled:
            if fc.config is not None:
                raise (at / "config").error("give disabled or a config, not both")
            kind = _WELL_KNOWN.get(name)
            if kind is None:
                raise at.error(
                    f"cannot tell which filter {name!r} is: use its config's type"
                    f" or one of {', '.join(sorted(_WELL_KNOWN))}"
                )
            return kind, {"disabled": True}
        if fc.config is None:
            raise (at / "config").error("a config is required")
        return _per_filter(name, fc.config, at / "config")
    url = any_.type_url if any_ is not None else "no typed_config"
    if url == FAULT_TYPE:
        return "fault", _fault(_unpack(any_, at, (url,)), at)
    if url == LOCAL_RATELIMIT_TYPE:
        return "flowcontrol", _local_ratelimit(_unpack(any_, at, (url,)), at)
    if url == COMPRESSOR_PER_ROUTE_TYPE:
        pr = _unpack(any_, at, (url,))
        _only(pr, at, {"disabled"})
        if not pr.disabled:
            raise (at / "disabled").error("only disabled: true is supported")
        return "gzip", {"disabled": True}
    raise (at / "type_url").error(f"{url!r}: {UNSUPPORTED}")


def _per_filter_configs(configs: dict[str, Any], at: _At) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, any_ in configs.items():
        kind, config = _per_filter(name, any_, at / name)
        if kind in out:
            raise (at / name).error(f"a second config for the {kind} filter")
        out[kind] = config
    return out


# --------------------------------------------------------------------------- listeners


@attrs.frozen
class ListenerParts:
    """A converted Listener: its ``servers[].listeners[]`` entry, the RDS route
    configurations it names (to subscribe to), and the router configs of its inline
    ``route_config``\\ s (``servers[].routers[]`` entries, named ``<listener>/<name>``)."""

    listener: dict[str, Any]
    rds: list[str] = attrs.field(factory=list)
    inline_routers: list[dict[str, Any]] = attrs.field(factory=list)


_CODECS = {"AUTO": "Auto", "HTTP1": "Http1", "HTTP2": "Http2"}
#: Where ``_hcm`` keeps the first HTTP filters of a listener while its chains convert.
_HCM_FILTERS = "__hcm_filters__"

_HCM_FIELDS = frozenset(
    {
        "codec_type",
        "stat_prefix",
        "rds",
        "route_config",
        "http_filters",
        "common_http_protocol_options",
        "http2_protocol_options",
        "max_request_headers_kb",
        "request_headers_timeout",
        "use_remote_address",
        "skip_xff_append",
        "generate_request_id",
        "forward_client_cert_details",
        "set_current_client_cert_details",
        "tracing",
    }
)

# --------------------------------------------------------------------------- HCM tracing
#
# Tracing changes neither security nor access, so the rule here is: a resource Envoy itself
# would reject (a percentage over 100, a bad header) is refused with its path; a tracer Envoy
# accepts but trio-mesh cannot export to (another tracer, OTLP over gRPC) turns this listener's
# tracing off with a warning instead of refusing the listener and its traffic; a field not
# enforced warns. The warnings go to the ``trio_mesh.xds`` log: an xDS snapshot's config
# warnings are not reported anywhere else.

OTEL_TRACER = "envoy.tracers.opentelemetry"


def _tracing_off() -> dict[str, Any]:
    """The proxy's ``tracing.provider`` of a listener that is not traced."""
    return {"enable": False}


_TRACING_FIELDS = frozenset(
    {
        "client_sampling",
        "random_sampling",
        "overall_sampling",
        "verbose",
        "max_path_tag_length",
        "custom_tags",
        "provider",
        "spawn_upstream_span",
        "operation",
        "upstream_operation",
    }
)
_SPAN_FIELDS = {
    "verbose": "spans get no stream event logs yet",
    "max_path_tag_length": "spans carry no path tag to truncate",
    "custom_tags": "spans get no custom tags yet",
    "spawn_upstream_span": "one server span per request, no upstream span",
    "operation": "span names are not configurable yet",
    "upstream_operation": "no upstream span",
}
_OTEL_IGNORED = {
    "resource_detectors": "the resource has service.name only",
    "sampler": "random_sampling alone decides which requests start a trace",
    "max_cache_size": "the exporter's queue is bounded by the top-level config",
    "set_telemetry_sdk_resource_attributes": "the SDK sets its own",
}


def _warn(at: _At, reason: str) -> None:
    log.warning("%s %r: %s: %s", at.kind, at.name, at.path, reason)


def _tracing_percent(p: Any, at: _At) -> float:
    """An ``envoy.type.v3.Percent`` (0-100; Envoy refuses anything else)."""
    _only(p, at, {"value"})
    if not 0 <= p.value <= 100:  # NaN fails too
        raise (at / "value").error(f"expected a percentage from 0 to 100, got {p.value:g}")
    return float(p.value)


def _tracing(tr: Any, at: _At) -> dict[str, Any]:
    """HCM ``tracing`` -> the proxy's ``tracing`` (`trio_mesh.config.proxy_tracing`)."""
    _only(tr, at, _TRACING_FIELDS)
    out: dict[str, Any] = {}
    if tr.random_sampling is not None:
        out["random_sampling"] = _tracing_percent(tr.random_sampling, at / "random_sampling")
    for key, why in (
        ("client_sampling", "x-client-trace-id forces no trace here"),
        ("overall_sampling", "random_sampling alone decides which requests start a trace"),
    ):
        if getattr(tr, key) is not None:
            value = _tracing_percent(getattr(tr, key), at / key)
            if value != 100:
                _warn(at / key, f"{value:g}: not enforced: {why}: ignored")
    cls: type = type(tr)  # type[Any] would not count as Hashable for the cache
    empty = _empty(cls)
    for key, why in _SPAN_FIELDS.items():
        if getattr(tr, key) != getattr(empty, key):
            _warn(at / key, f"not enforced: {why}: ignored")
    # Envoy: no provider here means the bootstrap's; ours is the top-level ``tracing``
    if tr.provider is not None:
        out["provider"] = _tracer(tr.provider, at / "provider")
    return out


def _tracer(provider: Any, at: _At) -> dict[str, Any]:
    """The OpenTelemetry tracer over OTLP/HTTP -> a ``TracingConfig``; any other: off."""
    _only(provider, at, {"name", "typed_config"})
    only = f"only {OTEL_TRACER} with an http_service"
    any_ = provider.typed_config
    if any_ is None or any_.type_url != t.OTEL_TRACER_TYPE:
        what = any_.type_url if any_ is not None else "no typed_config"
        _warn(
            at / "typed_config",
            f"{provider.name or '-'} ({what}): {UNSUPPORTED} ({only}): tracing is off for"
            " this listener",
        )
        return _tracing_off()
    tat = at / "typed_config"
    otel = _unpack(any_, tat, (t.OTEL_TRACER_TYPE,))
    _only(otel, tat, {"grpc_service", "http_service", "service_name", *_OTEL_IGNORED})
    if otel.grpc_service is not None or otel.http_service is None:
        key = "grpc_service" if otel.grpc_service is not None else "http_service"
        reason = "OTLP over gRPC" if key == "grpc_service" else "none"
        _warn(tat / key, f"{reason}: {UNSUPPORTED} ({only}): tracing is off for this listener")
        return _tracing_off()
    cls: type = type(otel)
    empty = _empty(cls)
    for key, why in _OTEL_IGNORED.items():
        if getattr(otel, key) != getattr(empty, key):
            _warn(tat / key, f"not enforced: {why}: ignored")
    config = _otlp_http(otel.http_service, tat / "http_service")
    if otel.service_name:
        config["service_name"] = otel.service_name
    return {"enable": True, "driver": "opentelemetry", "config": config}


def _otlp_http(hs: Any, at: _At) -> dict[str, Any]:
    """``http_service`` -> the exporter's ``endpoint``, ``export_timeout`` and ``headers``."""
    _only(hs, at, {"http_uri", "request_headers_to_add", "formatters"})
    uat = at / "http_uri"
    if hs.http_uri is None or not hs.http_uri.uri:
        raise (uat / "uri").error("a uri is required")
    uri = hs.http_uri
    _only(uri, uat, {"uri", "cluster", "timeout"})
    if not uri.uri.startswith(("http://", "https://")):
        raise (uat / "uri").error(f"expected an http:// or https:// URL, got {uri.uri!r}")
    config: dict[str, Any] = {"endpoint": uri.uri}
    if uri.cluster:
        # the exporter has its own HTTP client: the uri's scheme decides TLS, not the cluster
        _warn(
            uat / "cluster",
            f"{uri.cluster!r}: not enforced: spans go to the uri's host directly (its scheme"
            " decides TLS), not through the cluster nor its transport socket: ignored",
        )
    if uri.timeout is not None:
        config["export_timeout"] = _duration(uri.timeout, uat / "timeout", positive=True)
    headers: dict[str, str] = {}
    for i, opt in enumerate(hs.request_headers_to_add):
        oat = at / "request_headers_to_add" / i
        # each header is added once to a request of the exporter's own: append is moot
        _only(opt, oat, {"header", "append", "append_action", "keep_empty_value"})
        if opt.header is None:
            raise (oat / "header").error("a header is required")
        _only(opt.header, oat / "header", {"key", "value", "raw_value"})
        key = opt.header.key.lower()
        value = opt.header.value or opt.header.raw_value.decode("latin-1")
        if not value and not opt.keep_empty_value:
            continue  # Envoy adds no empty header unless told to
        problem = header_name_problem(key) or _header_value_problem(value)
        if problem is not None:
            raise (oat / "header").error(problem)
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if hs.formatters:
        _warn(at / "formatters", "not enforced: header values are sent as written: ignored")
    if headers:
        config["headers"] = headers
    return config


def _hcm(hcm: Any, at: _At, listener: dict[str, Any], parts: ListenerParts) -> dict[str, Any]:
    _only(hcm, at, _HCM_FIELDS)
    if hcm.codec_type.name not in _CODECS:
        raise (at / "codec_type").error(f"{hcm.codec_type.name}: {UNSUPPORTED}")
    config: dict[str, Any] = {
        "downstream_protocol": _CODECS[hcm.codec_type.name],
        # Envoy's upstream protocol is the cluster's: HTTP/1.1 unless it says otherwise
        "upstream_protocol": "Http1",
    }
    if hcm.rds is not None:
        rat = at / "rds"
        _only(hcm.rds, rat, {"route_config_name", "config_source"})
        if not hcm.rds.route_config_name:
            raise (rat / "route_config_name").error("a route_config_name is required")
        config["router_config_name"] = hcm.rds.route_config_name
        parts.rds.append(hcm.rds.route_config_name)
    elif hcm.route_config is not None:
        name = f"{listener['name']}/{hcm.route_config.name or 'inline'}"
        parts.inline_routers.append(_route_config(hcm.route_config, at / "route_config", name))
        config["router_config_name"] = name
    else:
        raise at.error("rds or route_config is required")

    stream_filters: list[dict[str, Any]] = []
    for i, hf in enumerate(hcm.http_filters):
        fat = at / "http_filters" / i
        _only(hf, fat, {"name", "typed_config", "is_optional"})
        if hf.typed_config is None or hf.typed_config.type_url != t.ROUTER_TYPE:
            # the filters before the router run in order: our stream filters, in order
            entry = _http_filter(hf, fat)
            if entry is None:
                continue
            if any(e["type"] == entry["type"] for e in stream_filters):
                # a route's per_filter_config is keyed by type: it could not tell them apart
                raise fat.error(f"a second {entry['type']} filter: {UNSUPPORTED}")
            stream_filters.append(entry)
            continue
        if i != len(hcm.http_filters) - 1:
            raise fat.error("the router filter must be the last HTTP filter")
        # the Router's own settings (stats, tracing, header strictness) are not mapped
        _unpack(hf.typed_config, fat / "typed_config", (t.ROUTER_TYPE,))
    # Stream filters are the listener's (MOSN): every HTTP connection manager of the
    # listener's chains must have the same ones (or none).
    if listener.setdefault(_HCM_FILTERS, stream_filters) != stream_filters:
        raise at.error("a second HTTP connection manager with other HTTP filters")
    if stream_filters:
        listener["stream_filters"] = stream_filters

    if hcm.common_http_protocol_options is not None:
        cat = at / "common_http_protocol_options"
        _only(hcm.common_http_protocol_options, cat, {"idle_timeout", "max_headers_count"})
        opts = hcm.common_http_protocol_options
        if opts.idle_timeout is not None and opts.idle_timeout.total_seconds() > 0:
            listener["connection_idle_timeout"] = _duration(opts.idle_timeout, cat / "idle_timeout")
        if opts.max_headers_count is not None:
            config["max_request_headers"] = opts.max_headers_count
    if hcm.http2_protocol_options is not None:
        config["http2"] = _http2_options(hcm.http2_protocol_options, at / "http2_protocol_options")
    if hcm.max_request_headers_kb is not None:
        config["max_request_header_bytes"] = hcm.max_request_headers_kb * 1024
    if hcm.request_headers_timeout is not None and hcm.request_headers_timeout.total_seconds():
        config["request_header_timeout"] = _duration(
            hcm.request_headers_timeout, at / "request_headers_timeout"
        )
    # Envoy appends the client to x-forwarded-for only with use_remote_address
    config["add_x_forwarded_for"] = bool(hcm.use_remote_address) and not hcm.skip_xff_append
    if hcm.generate_request_id is not None:
        config["generate_request_id"] = hcm.generate_request_id
    # x-forwarded-client-cert: the enum's names are ours; SANITIZE (0) is both defaults
    if hcm.forward_client_cert_details.name != "SANITIZE":
        config["forward_client_cert_details"] = hcm.forward_client_cert_details.name
    details = hcm.set_current_client_cert_details
    if details is not None:
        dat = at / "set_current_client_cert_details"
        _only(details, dat, {"subject", "cert", "chain", "dns", "uri"})
        config["set_current_client_cert_details"] = {
            "subject": bool(details.subject),
            "cert": details.cert,
            "chain": details.chain,  # refused by the config layer, with its path
            "dns": details.dns,
            "uri": details.uri,
        }
    if hcm.tracing is not None:
        config["tracing"] = _tracing(hcm.tracing, at / "tracing")
    else:  # Envoy: an HCM without tracing is not traced, whatever else is configured
        config["tracing"] = {"provider": _tracing_off()}
    return {"type": "proxy", "config": config}


def _tcp_proxy(tp: Any, at: _At) -> dict[str, Any]:
    _only(tp, at, {"stat_prefix", "cluster", "idle_timeout", "max_connect_attempts"})
    if not tp.cluster:
        raise (at / "cluster").error("a cluster is required")
    config: dict[str, Any] = {"cluster": tp.cluster}
    if tp.stat_prefix:
        config["stat_prefix"] = tp.stat_prefix
    # Envoy: unset is one hour, 0s disables it (our None)
    idle = tp.idle_timeout if tp.idle_timeout is not None else datetime.timedelta(hours=1)
    if idle.total_seconds() != 0:
        config["idle_timeout"] = _duration(idle, at / "idle_timeout")
    if tp.max_connect_attempts is not None:
        config["max_connect_attempts"] = tp.max_connect_attempts
    return {"type": "tcp_proxy", "config": config}


_LISTENER_FIELDS = frozenset(
    {
        "name",
        "address",
        "filter_chains",
        "bind_to_port",
        "per_connection_buffer_limit_bytes",  # the listener key of the same name
        # stats, metadata, drain and socket-event tuning: no effect on what is forwarded
        "stat_prefix",
        "metadata",
        "traffic_direction",
        "drain_type",
        "tcp_backlog_size",
        "ignore_global_conn_limit",
        "max_connections_to_accept_per_socket_event",
        "bypass_overload_manager",
        "enable_reuse_port",
        "reuse_port",
        "listener_filters_timeout",
        "continue_on_listener_filters_timeout",
        "listener_filters",  # the TLS inspector only: see _listener_filters
        "default_filter_chain",
    }
)


def _listener_filters(lst: t.Listener, at: _At, doc: dict[str, Any]) -> None:
    """Envoy's TLS inspector: accepted, and nothing to set. It only reads the ClientHello
    (server name, ALPN, TLS or not) for the filter chain match, which every listener with a
    TLS chain or a match does here anyway. It is NOT MOSN's ``inspector`` (a plaintext
    client served in cleartext by a TLS chain): in Envoy a plaintext client on a chain with a
    TLS transport socket fails its handshake, and an xDS listener that means plaintext says so
    with a ``raw_buffer`` chain. Envoy's ``proxy_protocol``: the listener's
    ``listener_filters``. Any other listener filter is refused."""
    filters = []
    for i, lf in enumerate(lst.listener_filters):
        fat = at / "listener_filters" / i
        _only(lf, fat, {"name", "typed_config"})
        if lf.typed_config is None and lf.name == "envoy.filters.listener.tls_inspector":
            continue
        if lf.typed_config is None and lf.name == "envoy.filters.listener.proxy_protocol":
            filters.append({"type": "proxy_protocol", "config": {}})
            continue
        if lf.typed_config is None and lf.name == "envoy.filters.listener.original_dst":
            doc["use_original_dst"] = True
            continue
        if lf.typed_config is None:
            raise fat.error(f"{lf.name!r}: {UNSUPPORTED}")
        tat = fat / "typed_config"
        config = _unpack(
            lf.typed_config,
            tat,
            (t.TLS_INSPECTOR_TYPE, t.PROXY_PROTOCOL_TYPE, t.ORIGINAL_DST_TYPE),
        )
        if isinstance(config, t.OriginalDst):  # no fields: the listener reads SO_ORIGINAL_DST
            doc["use_original_dst"] = True
            continue
        if isinstance(config, t.ProxyProtocol):
            filters.append({"type": "proxy_protocol", "config": _proxy_protocol(config, tat)})
            continue
        # JA3/JA4 fingerprints are not computed; the read buffer size is a tuning hint.
        _only(config, tat, {"initial_read_buffer_size"})
    if not filters:
        return
    if len(filters) > 1:
        raise (at / "listener_filters").error("proxy_protocol given more than once")
    if lst.continue_on_listener_filters_timeout:
        # Served with the socket's address after a timeout: a client would skip the header.
        raise (at / "continue_on_listener_filters_timeout").error(
            "not supported with proxy_protocol: a client that sends no header in time is closed"
        )
    doc["listener_filters"] = filters
    if lst.listener_filters_timeout is not None:
        timeout = _duration(lst.listener_filters_timeout, at / "listener_filters_timeout")
        doc["listener_filters_timeout"] = timeout


def _proxy_protocol(config: Any, at: _At) -> dict[str, Any]:
    _only(
        config,
        at,
        {"allow_requests_without_proxy_protocol", "rules", "pass_through_tlvs", "stat_prefix",
         "tlv_location", "disallowed_versions"},
    )  # fmt: skip
    if config.disallowed_versions:
        raise (at / "disallowed_versions").error(
            f"{UNSUPPORTED}: a header of a version it names would be accepted"
        )
    if config.rules:
        _warn(at / "rules", "not enforced: TLVs are not copied to metadata: ignored")
    if config.pass_through_tlvs is not None:
        _warn(at / "pass_through_tlvs", "not enforced: TLVs are not passed on: ignored")
    out: dict[str, Any] = {}
    if config.allow_requests_without_proxy_protocol:
        out["allow_requests_without_proxy_protocol"] = True
    return out


def _filter_chain(chain: Any, cat: _At, doc: dict[str, Any], parts: ListenerParts) -> dict:
    _only(
        chain,
        cat,
        {"filters", "name", "metadata", "transport_socket", "filter_chain_match",
         "transport_socket_connect_timeout"},
    )  # fmt: skip
    out: dict[str, Any] = {}
    if chain.filter_chain_match is not None:
        match = _filter_chain_match(chain.filter_chain_match, cat / "filter_chain_match")
        if match:
            out["filter_chain_match"] = match
    tls = _transport_socket(chain.transport_socket, cat, server=True)
    if chain.transport_socket_connect_timeout is not None:
        # Envoy's bound on the TLS handshake: the listener's tls_handshake_timeout.
        timeout = _duration(
            chain.transport_socket_connect_timeout, cat / "transport_socket_connect_timeout"
        )
        if doc.setdefault("tls_handshake_timeout", timeout) != timeout:
            raise (cat / "transport_socket_connect_timeout").error(
                "differs from another chain's: one handshake timeout per listener"
            )
    if tls is not None:
        out.update(tls)
    filters = []
    for i, f in enumerate(chain.filters):
        fat = cat / "filters" / i
        _only(f, fat, {"name", "typed_config"})
        config = _unpack(f.typed_config, fat / "typed_config", (t.HCM_TYPE, t.TCP_PROXY_TYPE))
        if isinstance(config, t.HttpConnectionManager):
            filters.append(_hcm(config, fat / "typed_config", doc, parts))
        else:
            filters.append(_tcp_proxy(config, fat / "typed_config"))
    out["filters"] = filters
    return out


def listener_doc(lst: t.Listener) -> ListenerParts:
    """A ``servers[].listeners[]`` entry with the route configs it needs (see
    `ListenerParts`): filter chains with their matches and TLS contexts."""
    at = _At("Listener", lst.name)
    _only(lst, at, _LISTENER_FIELDS)
    address = _socket_address(lst.address, at / "address")
    doc: dict[str, Any] = {"name": lst.name, "address": address}
    if lst.bind_to_port is not None:
        doc["bind_port"] = lst.bind_to_port
    if lst.per_connection_buffer_limit_bytes is not None:
        doc["per_connection_buffer_limit_bytes"] = lst.per_connection_buffer_limit_bytes
    parts = ListenerParts(listener=doc)
    _listener_filters(lst, at, doc)
    chains = [
        _filter_chain(chain, at / "filter_chains" / i, doc, parts)
        for i, chain in enumerate(lst.filter_chains)
    ]
    if lst.default_filter_chain is not None:
        # Envoy's chain for connections no other matches: ours is the one without a match.
        default = _filter_chain(lst.default_filter_chain, at / "default_filter_chain", doc, parts)
        default.pop("filter_chain_match", None)
        chains.append(default)
    doc.pop(_HCM_FILTERS, None)
    if not chains:
        raise (at / "filter_chains").error("a listener needs a filter chain")
    doc["filter_chains"] = chains
    return parts
