"""The server: builds the runtime from a configuration and owns the root nursery."""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .config import Listener, MeshConfig
from .config.filter_configs import Protocol, ProxyConfig, ProxyProtocolConfig, is_terminal
from .config.metrics_check import prometheus_sinks
from .config.model import FilterChain
from .config.registry import dubbo_registry_config
from .config.scalars import Address, format_hostport
from .errors import StartupError
from .filters import BuildContext, build_network_filter
from .filters.background import Background
from .filters.network import compose
from .filters.stream import FilterChainFactory
from .health import Health
from .metrics.model import Metric
from .network.budget import ListenerBudget
from .network.chains import Chain, Identities
from .network.connection import Connection
from .network.dispatch import ChainDispatcher
from .network.inherit import InheritedSockets
from .network.listener import Handler, ListenerRuntime, bind
from .network.proxy_protocol import ProxyProtocolHandler
from .network.tls_context import ServerTls, TlsConfigError, identities, server_tls
from .pool import Pools
from .proxy import network_filter as _proxy_filter  # noqa: F401 - registers the proxy filter
from .router import RouteTable
from .stats import ListenerStats
from .tracing.tracer import Tracer, TracingStats
from .tracing.tracers import TracerSet
from .upstream import ClusterManager
from .upstream.cluster import ClusterTls, build_tls
from .upstream.dns import wait_warm

if TYPE_CHECKING:
    from .proxy.accesslog import AccessLog
    from .registry.runtime import RegistryRuntime

log = logging.getLogger("trio_mesh.server")

#: The names a hot upgrade hands the prometheus sinks' sockets over under (``@sink0``...):
#: no listener is named with an ``@``.
SINK_PREFIX = "@sink"

#: One listener's filter chains' TLS, in chain order: the chain's contexts (``None``:
#: cleartext) and its certificates' identities.
ChainTls = list[tuple[ServerTls | None, Identities]]


@attrs.frozen
class Contexts:
    """Every TLS context of a configuration, built once per run or apply (``build_contexts``)."""

    listeners: dict[str, ChainTls]  # by listener name
    clusters: dict[str, ClusterTls | None]  # by cluster name, those with a tls_context


def build_contexts(config: MeshConfig) -> Contexts:
    """Build every TLS context of ``config`` from the files as they are now (rotation):
    certificates and keys read, OpenSSL loads, identities decoded. Blocking: the server runs
    it in a thread, before anything changes. Raises ``TlsConfigError`` listing every key
    that cannot be honoured, each line starting with its path (``check_config``'s lines)."""
    errors: list[str] = []
    listeners: dict[str, ChainTls] = {}
    for si, server in enumerate(config.servers):
        for li, lst in enumerate(server.listeners):
            built: ChainTls = []
            for ci, chain in enumerate(lst.filter_chains):
                path = f"servers[{si}].listeners[{li}].filter_chains[{ci}]"
                try:
                    tls = _server_tls(chain, path)
                except TlsConfigError as exc:
                    errors.append(str(exc))
                    continue
                built.append((tls, identities(chain, tls, path)))
            listeners[lst.name] = built
    clusters: dict[str, ClusterTls | None] = {}
    for ci, cluster in enumerate(config.cluster_manager.clusters):
        if cluster.tls_context is None:
            continue
        path = f"cluster_manager.clusters[{ci}].tls_context"
        try:
            clusters[cluster.name] = build_tls(cluster, path)
        except TlsConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise TlsConfigError("\n".join(errors))
    return Contexts(listeners, clusters)


