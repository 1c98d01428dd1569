"""Route configuration (``servers[].routers[]``) in MOSN's shape: router configs, virtual
hosts, routes with match and action."""

from __future__ import annotations

from typing import Any, ClassVar

from attrs import frozen


@frozen(kw_only=True)
class RouterConfig:
    """A named route table; compiled by ``trio_mesh.router``."""

    router_config_name: str
    virtual_hosts: tuple[dict[str, Any], ...] = ()

    MOSN_PENDING: ClassVar[frozenset[str]] = frozenset(
        {
            "request_headers_to_add",
            "response_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_remove",
        }
    )
