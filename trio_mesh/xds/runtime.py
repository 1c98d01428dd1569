"""The xDS runtime: state of the world from one ADS stream, turned into configuration
snapshots that the server applies with the same swap a file reload uses.

Per type the latest accepted resources are kept, already converted into the documents files
give. A response is converted and the whole snapshot validated before anything changes: a
resource that does not convert or validate NACKs the response and the previous version stays.
Warming: a listener joins the snapshot once every route configuration it names has arrived
and every cluster its TCP proxy names is ready; an EDS cluster is ready once its endpoints
have arrived (until then it is not in the snapshot, and a route to it answers 503).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import attrs
import trio

from ..config import ConfigError, MeshConfig, parse_config
from ..config.model import ClusterManagerConfig
from ..config.validate import check
from ..config.xds import XdsSettings
from ..errors import StartupError
from .client import CDS, EDS, LDS, RDS, SHORT_NAMES, AdsClient
from .translate import (
    ConvertError,
    ListenerParts,
    cluster_doc,
    endpoint_hosts,
    listener_doc,
    route_config_doc,
)

log = logging.getLogger("trio_mesh.xds")


def ssl_context(settings: XdsSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["h2"])
    return context


@attrs.define
class _State:
    clusters: dict[str, tuple[dict[str, Any], str | None]] = attrs.field(factory=dict)
    endpoints: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)
    listeners: dict[str, ListenerParts] = attrs.field(factory=dict)
    routes: dict[str, dict[str, Any]] = attrs.field(factory=dict)


class XdsRuntime:
    """Owns the ADS client of a server; ``run`` in the server's nursery."""

    def __init__(self, server: Any, settings: XdsSettings, static: MeshConfig) -> None:
        self.server = server
        self.settings = settings
        self.static = static
        self.state = _State()
        self.last_error: str | None = None
        self.applied = 0  # snapshots applied
        self._accepted: set[str] = set()  # type URLs with a response applied
        self._changed = trio.lowlevel.ParkingLot()
        self._subscribed: set[str] = set()
        node = settings.node
        self.client = AdsClient(
            settings.address.host,
            settings.address.port,
            {"id": node.id, "cluster": node.cluster, "metadata": dict(node.metadata)},
            self._on_response,
            ssl_context=ssl_context(settings),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info("xDS: ADS to %s as node %r", self.settings.address, self.settings.node.id)
        await self.client.run(task_status=task_status)

    def status(self) -> dict[str, Any]:
        """What a config dump shows: the stream, versions, the last error, what is warming."""
        ready = self._ready_clusters(self.state)
        return {
            **self.client.status(),
            "applied_snapshots": self.applied,
            "last_apply_error": self.last_error,
            "listeners": sorted(self.state.listeners),
            "warming_listeners": sorted(
                n for n, p in self.state.listeners.items() if not self._warm(p, self.state, ready)
            ),
            "clusters": sorted(self.state.clusters),
        }

    @property
    def warm(self) -> bool:
        """Envoy's initial fetch is done: a CDS and an LDS response were applied and nothing
        waits for more (every cluster has its endpoints, every listener its routes and
        clusters). The server turns LIVE then."""
        if CDS not in self._accepted or LDS not in self._accepted:
            return False
        state = self.state
        ready = self._ready_clusters(state)
        if len(ready) != len(state.clusters):
            return False
        return all(self._warm(p, state, ready) for p in state.listeners.values())

    async def wait_for(self, predicate: Any) -> None:
        """Until ``predicate()`` is true after some response was handled (for tests)."""
        while not predicate():
            await self._changed.park()

    # ---------------------------------------------------------------- responses

    async def _on_response(self, type_url: str, version: str, resources: list[Any]) -> str | None:
        try:
            error = await self._handle(type_url, version, resources)
        finally:
            self._changed.unpark_all()
        if error is not None:
            self.last_error = f"{SHORT_NAMES.get(type_url, type_url)} {version}: {error}"
        return error

    async def _handle(self, type_url: str, version: str, resources: list[Any]) -> str | None:
        # Each branch below replaces whole dicts, never edits one: a shallow copy is the
        # candidate, and the accepted state stays as it was until the swap succeeded.
        state = attrs.evolve(self.state)
        try:
            if type_url == CDS:
                state.clusters = {c.name: cluster_doc(c) for c in resources}
                wanted = {eds for _, eds in state.clusters.values() if eds is not None}
                state.endpoints = {k: v for k, v in state.endpoints.items() if k in wanted}
            elif type_url == EDS:
                state.endpoints = {cla.cluster_name: endpoint_hosts(cla) for cla in resources}
            elif type_url == LDS:
                state.listeners = {lst.name: listener_doc(lst) for lst in resources}
                wanted = {n for p in state.listeners.values() for n in p.rds}
                state.routes = {k: v for k, v in state.routes.items() if k in wanted}
            elif type_url == RDS:
                state.routes = {rc.name: route_config_doc(rc) for rc in resources}
            else:
                return f"unexpected type {type_url}"
        except ConvertError as exc:
            return str(exc)
        try:
            config = self.compose(state)
        except ConfigError as exc:
            return "; ".join(exc.errors)
        try:
            await self.server.apply(config)
        except StartupError as exc:
            return str(exc)
        self.state = state
        self.applied += 1
        self._accepted.add(type_url)
        self.last_error = None
        # What to ask for next: endpoints of EDS clusters, route configurations of listeners.
        self._subscribe(EDS, [eds for _, eds in state.clusters.values() if eds is not None])
        self._subscribe(RDS, [n for p in state.listeners.values() for n in p.rds])
        log.info(
            "xDS: %s version %s applied (%d listeners, %d clusters)",
            SHORT_NAMES.get(type_url, type_url),
            version,
            len(config.listeners),
            len(config.cluster_manager.clusters),
        )
        return None

    def _subscribe(self, type_url: str, names: list[str]) -> None:
        # An empty list would be a wildcard subscription in state of the world: before the
        # first name, ask for nothing; after the last one, the extra resources are ignored.
        if names or type_url in self._subscribed:
            self._subscribed.add(type_url)
            self.client.subscribe(type_url, names)

    # ---------------------------------------------------------------- snapshot

    @staticmethod
    def _ready_clusters(state: _State) -> dict[str, dict[str, Any]]:
        ready = {}
        for name, (doc, eds) in state.clusters.items():
            if eds is None:
                ready[name] = doc
            elif eds in state.endpoints:
                ready[name] = {**doc, "hosts": state.endpoints[eds]}
        return ready

    def _warm(self, parts: ListenerParts, state: _State, ready: dict[str, Any]) -> bool:
        if any(name not in state.routes for name in parts.rds):
            return False
        static = {c.name for c in self.static.cluster_manager.clusters}
        for chain in parts.listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("type") != "tcp_proxy":
                    continue
                cluster = (f.get("config") or {}).get("cluster")
                if cluster is not None and cluster not in ready and cluster not in static:
                    return False
        return True

    def compose(self, state: _State) -> MeshConfig:
        """The static configuration plus every ready dynamic resource; ``ConfigError``."""
        ready = self._ready_clusters(state)
        listeners = [p for p in state.listeners.values() if self._warm(p, state, ready)]
        # Listeners may share a route configuration: it is one router config.
        names = dict.fromkeys(n for p in listeners for n in p.rds)
        routers = [state.routes[n] for n in names]
        routers += [r for p in listeners for r in p.inline_routers]
        doc = {
            "servers": [{"listeners": [p.listener for p in listeners], "routers": routers}],
            "cluster_manager": {"clusters": list(ready.values())},
        }
        dynamic = parse_config(doc, dynamic=True).config
        static = self.static
        servers = list(static.servers)
        if servers:
            first = servers[0]
            servers[0] = attrs.evolve(
                first,
                listeners=first.listeners + dynamic.servers[0].listeners,
                routers=first.routers + dynamic.servers[0].routers,
            )
        else:
            servers = list(dynamic.servers)
        merged = attrs.evolve(
            static,
            servers=tuple(servers),
            cluster_manager=ClusterManagerConfig(
                clusters=static.cluster_manager.clusters + dynamic.cluster_manager.clusters
            ),
        )
        errors = check(merged)
        if errors:
            raise ConfigError(errors)
        return merged
