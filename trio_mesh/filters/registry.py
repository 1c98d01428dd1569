"""Network filters by type name: a factory, built once per configuration, per filter config."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ..config import Listener, register_filter_config
from ..network.budget import ListenerBudget
from ..network.connection import Connection
from ..pool import Pools
from ..router import RouteTable
from ..stats import ListenerStats
from ..upstream import ClusterManager


@attrs.frozen(kw_only=True)
class BuildContext:
    """What a filter factory may use while building, for one listener of one configuration."""

    clusters: ClusterManager
    pools: Pools = attrs.field(factory=Pools)
    #: Compiled route tables by ``router_config_name``.
    routes: dict[str, RouteTable] = attrs.field(factory=dict)
    #: The listener's access logs (objects with ``log(info)``).
    access_logs: tuple[Any, ...] = ()
    listener_stats: ListenerStats = attrs.field(factory=ListenerStats)
    #: The listener's budget of buffered received bytes (per connection and in all).
    buffer_budget: ListenerBudget = attrs.field(factory=lambda: _default_budget())
    #: The listener's name.
    listener: str = ""
    #: The listener's stream filters (``None``: none), made by the server.
    stream_filters: Any = None
    #: Runs work no request waits for (a mirror's shadow request) in a server-owned nursery.
    background: Any = None
    #: The server's health (``trio_mesh.health.Health``: the ``health_check`` filter's answer).
    health: Any = None


def _default_budget() -> ListenerBudget:
    defaults = attrs.fields(Listener)
    limit = defaults.listener_buffer_limit_bytes.default
    per_connection = defaults.per_connection_buffer_limit_bytes.default
    assert limit is not None and per_connection is not None  # both fields have a default
    return ListenerBudget(limit, per_connection)


class NetworkFilter(Protocol):
    """A terminal network filter owns the connection until it returns."""

    async def on_connection(self, conn: Connection) -> None: ...


class ConnectionAcceptor(Protocol):
    """A non-terminal network filter: asked about each new connection (``filters.network``:
    it returns a ``ConnectionFilter``, ``None``, or an awaitable of one; or it raises
    ``RejectConnection``)."""

    def accept(self, conn: Connection) -> Any: ...


NetworkFilterFactory = Callable[[Any, BuildContext], NetworkFilter | ConnectionAcceptor]

_NETWORK: dict[str, NetworkFilterFactory] = {}
#: Built-in network filters registered by their own module, imported on first use (``proxy``
#: registers when the server imports ``trio_mesh.proxy``).
_BUILTIN: dict[str, str] = {
    name: f"{__package__}.{name}" for name in ("echo", "ip_access", "tcp_proxy")
}


def register_network_filter(
    name: str,
    factory: NetworkFilterFactory,
    config_cls: type | None,
    *,
    terminal: bool = False,
) -> None:
    """Register a network filter; its config class is validated at load time."""
    if name not in _NETWORK and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])  # a built-in name is taken (a no-op inside it)
    if name in _NETWORK and _NETWORK[name] is not factory:
        raise ValueError(f"network filter {name!r} is already registered")
    register_filter_config("network", name, config_cls, terminal=terminal)
    _NETWORK[name] = factory


def build_network_filter(name: str, config: Any, ctx: BuildContext) -> Any:
    """Build filter ``name``: a terminal one has ``on_connection(conn)``, a non-terminal one
    ``accept(conn)`` (see ``filters.network``). Types from entry points load on first use."""
    factory = _NETWORK.get(name)
    if factory is None and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
        factory = _NETWORK.get(name)
    if factory is None:
        from ..config.filter_configs import plugin_object

        factory = _NETWORK[name] = plugin_object("network", name)
    return factory(config, ctx)
