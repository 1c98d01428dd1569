"""Checks across the structured configuration: unique names, references, chain shapes."""

from __future__ import annotations

from typing import Any

from . import tls
from .admin_check import check_admin
from .errors import at
from .filter_configs import Protocol, ProxyConfig, is_terminal
from .health_check import health_check_warnings, parse_check
from .metrics_check import check_metrics, metrics_warnings
from .model import Cluster, ClusterType, FilterChain, LbType, MeshConfig
from .proxy_tracing import proxy_tracing_warnings
from .registry import check_extends, extends_warnings
from .tracing import check_tracing, tracing_warnings


def check_refs(normalized: dict, refs: list[tuple[str, str, str]]) -> list[str]:
    """References to clusters and router configs, on the key-matched document: they are
    reported even when other values fail to structure."""
    defined = {
        "cluster": _names(normalized.get("cluster_manager"), "clusters", "name"),
        "router": {
            name
            for server in _items(normalized, "servers")
            for name in _names(server, "routers", "router_config_name")
        }
        | _registry_routers(normalized),
    }
    what = {"cluster": "cluster", "router": "router config"}
    errors = []
    for kind, path, name in refs:
        if name not in defined[kind]:
            known = ", ".join(sorted(defined[kind])) or "none"
            errors.append(at(path, f"unknown {what[kind]} {name!r} (defined: {known})"))
    return errors


def _registry_routers(normalized: dict) -> set[str]:
    """The router an enabled ``dubbo_registry`` keeps (MOSN's ``dubbo``): it exists from
    start-up, filled by subscriptions, so listeners may name it."""
    names = set()
    for entry in _items(normalized, "extends"):
        config = entry.get("config")
        if entry.get("type") == "dubbo_registry" and isinstance(config, dict):
            if config.get("enable") is True:
                name = config.get("router_config_name", "dubbo")
                names.add(name if isinstance(name, str) else "dubbo")
    return names


def _items(section: Any, key: str) -> list:
    items = section.get(key) if isinstance(section, dict) else None
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def _names(section: Any, key: str, name_key: str) -> set[str]:
    return {x[name_key] for x in _items(section, key) if isinstance(x.get(name_key), str)}


def check(config: MeshConfig) -> list[str]:
    """Checks that need the structured configuration."""
    errors: list[str] = []
    _unique(
        errors,
        [
            (f"cluster_manager.clusters[{i}].name", c.name)
            for i, c in enumerate(config.cluster_manager.clusters)
        ],
        "cluster",
    )
    listeners, routers = [], []
    for si, server in enumerate(config.servers):
        sp = f"servers[{si}]"
        routers += [
            (f"{sp}.routers[{i}].router_config_name", r.router_config_name)
            for i, r in enumerate(server.routers)
        ]
        for li, listener in enumerate(server.listeners):
            lp = f"{sp}.listeners[{li}]"
            listeners.append((f"{lp}.name", listener.name))
            _check_chains(errors, lp, listener)
            _check_listener_filters(errors, lp, listener)
    for ci, cluster in enumerate(config.cluster_manager.clusters):
        errors += tls.check(
            cluster.tls_context, f"cluster_manager.clusters[{ci}].tls_context", server=False
        )
        if cluster.health_check is not None:
            errors += parse_check(
                cluster.health_check, f"cluster_manager.clusters[{ci}].health_check"
            )[1]
        if cluster.outlier_detection is not None:
            errors += cluster.outlier_detection.check(
                f"cluster_manager.clusters[{ci}].outlier_detection"
            )
        errors += _check_dns(f"cluster_manager.clusters[{ci}]", cluster)
        if cluster.lb_subset_config is not None:
            errors += cluster.lb_subset_config.check(
                f"cluster_manager.clusters[{ci}].lb_subset_config"
            )
        for ti, th in enumerate(cluster.circuit_breakers):
            if th.retry_budget is not None:
                errors += th.retry_budget.check(
                    f"cluster_manager.clusters[{ci}].circuit_breakers[{ti}].retry_budget"
                )
    _unique(errors, listeners, "listener")
    errors += check_admin(config)
    errors += check_metrics(config)
    # Two listeners on one fixed address would only fail at bind time; port 0 never clashes.
    _unique(
        errors,
        [
            (f"servers[{si}].listeners[{li}].address", str(lst.address))
            for si, server in enumerate(config.servers)
            for li, lst in enumerate(server.listeners)
            if lst.bind_port and lst.address.port != 0
        ],
        "listener",
        "address",
    )
    _unique(errors, routers, "router config")
    errors += check_tracing(config)
    errors += check_extends(config)
    return errors


