"""The server: builds the runtime from a configuration and owns the root nursery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from .config import Listener, MeshConfig
from .config.filters import is_terminal
from .config.model import format_hostport
from .errors import StartupError
from .filters import BuildContext, build_network_filter
from .filters.background import Background
from .filters.network import compose
from .filters.stream import FilterChainFactory
from .network.connection import Connection
from .network.listener import ListenerRuntime, bind
from .pool import Pools
from .proxy import filter as _proxy_filter  # noqa: F401 - registers the proxy filter
from .proxy.accesslog import AccessLog
from .router import RouteTable
from .stats import ListenerStats
from .upstream import ClusterManager

log = logging.getLogger("trio_mesh.server")


class Server:
    """A running proxy, embeddable in any Trio nursery::

        server = await nursery.start(Server(config).run)
        host, port = server.addresses["ingress"]

    Cancelling the nursery closes every socket and task of the server.
    """

    def __init__(self, config: MeshConfig, *, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.clusters = ClusterManager(config.cluster_manager.clusters)
        self.pools = Pools()
        # Route tables are compiled once per configuration, never per request.
        self.routes = {
            r.router_config_name: RouteTable.compile(r)
            for server in config.servers
            for r in server.routers
        }
        self.access_logs = {
            lst.name: tuple(AccessLog(c) for c in lst.access_logs) for lst in config.listeners
        }
        self.listeners: dict[str, ListenerRuntime] = {}
        self.background = Background()

    async def drain(self, timeout: float) -> bool:
        """Stop gracefully: stop accepting, let requests in flight finish (HTTP/2 streams
        after a GOAWAY, HTTP/1 with ``Connection: close``), close idle connections; within
        ``timeout`` seconds. True if everything finished in time. Cancel the server's
        nursery afterwards to close the rest."""
        for runtime in self.listeners.values():
            runtime.drain()
        with trio.move_on_after(timeout):
            for runtime in list(self.listeners.values()):
                await runtime.wait_closed()
            return True
        return False

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """The real bound ``(host, port)`` of each bound listener, by name."""
        return {name: lst.address for name, lst in self.listeners.items()}

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        stats = {lst.name: ListenerStats() for lst in self.config.listeners}
        handlers = {}
        for lst in self.config.listeners:
            ctx = BuildContext(
                clusters=self.clusters,
                pools=self.pools,
                routes=self.routes,
                access_logs=self.access_logs[lst.name],
                listener_stats=stats[lst.name],
                listener=lst.name,
                background=self.background,
            )
            try:
                chain = FilterChainFactory(lst.stream_filters, ctx)
            except StartupError:
                raise
            except Exception as exc:  # a filter's factory refused its config
                raise StartupError(f"listener {lst.name!r} stream_filters: {exc}") from exc
            handlers[lst.name] = _handler(lst, attrs.evolve(ctx, stream_filters=chain or None))
        for name, logs in self.access_logs.items():
            for access_log in logs:
                try:
                    await trio.to_thread.run_sync(access_log.check)
                except OSError as exc:
                    reason = f"{exc.strerror} ({exc.filename})"
                    raise StartupError(f"listener {name!r}: {reason}") from None
        try:
            # Bind everything before serving anything: a port in use stops start-up as a whole.
            for lst in self.config.listeners:
                if not lst.bind_port:
                    log.info("listener %r: bind_port is false, not listening", lst.name)
                    continue
                sock = await bind(lst.name, lst.address, reuse_port=self.reuse_port)
                self.listeners[lst.name] = ListenerRuntime(
                    lst.name,
                    sock,
                    handlers[lst.name],
                    idle_timeout=lst.connection_idle_timeout,
                    max_connections=lst.max_connections,
                    stats=stats[lst.name],
                )
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pools.run)
                await nursery.start(self.background.run)
                for logs in self.access_logs.values():
                    for access_log in logs:
                        await nursery.start(access_log.run)
                for runtime in self.listeners.values():
                    await nursery.start(runtime.serve)
                    log.info(
                        "listener %r listening on %s",
                        runtime.name,
                        format_hostport(*runtime.address),
                    )
                task_status.started(self)
        finally:
            for runtime in self.listeners.values():
                runtime.sock.close()
            self.listeners.clear()


def _handler(listener: Listener, ctx: BuildContext) -> Callable[[Connection], Awaitable[None]]:
    """The listener's connection handler: validation left one chain ending in a terminal
    filter; the non-terminal ones before it see each connection first (``filters.network``)."""
    (chain,) = listener.filter_chains
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
