"""``trio-mesh run | validate | version``."""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from . import __version__, systemd
from .config import ConfigError, MeshConfig, read_config
from .config.load import Loaded
from .config.values import log_level_number
from .config.xds import missing_xds_extra

if TYPE_CHECKING:
    from .network.inherit import InheritedSockets
    from .server import Server
    from .workers import AdminLink

log = logging.getLogger("trio_mesh")

# What SIGTERM gives requests in flight before the rest is closed (Envoy drains for longer;
# a sidecar is usually stopped with its application, which has already stopped sending).
DRAIN_TIMEOUT = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-mesh", description="A service-mesh proxy on Trio.")
    parser.add_argument("--version", action="version", version=f"trio-mesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy on a configuration file")
    run.add_argument("config", help="YAML (.yaml/.yml) or JSON (.json, MOSN v2) configuration")
    run.add_argument(
        "--log-level", help="DEBUG, INFO, WARN, ERROR (default: the config's, or INFO)"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing every listener through SO_REUSEPORT (default 1)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT,
        help="on SIGTERM/SIGINT, seconds to let requests in flight finish (default 5)",
    )
    run.add_argument(
        "--upgrade-socket",
        metavar="PATH",
        help="hot upgrade: take the listening sockets of the process serving PATH, then serve"
        " it (default: upgrade-<hash of the config path>.sock under $RUNTIME_DIRECTORY,"
        " /run/trio-mesh, $XDG_RUNTIME_DIR/trio-mesh or /tmp/trio-mesh-<uid>)",
    )
    validate = sub.add_parser("validate", help="check a configuration file and print its errors")
    validate.add_argument("config")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"trio-mesh {__version__}")
        return 0
    if args.command == "validate":
        return _validate(args.config)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.drain_timeout < 0:
        parser.error("--drain-timeout must not be negative")
    return _run(args.config, args.log_level, args.workers, args.drain_timeout, args.upgrade_socket)


def _read(path: str) -> Loaded:
    """``read_config`` plus the checks that read files: every TLS context is built
    (certificates readable, keys matching them); ``ConfigError`` lists every problem."""
    from .network.tls_context import check_config

    loaded = read_config(path)
    # Before any port is bound: an xDS configuration without the xds extra would fail at
    # its first import, with listeners already open.
    missing = missing_xds_extra(loaded.config)
    if missing is not None:
        raise ConfigError([f"{path}: {missing}"])
    errors = check_config(loaded.config)
    if errors:
        raise ConfigError(errors)
    if not loaded.config.listeners and loaded.config.xds_settings() is None:
        # Not an error (an admin-only process is possible), but "ready" with no port open
        # surprises whoever wrote ``servers: []`` by mistake.
        nothing = "servers: no listeners configured: the proxy will accept no connections"
        loaded = attrs.evolve(loaded, warnings=(*loaded.warnings, nothing))
    return loaded