def _check_listener_filters(errors: list[str], lp: str, listener: Any) -> None:
    # A second proxy_protocol would read a second header that the client never sends.
    seen = False
    for i, lf in enumerate(listener.listener_filters):
        if lf.type == "proxy_protocol":
            if seen:
                errors.append(f"{lp}.listener_filters[{i}].type: proxy_protocol given twice")
            seen = True


def _check_chains(errors: list[str], lp: str, listener: Any) -> None:
    if not listener.filter_chains:
        errors.append(at(f"{lp}.filter_chains", "a listener needs one filter chain"))
    if listener.tls_handshake_timeout <= 0:
        errors.append(at(f"{lp}.tls_handshake_timeout", "expected a positive duration"))
    # Several chains: each connection must have one answer (Envoy refuses such listeners too).
    default_at: str | None = None
    seen: dict[tuple, str] = {}
    for ci, chain in enumerate(listener.filter_chains):
        cp = f"{lp}.filter_chains[{ci}]"
        _check_chain_tls(errors, cp, chain)
        key = chain.match_key()
        if key is None:
            if default_at is not None:
                errors.append(
                    at(
                        f"{cp}.filter_chain_match",
                        f"a second chain without a match ({default_at} has none): give each"
                        " chain but one a filter_chain_match that tells them apart",
                    )
                )
            default_at = cp
        elif key in seen:
            errors.append(
                at(f"{cp}.filter_chain_match", f"the same match as {seen[key]}.filter_chain_match")
            )
        else:
            seen[key] = cp
    if listener.stream_filters and not any(
        f.type == "proxy" for chain in listener.filter_chains for f in chain.filters
    ):
        errors.append(
            at(
                f"{lp}.stream_filters",
                "stream filters run in the proxy network filter, which this listener does not have",
            )
        )
    for ci, chain in enumerate(listener.filter_chains):
        cp = f"{lp}.filter_chains[{ci}].filters"
        if not chain.filters:
            errors.append(at(cp, "a filter chain needs at least one network filter"))
            continue
        for fi, f in enumerate(chain.filters):
            last = fi == len(chain.filters) - 1
            if is_terminal(f.type) and not last:
                why = f"{f.type!r} must be the last filter"
                if f.type == "proxy":
                    # MOSN's fallback_for_unknown_protocol hands such connections on.
                    why += (
                        " (passing a connection of an unknown protocol on to the next filter,"
                        " MOSN's fallback_for_unknown_protocol, is not supported)"
                    )
                errors.append(at(f"{cp}[{fi}].type", why))
            if last and not is_terminal(f.type):
                errors.append(
                    at(
                        f"{cp}[{fi}].type",
                        f"the last filter must end the chain (such as tcp_proxy), got {f.type!r}",
                    )
                )


def _check_chain_tls(errors: list[str], cp: str, chain: FilterChain) -> None:
    if chain.tls_context is not None and chain.tls_context_set:
        errors.append(at(f"{cp}.tls_context_set", "give tls_context or tls_context_set, not both"))
    errors += tls.check(chain.tls_context, f"{cp}.tls_context", server=True)
    for i, config in enumerate(chain.tls_context_set):
        errors += tls.check(config, f"{cp}.tls_context_set[{i}]", server=True)
    m = chain.filter_chain_match
    if m is None:
        return
    mp = f"{cp}.filter_chain_match"
    if m.transport_protocol.lower() not in tls.TRANSPORT_PROTOCOLS:
        errors.append(
            at(
                f"{mp}.transport_protocol",
                f"expected tls or raw_buffer, got {m.transport_protocol!r}",
            )
        )
    elif m.transport_protocol.lower() == "raw_buffer":
        if m.server_names or m.application_protocols:
            errors.append(
                at(
                    f"{mp}.transport_protocol",
                    "raw_buffer (plaintext) connections carry no server name nor ALPN to match",
                )
            )
        if chain.tls_configs():
            errors.append(
                at(f"{mp}.transport_protocol", "raw_buffer: plaintext, but this chain has TLS on")
            )
    for i, name in enumerate(m.server_names):
        if not tls.valid_server_name(name):
            errors.append(
                at(
                    f"{mp}.server_names[{i}]",
                    f"expected a host name or *.domain, got {name!r}",
                )
            )
    for i, proto in enumerate(m.application_protocols):
        if not proto or len(proto) > 255:
            errors.append(at(f"{mp}.application_protocols[{i}]", f"not an ALPN name: {proto!r}"))


