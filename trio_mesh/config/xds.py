"""Where the control plane is: Envoy's bootstrap form (``node``, ``dynamic_resources.ads_config``
naming a cluster of ``static_resources``) or the short form ``xds: {address, node_id}``.

Both resolve, at load time and without importing any xDS library, to one `XdsSettings`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import attrs
from attrs import frozen

from .scalars import Address


@frozen(kw_only=True)
class Node:
    """The ``node`` this proxy reports to the control plane."""

    id: str = ""
    cluster: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)


@frozen(kw_only=True)
class XdsTls:
    """TLS to the control plane: a CA to verify it, optionally a client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sni: str | None = None


@frozen(kw_only=True)
class XdsShort:
    """``xds: {address: "host:port", node_id: ..., node_cluster: ..., tls: {...}}``."""

    address: Address
    node_id: str = ""
    node_cluster: str = ""
    tls: XdsTls | None = None


@frozen(kw_only=True)
class XdsSettings:
    """The resolved control-plane connection (one ADS stream over HTTP/2)."""

    address: Address
    node: Node
    tls: XdsTls | None = None
    cluster_name: str = "xds"


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        # Envoy's JSON is snake_case or camelCase
        camel = key.split("_")[0] + "".join(w.title() for w in key.split("_")[1:])
        d = d.get(key, d.get(camel))
    return d


def _filename(d: Any) -> str | None:
    value = _get(d, "filename")
    return value if isinstance(value, str) else None


def resolve(
    xds: XdsShort | None,
    node: Node | None,
    dynamic: dict[str, Any] | None,
    static: dict[str, Any] | None,
) -> tuple[XdsSettings | None, list[str]]:
    """The settings, or ``None`` when no control plane is configured; and the errors, each
    with its path."""
    if xds is not None:
        if dynamic is not None:
            return None, ["xds: use either xds or dynamic_resources, not both"]
        return XdsSettings(
            address=xds.address,
            node=Node(id=xds.node_id, cluster=xds.node_cluster, metadata={})
            if node is None
            else attrs.evolve(node, id=xds.node_id or node.id),
            tls=xds.tls,
        ), []
    if dynamic is None:
        return None, []
    errors: list[str] = []
    ads = _get(dynamic, "ads_config")
    if not isinstance(ads, dict):
        return None, ["dynamic_resources.ads_config: required (trio-mesh speaks ADS only)"]
    api = _get(ads, "api_type")
    if api not in (None, "GRPC"):
        errors.append(f"dynamic_resources.ads_config.api_type: {api!r} is not supported (GRPC)")
    services = _get(ads, "grpc_services")
    name = (
        _get(services[0], "envoy_grpc", "cluster_name")
        if isinstance(services, list) and (services)
        else None
    )
    if not isinstance(name, str):
        errors.append(
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: required"
        )
        return None, errors
    clusters = _get(static, "clusters") if static is not None else None
    found = [
        (i, c)
        for i, c in enumerate(clusters if isinstance(clusters, list) else [])
        if _get(c, "name") == name
    ]
    if not found:
        errors.append(
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: "
            f"no cluster {name!r} in static_resources.clusters"
        )
        return None, errors
    i, cluster = found[0]
    path = f"static_resources.clusters[{i}]"
    endpoints = _get(cluster, "load_assignment", "endpoints")
    socket_address = None
    if isinstance(endpoints, list) and endpoints:
        lb = _get(endpoints[0], "lb_endpoints")
        if isinstance(lb, list) and lb:
            socket_address = _get(lb[0], "endpoint", "address", "socket_address")
    host, port = _get(socket_address, "address"), _get(socket_address, "port_value")
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        errors.append(
            f"{path}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
            ".socket_address: address and port_value required"
        )
        return None, errors
    tls = None
    transport = _get(cluster, "transport_socket")
    if transport is not None:
        context = _get(transport, "typed_config", "common_tls_context")
        certs = _get(context, "tls_certificates")
        cert = certs[0] if isinstance(certs, list) and certs else None
        tls = XdsTls(
            ca_file=_filename(_get(context, "validation_context", "trusted_ca")),
            cert_file=_filename(_get(cert, "certificate_chain")),
            key_file=_filename(_get(cert, "private_key")),
            sni=_get(transport, "typed_config", "sni"),
        )
    return XdsSettings(
        address=Address(host=host, port=port),
        node=node or Node(),
        tls=tls,
        cluster_name=name,
    ), errors


#: The ``xds`` extra's modules (pyproject.toml), found without importing them.
XDS_EXTRA_MODULES = ("betterproto2", "envoy_data_plane", "grpclib", "trio_asyncio")


def missing_xds_extra(config: Any) -> str | None:
    """Why ``config`` (a ``MeshConfig``) cannot run here: it names a control plane and the
    ``xds`` extra is not installed; ``None`` otherwise."""
    if config.xds_settings() is None:
        return None
    missing = []
    for name in XDS_EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return (
        f"xDS needs the xds extra (missing: {', '.join(missing)}): "
        "install trio-mesh[xds] (from a checkout: pip install '.[xds]')"
    )