def _validate(path: str) -> int:
    try:
        loaded = _read(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for w in loaded.warnings:
        print(f"warning: {w}", file=sys.stderr)
    cfg = loaded.config
    print(
        f"{path}: valid: {len(cfg.listeners)} listener(s), "
        f"{len(cfg.cluster_manager.clusters)} cluster(s), {len(loaded.warnings)} warning(s)"
    )
    return 0


def _run(
    path: str,
    log_level: str | None,
    workers: int = 1,
    drain_timeout: float = 5.0,
    upgrade_socket: str | None = None,
) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if log_level is not None:
            logging.getLogger().setLevel(log_level_number(log_level))
    except KeyError:
        print(f"--log-level: unknown level {log_level!r}", file=sys.stderr)
        return 2
    from .errors import StartupError

    # Read (and removed from the environment) first: whatever we start must not take them.
    watchdog = systemd.watchdog_interval()
    try:
        inherited = systemd.listen_fds()
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    try:
        loaded = _read(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    if log_level is None:
        levels = [s.default_log_level for s in loaded.config.servers if s.default_log_level]
        logging.getLogger().setLevel(log_level_number(levels[0]) if levels else logging.INFO)
    for w in loaded.warnings:
        log.warning("config: %s", w)
    if inherited is not None:
        passed = [inherited.describe(sock) for sock in inherited.leftovers()]
        log.info("socket activation: %d socket(s) passed: %s", len(passed), ", ".join(passed))
    source = path if loaded.config.xds_settings() is None else f"{path} and xDS"
    serve = functools.partial(
        _serve_process, drain_timeout=drain_timeout, path=path, watchdog=watchdog, source=source
    )
    upgrade = None
    if loaded.config.disable_upgrade:
        if upgrade_socket is not None:
            log.warning("--upgrade-socket ignored: the configuration says disable_upgrade")
    else:
        from .upgrade import default_socket_path

        upgrade = Upgrade(upgrade_socket or default_socket_path(path), _document(path))
    if workers == 1:
        return serve(loaded.config, None, upgrade=upgrade, inherited=inherited)
    from .config.registry import dubbo_registry_config

    if dubbo_registry_config(loaded.config) is not None:
        # One process must own the registry sessions and the clusters they feed.
        print(
            f"{path}: extends: dubbo_registry needs a single process: run without --workers",
            file=sys.stderr,
        )
        return 1
    from .admin.workers_process import run_admin_process
    from .workers import Supervisor

    admin_serve = functools.partial(run_admin_process, drain_timeout=drain_timeout)
    count = sum(1 for lst in loaded.config.listeners if lst.bind_port)
    status = f"{systemd.serving(count, source)}, {workers} workers"
    try:
        # The supervisor binds every listener's socket (or takes systemd's, or the old
        # supervisor's in a hot upgrade) and holds them across worker restarts.
        supervisor = Supervisor(
            loaded.config,
            workers,
            serve,
            systemd.notify,
            admin_serve,
            watchdog=watchdog,
            status=status,
            inherited=inherited,
            own_sockets=True,
            upgrade_path=upgrade.path if upgrade is not None else None,
            document=upgrade.document if upgrade is not None else None,
        )
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return supervisor.run()


def _serve_process(
    config: MeshConfig,
    ready_fd: int | None,
    link: AdminLink | None = None,
    drain_timeout: float = DRAIN_TIMEOUT,
    path: str | None = None,
    upgrade: Upgrade | None = None,
    inherited: InheritedSockets | None = None,
    watchdog: float | None = None,
    source: str | None = None,
) -> int:
    """Run one proxy process until a stop signal (or a hot upgrade took over); its exit
    code. ``path``: the file that SIGHUP reloads; ``link``: a worker's link to the admin
    process (``--workers N``); ``upgrade``: its socket and document; ``inherited``: sockets
    from systemd's socket activation, or a worker's, the supervisor's; ``watchdog``:
    systemd's WatchdogSec (a worker reports alive to its supervisor instead); ``source``:
    where the configuration came from (systemd's STATUS=)."""
    from .errors import StartupError

    serve = functools.partial(
        _serve,
        config,
        ready_fd,
        drain_timeout,
        path,
        link,
        upgrade=upgrade,
        inherited=inherited,
        watchdog=watchdog,
        source=source or path or "the configuration given",
    )
    try:
        trio.run(serve)
    except BaseExceptionGroup as group:
        # A port in use, an access log that cannot be opened: say which and exit 1, with
        # nothing left bound. Anything else is a bug.
        failures, rest = group.split(StartupError)
        if rest is not None or failures is None:
            raise
        for exc in failures.exceptions:
            log.error("%s", exc)
        return 1
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


async def _reload(server: Server, path: str, drain_timeout: float) -> bool:
    """SIGHUP: read ``path`` again and apply it; a file that does not validate, or a port
    that cannot be bound, leaves the running configuration as it was (False)."""
    from .errors import StartupError

    if server.xds is not None:
        log.warning("reload refused: the configuration comes from xDS (restart to change its file)")
        return False
    try:
        loaded = await trio.to_thread.run_sync(_read, path)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("reload refused, configuration kept: %s", line)
        return False
    for w in loaded.warnings:
        log.warning("config: %s", w)
    config = _keep_reserved_ports(loaded.config, server.config)
    try:
        await server.apply(config, drain_timeout=drain_timeout)
    except StartupError as exc:
        log.error("reload refused, configuration kept: %s", exc)
        return False
    log.info("configuration reloaded from %s", path)
    return True


def _keep_reserved_ports(config: MeshConfig, running: MeshConfig) -> MeshConfig:
    """A listener on port 0 that is running already keeps the port it has (with workers,
    the port the supervisor reserved for all of them), instead of moving to a new one; so
    does an admin block on port 0."""
    ports = {lst.name: lst.address for lst in running.listeners}
    servers = []
    for srv in config.servers:
        listeners = []
        for lst in srv.listeners:
            was = ports.get(lst.name)
            if lst.address.port == 0 and was is not None and was.host == lst.address.host:
                lst = attrs.evolve(lst, address=was)
            listeners.append(lst)
        servers.append(attrs.evolve(srv, listeners=tuple(listeners)))
    admin, was_admin = config.admin, running.admin
    if (
        admin is not None
        and was_admin is not None
        and admin.address.port == 0
        and admin.address.host == was_admin.address.host
    ):
        # With workers the supervisor chose the admin port once: the same block still.
        admin = attrs.evolve(admin, address=was_admin.address)
    return attrs.evolve(config, servers=tuple(servers), admin=admin)


@attrs.define
class Upgrade:
    """The hot upgrade of one process: the socket it takes over through (then serves), and
    the configuration document it runs (handed on for ``inherit_old_mosnconfig``)."""

    path: str
    document: Any = None
    #: ``upgrade.UpgradeServer`` while this process serves the upgrade socket.
    server: Any = None


async def _serve(
    config: MeshConfig,
    ready_fd: int | None,
    drain_timeout: float,
    path: str | None = None,
    link: AdminLink | None = None,
    *,
    upgrade: Upgrade | None = None,
    inherited: InheritedSockets | None = None,
    watchdog: float | None = None,
    source: str = "the configuration given",
) -> None:
    """``ready_fd``: a worker tells its supervisor on this pipe (which tells systemd).
    ``link``: the admin process serves the admin port; this worker answers it.
    ``upgrade``: take the sockets of a process serving its socket, then serve it."""
    from .errors import StartupError
    from .server import Server
    from .workers import ALIVE, tell_supervisor

    signals_wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    if ready_fd is not None:
        # A worker: its supervisor's hot upgrade says so (the sockets live on elsewhere).
        signals_wanted.append(signal.SIGUSR2)
    with trio.open_signal_receiver(*signals_wanted) as signals:
        takeover = None
        abandoned = False  # an upgrade whose old process gave up on us (and serves on)
        if upgrade is not None:
            takeover, config = await _take_over(upgrade, config)
            if takeover is not None:
                if inherited is None:
                    inherited = takeover.inherited
                else:  # started by systemd while another process serves: systemd's first
                    inherited.merge(takeover.inherited)
        try:
            async with trio.open_nursery() as nursery:
                # A worker (``ready_fd`` set) serves no admin API: workers would all bind its
                # port; with an admin block, one admin process serves them all, through
                # ``link``.
                worker = ready_fd is not None
                # The old process's publications and subscriptions (a hot upgrade): made
                # again by the server before it serves, so before the old one drains.
                # Failures are logged; the upgrade proceeds.
                server = Server(
                    config,
                    reuse_port=worker,
                    serve_admin=not worker,
                    inherited=inherited,
                    registry_state=None if takeover is None else takeover.registry,
                )
                await nursery.start(server.run)
                if watchdog is not None:
                    ping: functools.partial[None]
                    if ready_fd is None:
                        ping = functools.partial(systemd.notify, b"WATCHDOG=1")
                    else:  # the supervisor pings systemd while every worker says this
                        ping = functools.partial(tell_supervisor, ready_fd, ALIVE)
                    await nursery.start(systemd.run_watchdog, server, watchdog, ping)
                if link is not None:
                    from .admin.target import LocalTarget
                    from .admin.worker_link import run_worker_link

                    await nursery.start(run_worker_link, link.path, link.slot, LocalTarget(server))
                if takeover is not None:
                    # LIVE (with xDS: warm) before the old process stops accepting; a stop
                    # signal first abandons the upgrade (the old process serves on).
                    stopped_by = await _live_or_stop(server, signals)
                    if stopped_by is not None:
                        log.error("%s before ready: the upgrade is abandoned", stopped_by)
                        takeover.abort()
                        abandoned = True
                    else:
                        # The old process gave up on us: it serves on, we must not stay too.
                        abandoned = not await takeover.ready()
                    takeover = None
                stop = trio.Event()
                #: Set (before ``stop``) when another process accepts on our sockets now.
                handed_over = trio.Event()
                if abandoned:
                    handed_over.set()
                    stop.set()
                elif upgrade is not None:
                    await nursery.start(_serve_upgrades, upgrade, server, stop, handed_over)
                # Everything built so far lives as long as the process: keep it out of the
                # cyclic GC's generations so collections stay short.
                gc.freeze()
                # Requests make no reference cycles (reference counting frees them), yet every
                # 700 allocations cost a young-generation collection under Python's defaults:
                # 4-7% of a small GET's CPU here (more with stream filters). Collect less often.
                gc.set_threshold(20000, 20, 20)

                def serving(note: str = "") -> bytes:
                    return systemd.ready(systemd.serving(len(server.listeners), source) + note)

                if abandoned:
                    pass
                elif ready_fd is None:
                    systemd.notify(serving())
                    log.info("trio-mesh %s ready", __version__)
                elif (stopped_by := await _live_or_stop(server, signals)) is not None:
                    # A worker is ready once LIVE (xDS warm): a hot upgrade's new supervisor
                    # tells the old one to go only then.
                    if stopped_by == "SIGUSR2":
                        handed_over.set()
                    stop.set()
                else:
                    os.write(ready_fd, b"R")
                    log.info("trio-mesh %s ready (pid %d)", __version__, os.getpid())
                stop_now = trio.Event()
                nursery.start_soon(
                    _watch_signals,
                    signals,
                    server,
                    path,
                    drain_timeout,
                    upgrade,
                    stop,
                    stop_now,
                    handed_over,
                    ready_fd,
                    serving,
                )
                await stop.wait()
                # A successor holding our sockets (not ready yet) keeps them listening.
                keep_sockets = handed_over.is_set()
                if upgrade is not None and upgrade.server is not None:
                    upgrade.server.closed = True
                    keep_sockets = keep_sockets or upgrade.server.handing
                if ready_fd is None:
                    systemd.notify(systemd.stopping())
                async with trio.open_nursery() as draining:

                    async def stop_now_on_second_signal() -> None:
                        await stop_now.wait()
                        draining.cancel_scope.cancel()

                    draining.start_soon(stop_now_on_second_signal)
                    finished = await server.drain(
                        drain_timeout, handed_over=handed_over.is_set(), keep_sockets=keep_sockets
                    )
                    log.info("drained" if finished else "drain timeout: closing what is left")
                    draining.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
            if abandoned:
                raise StartupError("upgrade: not taken over: the old process serves on")
        finally:
            if takeover is not None:  # never ready: the old process goes on serving
                takeover.abort()


async def _live_or_stop(server: Server, signals: Any) -> str | None:
    """Wait until ``server`` is LIVE; ``None`` then, or the name of a stop signal that came
    first (a SIGHUP before ready has nothing to reload: logged, dropped)."""
    stopped_by: str | None = None
    async with trio.open_nursery() as nursery:

        async def live() -> None:
            await server.live.wait()
            nursery.cancel_scope.cancel()

        async def stop_signal() -> None:
            nonlocal stopped_by
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
                    stopped_by = name
                    nursery.cancel_scope.cancel()
                    return
                log.warning("%s before ready: ignored", name)

        nursery.start_soon(live)
        nursery.start_soon(stop_signal)
    return stopped_by


async def _take_over(upgrade: Upgrade, config: MeshConfig) -> tuple[Any, MeshConfig]:
    """The old process's sockets (``None``: nobody there), and the configuration to run:
    its document with ``inherit_old_mosnconfig``."""
    from .config import parse_config
    from .config.registry import dubbo_registry_config
    from .errors import StartupError
    from .upgrade import take_over

    want_config = config.inherit_old_mosnconfig
    # The registry's state is asked for when this process will run a registry (with the old
    # configuration: whenever the old process has one).
    want_registry = want_config or dubbo_registry_config(config) is not None
    takeover = await take_over(
        upgrade.path, config, want_config=want_config, want_registry=want_registry
    )
    if takeover is None or not config.inherit_old_mosnconfig:
        return takeover, config
    try:
        loaded = parse_config(takeover.document)
    except ConfigError as exc:
        takeover.abort()
        for line in exc.errors:
            log.error("inherit_old_mosnconfig: the old process's configuration: %s", line)
        raise StartupError(
            "inherit_old_mosnconfig: the old process's configuration is invalid"
        ) from None
    for w in loaded.warnings:
        log.warning("config (inherited): %s", w)
    log.info("inherit_old_mosnconfig: running the old process's configuration")
    upgrade.document = takeover.document
    return takeover, loaded.config


async def _serve_upgrades(
    upgrade: Upgrade,
    server: Server,
    stop: trio.Event,
    handed_over: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the upgrade socket; an upgrade that completes stops this process (a drain)."""
    from .server import SINK_PREFIX
    from .upgrade import ADMIN, REGISTRY, UpgradeServer

    def sockets() -> list[tuple[str, socket.socket]]:
        handed = [(name, runtime.sock) for name, runtime in server.listeners.items()]
        if server.admin_socket is not None:
            handed.append((ADMIN, server.admin_socket))
        if server.registry_socket is not None:
            handed.append((REGISTRY, server.registry_socket))
        handed += [(f"{SINK_PREFIX}{i}", s) for i, s in enumerate(server.sink_sockets)]
        return handed

    upgrades = upgrade.server = UpgradeServer(
        upgrade.path, sockets, lambda: upgrade.document, server.registry
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(upgrades.run)
        task_status.started()
        await upgrades.upgraded.wait()
        handed = upgrades.handed
        log.info("upgraded: pid %s took over; draining", handed.pid if handed else "?")
        handed_over.set()
        stop.set()
        nursery.cancel_scope.cancel()


async def _watch_signals(
    signals: Any,
    server: Server,
    path: str | None,
    drain_timeout: float,
    upgrade: Upgrade | None,
    stop: trio.Event,
    stop_now: trio.Event,
    handed_over: trio.Event,
    ready_fd: int | None,
    serving: Callable[[str], bytes],
) -> None:
    """SIGHUP reloads (systemd: RELOADING=1, then READY=1 applied or refused; a worker
    tells its supervisor); SIGTERM/SIGINT set ``stop`` (a drain), a second one
    ``stop_now``. The only task reading the signals (a trio signal receiver allows one)."""
    from .workers import RELOADED, tell_supervisor

    async for signum in signals:
        if stop.is_set():  # draining (a signal, or an upgrade took over)
            if signum != signal.SIGHUP:
                stop_now.set()
            continue
        if signum == signal.SIGHUP:
            if ready_fd is None:
                systemd.notify(systemd.reloading())
            applied = False
            if path is None:
                log.warning("SIGHUP received: no configuration file to reload")
            else:
                log.info("SIGHUP received: reloading %s", path)
                applied = await _reload(server, path, drain_timeout)
                if applied and upgrade is not None:
                    # What an upgrade with inherit_old_mosnconfig runs from now on.
                    upgrade.document = await trio.to_thread.run_sync(_document, path)
            # Applied or refused, the reload is over: systemd waits for READY=1.
            if ready_fd is None:
                systemd.notify(serving("" if applied else " (reload refused: configuration kept)"))
            else:
                tell_supervisor(ready_fd, RELOADED)
            continue
        if signum == signal.SIGUSR2:
            log.info("the supervisor handed the sockets over (a hot upgrade): draining")
            handed_over.set()
            stop.set()
            continue
        log.info(
            "%s received, draining (at most %gs; again to stop now)",
            signal.Signals(signum).name,
            drain_timeout,
        )
        stop.set()


def _document(path: str) -> Any:
    from .upgrade import read_document

    try:
        return read_document(path)
    except Exception as exc:  # an edit racing the reload: YAML or JSON errors, I/O
        log.warning("%s: cannot keep its document for an upgrade: %s", path, exc)
        return None


if __name__ == "__main__":
    sys.exit(main())