class Server:
    """A running proxy, embeddable in any Trio nursery::

        server = await nursery.start(Server(config).run)
        host, port = server.addresses["ingress"]

    Cancelling the nursery closes every socket and task of the server.
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        reuse_port: bool = False,
        serve_admin: bool = True,
        inherited: InheritedSockets | None = None,
        registry_state: Any = None,
    ) -> None:
        #: The registry state a hot upgrade handed over (``RegistryRuntime.handover_state``
        #: of the old process): replayed once the registry runs, before the listeners serve.
        self.registry_state = registry_state
        #: Listening sockets handed over (systemd's socket activation, a hot upgrade): a
        #: listener they match takes its socket instead of binding; the rest are closed
        #: once ``run`` has started.
        self.inherited = inherited
        #: The configuration last given (the file, or the static part plus xDS's); what
        #: serves is ``config``: this plus the registry's subscriptions (``registry``).
        self.source_config = config
        #: The service registry (MOSN's dubbod, ``extends: [{type: dubbo_registry}]``).
        self.registry: RegistryRuntime | None = None
        registry = dubbo_registry_config(config)
        if registry is not None:
            from .registry.address import primary_ip
            from .registry.runtime import RegistryRuntime

            ip = registry.advertise_ip or primary_ip()
            self.registry = RegistryRuntime(self, registry, advertise_ip=ip)
            # Its router exists from the start (empty): listeners may name it.
            config = self.registry.overlay(config)
        self.config = config
        self.reuse_port = reuse_port
        #: False in ``--workers`` processes: the admin process serves the admin API and the
        #: metrics sinks for all of them.
        self.serve_admin = serve_admin
        #: The real bound ``(host, port)`` of each prometheus metrics sink, in config order.
        self.metrics_addresses: list[tuple[str, int]] = []
        self._sinks: list[Any] = []  # the PrometheusSinkConfig of the sinks running
        #: The admin API's real bound ``(host, port)`` while it serves, else ``None``.
        self.admin_address: tuple[str, int] | None = None
        #: The admin API's listening socket while it serves (a hot upgrade hands it over).
        self.admin_socket: socket.socket | None = None
        #: The prometheus sinks' listening sockets, in config order (a hot upgrade's too).
        self.sink_sockets: list[socket.socket] = []
        #: The registry API's listening socket while it serves (a hot upgrade hands it over).
        self.registry_socket: socket.socket | None = None
        #: Cancels the registry service and its API alone (after a hot upgrade).
        self._registry_scope = trio.CancelScope()
        #: What the health_check filter and ``/ready`` answer from (``failed``, ``draining``).
        self.health = Health()
        # TLS contexts are built by ``run`` (in a thread, before any port is bound); a
        # cluster with TLS connects to nothing until then.
        self.clusters = ClusterManager(config.cluster_manager.clusters, tls={})
        self.pools = Pools()
        # Route tables are compiled once per configuration, never per request.
        self.routes = {
            r.router_config_name: RouteTable.compile(r)
            for server in config.servers
            for r in server.routers
        }
        self.access_logs = {lst.name: _access_logs(lst) for lst in config.listeners}
        self.listeners: dict[str, ListenerRuntime] = {}
        self.background = Background()
        self._stats: dict[str, ListenerStats] = {}
        self._budgets: dict[str, ListenerBudget] = {}
        self._chains: dict[str, FilterChainFactory] = {}
        self._nursery: trio.Nursery | None = None  # set while running: where apply starts things
        self._applying = trio.Lock()  # one configuration swap at a time
        #: Set by a drain (``/drain_listeners``, SIGTERM): as in Envoy, no listener starts
        #: after it, whatever a reload or an xDS update adds.
        self._listeners_stopped = False
        #: The xDS runtime (``trio_mesh.xds.runtime.XdsRuntime``) when a control plane is set.
        self.xds: Any = None
        self._state = "PRE_INITIALIZING"
        #: Set when the state first turns LIVE (with xDS: once it is warm).
        self.live = trio.Event()
        #: ``time.time()`` / ``time.monotonic()`` when ``run`` began (uptime).
        self.started_at = 0.0
        self.started_monotonic = 0.0
        #: Tracing's counters (``spans_sent``, ``spans_dropped``, ``export_failed``), kept
        #: across configurations; the tracers and their exporters, one per distinct
        #: effective tracing of the listeners (none: tracing off).
        self.tracing_stats = TracingStats()
        self.tracers = TracerSet(config, self.tracing_stats)

    @property
    def tracer(self) -> Tracer | None:
        """The tracer of the top-level ``tracing`` block (``None``: off, or no listener
        uses it)."""
        return self.tracers.default

    @property
    def state(self) -> str:
        """Envoy's server states: ``PRE_INITIALIZING`` until every listener is bound and
        serving (and xDS warm), then ``LIVE``; ``DRAINING`` once a drain began."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        self.health.draining = value == "DRAINING"
        if value == "LIVE":
            self.live.set()

    @property
    def health_failed(self) -> bool:
        """``POST /healthcheck/fail`` (admin): readiness and health-check answers fail."""
        return self.health.failed

    @health_failed.setter
    def health_failed(self, value: bool) -> None:
        self.health.failed = value

    def drain_listeners(self, *, graceful: bool) -> None:
        """Envoy's ``/drain_listeners``: graceful, every listener stops accepting and its
        connections finish (``Connection: close``, GOAWAY) and the server is DRAINING;
        otherwise every listener stops accepting now (connections go on)."""
        self._listeners_stopped = True
        if graceful:
            self.state = "DRAINING"
        for runtime in self.listeners.values():
            if graceful:
                runtime.drain()
            else:
                runtime.stop_accepting()

    async def drain(
        self, timeout: float, *, handed_over: bool = False, keep_sockets: bool = False
    ) -> bool:
        """Stop gracefully: stop accepting, let requests in flight finish (HTTP/2 streams
        after a GOAWAY, HTTP/1 with ``Connection: close``), close idle connections; within
        ``timeout`` seconds. True if everything finished in time. Cancel the server's
        nursery afterwards to close the rest. ``handed_over``: another process accepts on
        the listening sockets now (a hot upgrade): they are not shut down, only closed;
        ``keep_sockets``: that too (a successor holds them, not ready yet)."""
        self._listeners_stopped = True
        self.state = "DRAINING"
        deadline = trio.current_time() + timeout  # one bound for the whole drain
        if self.registry is not None and handed_over:
            # The new process serves the same ip:port (the shared listening socket) and has
            # published anew (the upgrade's replay): unpublishing here would only take
            # providers away (or, if the node names coincided, the new process's node). Our
            # registry API and sessions stop now; our ephemeral nodes go with the sessions.
            self.registry.draining = True
            self._registry_scope.cancel()
        with trio.move_on_at(deadline):
            if self.registry is not None and not handed_over:
                # Consumers stop sending here before the listeners stop (MOSN's /unpub).
                await self.registry.unpublish_all()
        for runtime in self.listeners.values():
            runtime.drain(keep_socket=handed_over or keep_sockets)
        with trio.move_on_at(deadline):
            for runtime in list(self.listeners.values()):
                await runtime.wait_closed()
            return True
        return False

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """The real bound ``(host, port)`` of each bound listener, by name."""
        return {name: lst.address for name, lst in self.listeners.items()}

    def _build_handler(
        self, lst: Listener, routes: dict[str, RouteTable], stats: ListenerStats, tls: ChainTls
    ) -> tuple[Callable[[Connection], Awaitable[None]], FilterChainFactory]:
        # A reloaded listener's old and new connections share its budget, unless it changed.
        budget = self._budgets.get(lst.name)
        limits = (lst.listener_buffer_limit_bytes, lst.per_connection_buffer_limit_bytes)
        if budget is None or (budget.limit, budget.per_connection) != limits:
            budget = self._budgets[lst.name] = ListenerBudget(*limits, stats)
        ctx = BuildContext(
            clusters=self.clusters,
            pools=self.pools,
            routes=routes,
            access_logs=self.access_logs[lst.name],
            listener_stats=stats,
            buffer_budget=budget,
            listener=lst.name,
            background=self.background,
            health=self.health,
            tracers=self.tracers,
        )
        try:
            chain = FilterChainFactory(lst.stream_filters, ctx)
        except StartupError:
            raise
        except Exception as exc:  # a filter's factory refused its config
            raise StartupError(f"listener {lst.name!r} stream_filters: {exc}") from exc
        handler = _handler(lst, attrs.evolve(ctx, stream_filters=chain or None), tls)
        return _listener_filters(lst, handler, stats), chain

    def _rotate(
        self, listeners: Iterable[Listener], contexts: Contexts
    ) -> list[tuple[Chain, ServerTls | None, Identities]]:
        """Every TLS chain of these running listeners with the context ``build_contexts``
        made for it from the files now (certificate rotation), to swap in."""
        staged = []
        for lst in listeners:
            runtime = self.listeners.get(lst.name)
            if runtime is None:
                continue
            dispatcher = runtime.handler
            if isinstance(dispatcher, ProxyProtocolHandler):
                dispatcher = dispatcher.inner
            if not isinstance(dispatcher, ChainDispatcher):
                continue
            built = contexts.listeners[lst.name]
            for chain, (tls, ids) in zip(dispatcher.chains, built, strict=True):
                if chain.tls is not None:
                    staged.append((chain, tls, ids))
        return staged

    async def _check_access_logs(self, names: Iterable[str]) -> None:
        for name in names:
            for access_log in self.access_logs[name]:
                try:
                    await trio.to_thread.run_sync(access_log.check)
                except OSError as exc:
                    reason = f"{exc.strerror} ({exc.filename})"
                    raise StartupError(f"listener {name!r}: {reason}") from None

    def _runtime(self, lst: Listener, sock: socket.socket, handler: Handler) -> ListenerRuntime:
        return ListenerRuntime(
            lst.name,
            sock,
            handler,
            idle_timeout=lst.connection_idle_timeout or None,  # 0: no idle timeout
            max_connections=lst.max_connections,
            stats=self._stats[lst.name],
            original_dst=_reads_original_dst(lst),
        )

    async def _listen(self, lst: Listener) -> socket.socket:
        """The listener's socket: the one handed over for it (``inherited``), else bound."""
        if self.inherited is not None:
            sock = self.inherited.take(lst.name, lst.address)
            if sock is not None:
                host, port = sock.getsockname()[:2]
                log.info(
                    "listener %r: using the socket handed over on %s",
                    lst.name,
                    format_hostport(host, port),
                )
                return sock
        return await bind(lst.name, lst.address, reuse_port=self.reuse_port)

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at, self.started_monotonic = time.time(), time.monotonic()
        from .config.xds import missing_xds_extra

        if (missing := missing_xds_extra(self.config)) is not None:
            raise StartupError(missing)  # before any port is bound
        # Every TLS context builds (files read, keys matched) before any port is bound, once,
        # in a thread: OpenSSL's loads would stall the event loop.
        contexts = await trio.to_thread.run_sync(build_contexts, self.config)
        self.clusters.update(self.config.cluster_manager.clusters, contexts.clusters)
        self._stats = {lst.name: ListenerStats() for lst in self.config.listeners}
        handlers = {}
        for lst in self.config.listeners:
            handlers[lst.name], self._chains[lst.name] = self._build_handler(
                lst, self.routes, self._stats[lst.name], contexts.listeners[lst.name]
            )
        await self._check_access_logs(self.access_logs)
        admin = self.config.admin if self.serve_admin else None
        admin_sock = registry_sock = None
        registry_log: logging.Handler | None = None
        try:
            # Bind everything before serving anything: a port in use stops start-up as a whole.
            if self.inherited is not None:
                self.inherited.reserved = {lst.name for lst in self.config.listeners}
            for lst in self.config.listeners:
                if not lst.bind_port:
                    log.info("listener %r: bind_port is false, not listening", lst.name)
                    continue
                sock = await self._listen(lst)
                self.listeners[lst.name] = self._runtime(lst, sock, handlers[lst.name])
            if admin is not None:
                from .admin.server import bind_admin

                if self.inherited is not None:
                    admin_sock = self.inherited.take("@admin", admin.address)
                if admin_sock is None:
                    admin_sock = await bind_admin(admin)
            if self.registry is not None:
                from .registry.api import bind_api, open_log

                if self.inherited is not None:
                    api = self.registry.config
                    registry_sock = self.inherited.take(
                        "@registry",
                        Address(api.api_host, api.api_port),  # upgrade.REGISTRY
                    )
                    if registry_sock is not None:
                        log.info("registry API: using the socket handed over")
                if registry_sock is None:
                    registry_sock = await bind_api(self.registry.config)
                registry_log = await open_log(self.registry.config)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pools.run)
                # DNS clusters resolve before any listener serves (Envoy's warming, bounded).
                self.pools.start_resolvers(self.clusters.clusters.values())
                await wait_warm(self.clusters.clusters.values())
                self.pools.check_health(self.clusters.clusters.values())
                await nursery.start(self.background.run)
                if admin is not None and admin_sock is not None:
                    from .admin.server import run_admin
                    from .admin.target import LocalTarget

                    self.admin_socket = admin_sock  # what a hot upgrade hands over
                    self.admin_address = await nursery.start(
                        functools.partial(run_admin, admin, LocalTarget(self), sock=admin_sock)
                    )
                    admin_sock = None  # run_admin owns it now
                if self.serve_admin:
                    # Before any listener serves: a sink's port in use stops start-up whole.
                    await self._start_metrics_sinks(nursery)
                for exporter in self.tracers.exporters():
                    await nursery.start(exporter.run)
                for logs in self.access_logs.values():
                    for access_log in logs:
                        await nursery.start(access_log.run)
                self._nursery = nursery
                if self.registry is not None and registry_sock is not None:
                    self.registry_socket = registry_sock  # what a hot upgrade hands over
                    await nursery.start(self._run_registry, registry_sock)
                    registry_sock = None  # run_registry owns it now
                    if self.registry_state is not None:
                        # A hot upgrade's: replayed before any listener serves here (the
                        # old process accepts on the shared sockets meanwhile), so no call
                        # reaches this egress before its routes are in place.
                        state, self.registry_state = self.registry_state, None
                        await self.registry.replay(state)
                for runtime in self.listeners.values():
                    await nursery.start(runtime.serve)
                    log.info(
                        "listener %r listening on %s",
                        runtime.name,
                        format_hostport(*runtime.address),
                    )
                settings = self.config.xds_settings()
                if settings is not None:
                    # Imported only now: the Envoy types cost most of a second to load.
                    from .xds.runtime import XdsRuntime

                    # Over the configuration as given: the registry's router and
                    # clusters are added to every composed snapshot by apply's overlay.
                    self.xds = XdsRuntime(self, settings, self.source_config)
                    await nursery.start(self.xds.run)
                    # Envoy's readiness: LIVE once the initial xDS fetch is done.
                    nursery.start_soon(self._live_when_warm, self.xds)
                if self.inherited is not None and settings is None:
                    # Nobody takes them: a socket unit naming a listener this config does not
                    # have (said, closed); a hot upgrade's old process closes its own copies
                    # after its drain. (With xDS, once warm: its listeners may take them.)
                    self.inherited.close_leftovers()
                if settings is None and self.state == "PRE_INITIALIZING":
                    self.state = "LIVE"
                task_status.started(self)
        finally:
            self._nursery = None
            self.admin_address = None
            self.admin_socket = None
            self.sink_sockets.clear()  # each sink's task closed its own
            self.registry_socket = None
            if admin_sock is not None:
                admin_sock.close()
            if registry_sock is not None:
                registry_sock.close()
            if registry_log is not None:
                registry_log.close()
                logging.getLogger("trio_mesh.registry").removeHandler(registry_log)
            for runtime in self.listeners.values():
                runtime.sock.close()
            self.listeners.clear()

    async def _run_registry(
        self,
        sock: socket.socket,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The registry service and its API, until cancelled (a drain after a hot upgrade
        cancels it alone: ``_registry_scope``)."""
        from .registry.api import run_registry

        assert self.registry is not None
        with self._registry_scope:
            await run_registry(self.registry, sock, task_status=task_status)

    async def _start_metrics_sinks(self, nursery: trio.Nursery) -> None:
        sinks = prometheus_sinks(self.config)
        if not sinks:
            return
        # Imported only now: prometheus_client and the admin server are not needed without.
        from .metrics.sink import run_prometheus_sink

        for i, sink in enumerate(sinks):
            sock = None
            if self.inherited is not None:  # a hot upgrade hands the sinks' sockets over
                sock = self.inherited.take(f"{SINK_PREFIX}{i}", Address(sink.address, sink.port))
            if sock is None:
                sock = await bind("prometheus sink", Address(sink.address, sink.port))
            self.sink_sockets.append(sock)
            address = await nursery.start(
                functools.partial(run_prometheus_sink, sink, self.collect_metrics, sock=sock)
            )
            self.metrics_addresses.append(address)
            self._sinks.append(sink)
            log.info(
                "prometheus metrics sink on http://%s%s", format_hostport(*address), sink.endpoint
            )

    async def collect_metrics(self) -> list[Metric]:
        """Every stat of this process, read now (``metrics.collect``)."""
        from .metrics.collect import collect

        return collect(self)

    async def _live_when_warm(self, xds: Any) -> None:
        await xds.wait_for(lambda: xds.warm)
        if self.inherited is not None:
            self.inherited.close_leftovers()
        if self.state == "PRE_INITIALIZING":
            self.state = "LIVE"
            log.info("xDS warm: the server is LIVE")

    async def apply(self, config: MeshConfig, *, drain_timeout: float = 30.0) -> None:
        """Switch the running server to ``config`` (a validated configuration: a file reload
        or an xDS snapshot) without dropping requests in flight.

        Clusters are updated in place: a host that stays keeps its pooled connections;
        those of hosts that left close once idle. Route tables are replaced in place: every
        connection's next request uses the new routes. A listener whose configuration is
        unchanged keeps its socket and connections; a changed one keeps its socket (same
        address) and its old connections drain; a removed one stops accepting and drains
        for at most ``drain_timeout`` seconds. Raises ``StartupError`` (a port that cannot be
        bound, a filter refusing its config, a changed ``admin`` block) before anything
        changed.
        """
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("the server is not running")
        # Who may reach the admin API and the metrics sinks (their addresses,
        # allow_non_loopback, whether they serve at all) is access control: a change is
        # refused whole, not warned about and left as it was. Also in --workers processes,
        # whose admin process serves them: every worker refuses the same reload.
        if config.admin != self.config.admin:
            raise StartupError(
                "admin: cannot change while the server runs (the admin API keeps its"
                " address until a restart)"
            )
        if prometheus_sinks(config) != prometheus_sinks(self.config):
            raise StartupError(
                "metrics.sinks: cannot change while the server runs (the sinks keep their"
                " addresses until a restart)"
            )
        # The registry's API address and what it may publish: as admin, a restart.
        if dubbo_registry_config(config) != dubbo_registry_config(self.config):
            raise StartupError(
                "extends: dubbo_registry cannot change while the server runs (its API keeps"
                " its address until a restart)"
            )
        async with self._applying:
            refused = None if self.registry is None else self.registry.check_reload(config)
            if refused is not None:
                raise StartupError(refused)
            await self._apply(self._overlaid(config), nursery, drain_timeout)
            self.source_config = config
            if self.registry is not None:
                self.registry.applied_now()

    async def reapply(self, *, drain_timeout: float = 30.0) -> None:
        """Apply the configuration last given again, with the registry's subscriptions as
        they are now (a provider came or went)."""
        nursery = self._nursery
        if nursery is None:
            return
        async with self._applying:
            await self._apply(self._overlaid(self.source_config), nursery, drain_timeout)
            if self.registry is not None:
                self.registry.applied_now()

    def _overlaid(self, config: MeshConfig) -> MeshConfig:
        return config if self.registry is None else self.registry.overlay(config)

    async def _apply(self, config: MeshConfig, nursery: trio.Nursery, drain_timeout: float) -> None:
        # Every TLS context, listeners' and clusters', from the files as they are now
        # (rotation), built once in a thread before anything changes: a key that cannot be
        # honoured refuses the whole configuration. New handshakes and new upstream
        # connections use them; open ones keep theirs.
        contexts = await trio.to_thread.run_sync(build_contexts, config)
        cluster_tls = contexts.clusters
        old = {lst.name: lst for lst in self.config.listeners}
        new = {lst.name: lst for lst in config.listeners}
        # New clusters first: the listeners built below may name them. Existing ones change
        # only once nothing below can fail.
        added_clusters = self.clusters.add_missing(config.cluster_manager.clusters, cluster_tls)
        tables = {
            r.router_config_name: RouteTable.compile(r)
            for server in config.servers
            for r in server.routers
        }
        # Proxies hold their table object: the ones kept will take the new routes in place.
        staged = {name: self.routes.get(name, table) for name, table in tables.items()}
        # A top-level tracing change rebuilds every listener: their proxies hold a tracer.
        retracing = config.tracing != self.config.tracing
        saved_tracers = self.tracers
        self.tracers = TracerSet(config, self.tracing_stats, previous=saved_tracers)
        changed = [lst for name, lst in new.items() if retracing or old.get(name) != lst]
        built = {}
        fresh_sockets: dict[str, socket.socket] = {}
        saved_logs = dict(self.access_logs)
        try:
            for lst in changed:
                self._stats.setdefault(lst.name, ListenerStats())
                if old.get(lst.name) is None or old[lst.name].access_logs != lst.access_logs:
                    self.access_logs[lst.name] = _access_logs(lst)
                built[lst.name] = self._build_handler(
                    lst, staged, self._stats[lst.name], contexts.listeners[lst.name]
                )
            # Certificate rotation: the listeners kept as they are take the TLS contexts
            # just built from the files, swapped in below for new handshakes.
            kept = [lst for name, lst in new.items() if old.get(name) == lst and not retracing]
            rotated = self._rotate(kept, contexts)
            await self._check_access_logs(lst.name for lst in changed)
            for lst in changed:
                before = old.get(lst.name)
                rebind = before is None or before.address != lst.address or not before.bind_port
                if lst.bind_port and (rebind or lst.name not in self.listeners):
                    if self._listeners_stopped:
                        log.warning("listener %r not started: the listeners were drained", lst.name)
                        continue
                    fresh_sockets[lst.name] = await self._listen(lst)
        except BaseException:
            for sock in fresh_sockets.values():
                sock.close()
            self.access_logs = saved_logs
            self.tracers = saved_tracers
            self.clusters.remove(added_clusters)
            raise
        # From here on nothing awaits until every swap is made: no request sees half of it.
        stale_clusters, left_hosts = self.clusters.update(
            config.cluster_manager.clusters, cluster_tls
        )
        for name, table in tables.items():
            if name in self.routes:
                self.routes[name].become(table)
            else:
                self.routes[name] = table
        for name in [n for n in self.routes if n not in tables]:
            del self.routes[name]
        for chain in self._chains.values():
            chain.forget_routes()
        for tls_chain, tls, ids in rotated:
            # Open connections keep the context they were accepted with.
            tls_chain.tls, tls_chain.identities = tls, ids
        retiring: list[ListenerRuntime] = []
        starting: list[ListenerRuntime] = []
        for lst in changed:
            handler, self._chains[lst.name] = built[lst.name]
            runtime = self.listeners.get(lst.name)
            if lst.name in fresh_sockets:
                if runtime is not None:
                    retiring.append(self.listeners.pop(lst.name))
                runtime = self._runtime(lst, fresh_sockets[lst.name], handler)
                self.listeners[lst.name] = runtime
                starting.append(runtime)
            elif runtime is not None and not lst.bind_port:
                retiring.append(self.listeners.pop(lst.name))
            elif runtime is not None:
                # Same socket, new chain: the connections of the old chain finish and close.
                runtime.handler = handler
                runtime.idle_timeout = lst.connection_idle_timeout or None
                runtime.max_connections = lst.max_connections
                runtime.original_dst = _reads_original_dst(lst)
                for conn in list(runtime.connections):
                    conn.drain()
        for name in [n for n in old if n not in new]:
            runtime = self.listeners.pop(name, None)
            if runtime is not None:
                retiring.append(runtime)
            self._chains.pop(name, None)
        self.config = config
        # Nothing routes to a removed cluster any more: retire it and the hosts that left
        # (a removed cluster's nursery ends once its requests in flight are done).
        self.clusters.remove(c.name for c in stale_clusters)
        self.pools.retire(left_hosts)
        self.pools.remove_clusters(stale_clusters)
        self.pools.start_resolvers(self.clusters.clusters.values())
        self.pools.check_health(self.clusters.clusters.values())
        for runtime in retiring:
            log.info("listener %r removed: draining", runtime.name)
            runtime.drain()
            nursery.start_soon(_drain_then_close, runtime, drain_timeout)
        for lst in changed:
            if self.access_logs[lst.name] is not saved_logs.get(lst.name):
                for access_log in self.access_logs[lst.name]:
                    await nursery.start(access_log.run)
        running = saved_tracers.exporters()
        for exporter in running:
            if exporter not in self.tracers.exporters():
                exporter.close()  # exports what it holds, then ends
        for exporter in self.tracers.exporters():
            if exporter not in running:
                await nursery.start(exporter.run)
        for runtime in starting:
            await nursery.start(runtime.serve)
            log.info("listener %r listening on %s", runtime.name, format_hostport(*runtime.address))
        log.info(
            "configuration applied: %d listeners, %d clusters, %d route tables",
            len(new),
            len(self.clusters.clusters),
            len(self.routes),
        )


async def _drain_then_close(runtime: ListenerRuntime, timeout: float) -> None:
    with trio.move_on_after(timeout):
        await runtime.wait_closed()
        return
    log.info("listener %r: drain timeout, closing what is left", runtime.name)
    runtime.close_now()


def _access_logs(listener: Listener) -> tuple[AccessLog, ...]:
    """The listener's access logs; their module is imported only when one is configured."""
    if not listener.access_logs:
        return ()
    from .proxy.accesslog import AccessLog

    return tuple(AccessLog(c) for c in listener.access_logs)


def _handler(
    listener: Listener, ctx: BuildContext, tls_built: ChainTls
) -> Callable[[Connection], Awaitable[None]]:
    """The listener's connection handler. One plaintext chain, nothing to match and no
    inspector: that chain's handler itself (no read before it, no cost). Otherwise a
    `ChainDispatcher` that reads the ClientHello, selects the chain and terminates TLS.
    ``tls_built``: each chain's TLS, as ``build_contexts`` made it (no file read here)."""
    chains = listener.filter_chains
    if len(chains) == 1 and not _needs_dispatch(listener):
        return _chain_handler(listener, chains[0], ctx)
    built = []
    for index, (chain, (tls, ids)) in enumerate(zip(chains, tls_built, strict=True)):
        built.append(
            Chain(
                index,
                # An empty match matches everything: the default chain, as no match at all.
                chain.filter_chain_match if chain.match_key() is not None else None,
                tls,
                _chain_handler(listener, chain, ctx),
                ids,
            )
        )
    return ChainDispatcher(
        listener.name,
        built,
        inspector=listener.inspector,
        handshake_timeout=float(listener.tls_handshake_timeout),
        max_handshakes=int(listener.max_concurrent_handshakes),
        stats=ctx.listener_stats,
    )


def _listener_filters(listener: Listener, handler: Handler, stats: ListenerStats) -> Handler:
    """``handler`` behind the listener's listener filters (none: ``handler`` itself, at no
    cost per connection)."""
    for lf in listener.listener_filters:
        if lf.type != "proxy_protocol":
            continue  # MOSN's pending ones: the config warned (validation allows one of ours)
        config = lf.config if lf.config is not None else ProxyProtocolConfig()
        handler = ProxyProtocolHandler(
            listener.name,
            handler,
            # 0: no timeout of its own (Envoy's): the connection's idle timeout bounds it.
            timeout=float(listener.listener_filters_timeout) or math.inf,
            allow_without=config.allow_requests_without_proxy_protocol,
            stats=stats,
        )
    return handler


def _reads_original_dst(listener: Listener) -> bool:
    """``use_original_dst`` (MOSN's) or Envoy's ``original_dst`` listener filter."""
    return listener.use_original_dst or any(
        lf.type == "original_dst" for lf in listener.listener_filters
    )


def _needs_dispatch(listener: Listener) -> bool:
    return listener.inspector or any(
        c.match_key() is not None or c.tls_configs() for c in listener.filter_chains
    )


def _default_alpn(chain: FilterChain) -> tuple[str, ...]:
    """What a TLS chain offers in ALPN when its ``alpn`` is not set: its proxy's protocols."""
    last = chain.filters[-1] if chain.filters else None
    if last is None or last.type != "proxy" or not isinstance(last.config, ProxyConfig):
        return ()
    return _ALPN_BY_PROTOCOL.get(last.config.downstream_protocol, ())


_ALPN_BY_PROTOCOL = {
    Protocol.HTTP1: ("http/1.1",),
    Protocol.HTTP2: ("h2",),
    Protocol.AUTO: ("h2", "http/1.1"),
}


def _server_tls(chain: FilterChain, path: str) -> ServerTls | None:
    return server_tls(chain, path, default_alpn=_default_alpn(chain))


def _chain_handler(
    listener: Listener, chain: FilterChain, ctx: BuildContext
) -> Callable[[Connection], Awaitable[None]]:
    """One chain's handler: validation left it ending in a terminal filter; the non-terminal
    ones before it see each connection first (``filters.network``)."""
    *front, last = chain.filters
    try:
        terminal = build_network_filter(last.type, last.config, ctx)
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(
            f"listener {listener.name!r} network filter {last.type!r}: {exc}"
        ) from exc
    built = []
    for f in front:
        if is_terminal(f.type):  # validation refuses this; a guard for configs built in code
            raise StartupError(f"listener {listener.name!r}: {f.type!r} must be the last filter")
        try:
            built.append((f.type, build_network_filter(f.type, f.config, ctx)))
        except StartupError:
            raise
        except Exception as exc:  # a filter's factory refused its config
            raise StartupError(
                f"listener {listener.name!r} network filter {f.type!r}: {exc}"
            ) from exc
    return compose(built, terminal.on_connection)