def _check_dns(cp: str, cluster: Cluster) -> list[str]:
    errors = []
    if cluster.dns_refresh_rate <= 0:
        errors.append(at(f"{cp}.dns_refresh_rate", "expected a positive duration"))
    if cluster.type is ClusterType.ORIGINAL_DST and cluster.hosts:
        errors.append(
            at(f"{cp}.hosts", "an ORIGINAL_DST cluster takes no hosts (each connection's is)")
        )
    if cluster.lb_type is LbType.LB_ORIGINAL_DST and cluster.type is not ClusterType.ORIGINAL_DST:
        errors.append(at(f"{cp}.lb_type", "LB_ORIGINAL_DST needs type: ORIGINAL_DST"))
    if cluster.type is ClusterType.LOGICAL_DNS and len(cluster.hosts) != 1:
        errors.append(
            at(f"{cp}.hosts", f"LOGICAL_DNS takes exactly one host, got {len(cluster.hosts)}")
        )
    return errors


def _unique(
    errors: list[str], named: list[tuple[str, str]], what: str, attribute: str = "name"
) -> None:
    seen: set[str] = set()
    for path, name in named:
        if name in seen:
            errors.append(at(path, f"duplicate {what} {attribute} {name!r}"))
        seen.add(name)


def unenforced(config: MeshConfig) -> list[str]:
    """Warnings for values that load but are not enforced (yet) where they are set: each
    changes neither security nor access, and none stays silent."""
    warnings: list[str] = metrics_warnings(config)
    for ci, cluster in enumerate(config.cluster_manager.clusters):
        warnings += tls.warnings(
            cluster.tls_context, f"cluster_manager.clusters[{ci}].tls_context", server=False
        )
        if cluster.health_check is not None:
            warnings += health_check_warnings(
                cluster.health_check, f"cluster_manager.clusters[{ci}].health_check"
            )
        if cluster.respect_dns_ttl:
            warnings.append(
                at(
                    f"cluster_manager.clusters[{ci}].respect_dns_ttl",
                    "not enforced: names are resolved again every dns_refresh_rate",
                )
            )
        for ti, th in enumerate(cluster.circuit_breakers):
            if th.priority.upper() != "DEFAULT":
                warnings.append(
                    at(
                        f"cluster_manager.clusters[{ci}].circuit_breakers[{ti}].priority",
                        f"{th.priority}: routes carry no priority, only DEFAULT thresholds"
                        " apply: ignored",
                    )
                )
    for si, server in enumerate(config.servers):
        warned_retries: set[str] = set()
        for li, listener in enumerate(server.listeners):
            for ci, chain in enumerate(listener.filter_chains):
                cp = f"servers[{si}].listeners[{li}].filter_chains[{ci}]"
                warnings += tls.warnings(chain.tls_context, f"{cp}.tls_context", server=True)
                for ti, tc in enumerate(chain.tls_context_set):
                    warnings += tls.warnings(tc, f"{cp}.tls_context_set[{ti}]", server=True)
                for fi, f in enumerate(chain.filters):
                    p = f"servers[{si}].listeners[{li}].filter_chains[{ci}].filters[{fi}].config"
                    if isinstance(f.config, ProxyConfig):
                        warnings += _proxy_unenforced(p, f.config)
                        if f.config.tracing is not None:
                            warnings += proxy_tracing_warnings(f"{p}.tracing", f.config.tracing)
                        if f.config.downstream_protocol not in (Protocol.HTTP1, Protocol.HTTP2):
                            warned_retries |= {f.config.router_config_name}
        for ri, router in enumerate(server.routers):
            if router.router_config_name in warned_retries:
                warnings += _rpc_retries_unenforced(f"servers[{si}].routers[{ri}]", router)
    warnings += tracing_warnings(config)
    warnings += extends_warnings(config)
    return warnings


def _rpc_retries_unenforced(path: str, router: Any) -> list[str]:
    """Route retries are made for HTTP/1 and HTTP/2 requests (gRPC included), not for RPC ones
    (an ``Auto`` listener may get RPC connections too)."""
    return [
        at(
            f"{path}.virtual_hosts[{vi}].routers[{ei}].route.retry_policy",
            "enforced on HTTP requests only: RPC requests are not retried yet",
        )
        for vi, vhost in enumerate(router.virtual_hosts)
        for ei, entry in enumerate(vhost.routers)
        if entry.route is not None
        and (rp := entry.route.retry_policy) is not None
        and rp.retry_on
        and rp.num_retries
    ]


def _proxy_unenforced(path: str, proxy: ProxyConfig) -> list[str]:
    if proxy.max_request_body_bytes is not None and proxy.downstream_protocol in (
        Protocol.HTTP2,
        Protocol.AUTO,
    ):
        return [
            at(
                f"{path}.max_request_body_bytes",
                "enforced on HTTP/1 requests only: HTTP/2 request bodies are not limited yet",
            )
        ]
    return []
