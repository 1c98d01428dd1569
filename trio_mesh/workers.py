"""``--workers N``: N forked processes serving every listener through SO_REUSEPORT.

The parent runs no Trio loop: it binds nothing it serves, forks the workers, restarts one that
dies unasked, forwards SIGTERM/SIGINT/SIGHUP, tells systemd READY=1 once every worker is
listening, and exits when all workers are gone.

With an ``admin`` block or a metrics sink (and N > 1) it forks one more child, the admin
process (``trio_mesh.admin.workers_process``), restarted like a worker. The parent binds its
sockets and holds them across its restarts: the admin listener, and a unix socket in a private
(0700) directory that each worker links to (``trio_mesh.admin.worker_link``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import attrs

from .config import Address, MeshConfig, parse_config
from .config.errors import ConfigError
from .errors import StartupError
from .network.inherit import InheritedSockets, is_listening
from .upgrade import ADMIN

log = logging.getLogger("trio_mesh.workers")

RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 10.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: ``serve(config, ready_fd) -> exit code``: one worker's whole life; called with a third
#: argument, its ``AdminLink``, when an admin process serves the admin port.
Serve = Callable[..., int]
#: ``admin_serve(config, control, admin, workers, started, ready_fd) -> exit code``: the
#: admin process (``trio_mesh.admin.workers_process.run_admin_process``).
AdminServe = Callable[..., int]


@attrs.frozen
class AdminLink:
    """Where a worker links to the admin process, and the worker's slot (0..N-1)."""

    path: str
    slot: int


def needs_admin_process(config: MeshConfig) -> bool:
    """An admin port or a metrics sink to serve for every worker."""
    sinks = config.metrics.sinks if config.metrics is not None else ()
    return config.admin is not None or any(s.type == "prometheus" for s in sinks)


class AdminSockets:
    """What the admin process serves on, bound by the supervisor (no Trio here): the control
    socket in a fresh 0700 directory, and the admin listener (a port 0 becomes a real one,
    kept across restarts of the admin process)."""

    def __init__(self, config: MeshConfig, inherited: InheritedSockets | None = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="trio-mesh-")  # 0700, ours alone
        self.path = os.path.join(self.directory, "control.sock")
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.admin: socket.socket | None = None
        self.config = config
        try:
            self.control.bind(self.path)
            self.control.listen(64)
            if config.admin is not None:
                if inherited is not None:  # a hot upgrade: the old supervisor's
                    self.admin = inherited.take(ADMIN, config.admin.address)
                if self.admin is None:
                    self.admin = _listen(config.admin.address)
                port = self.admin.getsockname()[1]
                address = Address(host=config.admin.address.host, port=port)
                admin = attrs.evolve(config.admin, address=address)
                self.config = attrs.evolve(config, admin=admin)
        except BaseException:
            self.close()
            raise

    def sockets(self) -> list[socket.socket]:
        return [self.control] if self.admin is None else [self.control, self.admin]

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _listen(address: Address) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address.host, address.port))
            s.listen(128)
        except BaseException:
            s.close()
            raise
    except OSError as exc:
        reason = exc.strerror or exc
        raise StartupError(f"admin.address: cannot listen on {address}: {reason}") from None
    return s


def reserve_ports(config: MeshConfig) -> tuple[MeshConfig, list[socket.socket]]:
    """Turn every port 0 into one real port that all workers then share.

    The parent binds (without listening) a SO_REUSEPORT socket per such listener and holds it,
    so the port stays ours while workers come and go.
    """
    held: list[socket.socket] = []
    servers = []
    for server in config.servers:
        listeners = []
        for lst in server.listeners:
            if lst.bind_port and lst.address.port == 0:
                family = socket.AF_INET6 if ":" in lst.address.host else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((lst.address.host, 0))
                held.append(s)
                port = s.getsockname()[1]
                lst = attrs.evolve(lst, address=Address(host=lst.address.host, port=port))
            listeners.append(lst)
        servers.append(attrs.evolve(server, listeners=tuple(listeners)))
    return attrs.evolve(config, servers=tuple(servers)), held


class Supervisor:
    def __init__(
        self,
        config: MeshConfig,
        workers: int,
        serve: Serve,
        notify: Callable,
        admin_serve: AdminServe | None = None,
        *,
        own_sockets: bool = False,
        upgrade_path: str | None = None,
        document: Any = None,
    ) -> None:
        """``own_sockets``: bind every listener here, the workers inherit the sockets (else
        each worker binds its own with SO_REUSEPORT). ``upgrade_path``: take the sockets of
        the supervisor serving it (a hot upgrade), then serve it once every worker is ready;
        ``document``: the configuration document handed on (``inherit_old_mosnconfig``)."""
        self.started = time.monotonic()
        self.upgrade_path = upgrade_path
        self.document = document
        self.upgrades: Any = None  # upgrade.blocking.BlockingUpgradeServer, once all are ready
        self.takeover: Any = None  # upgrade.blocking.BlockingTakeover until we are ready
        inherited = None
        if upgrade_path is not None:
            from .upgrade.blocking import take_over_blocking

            want = config.inherit_old_mosnconfig
            self.takeover = take_over_blocking(upgrade_path, config, want_config=want)
            if self.takeover is not None:
                inherited = self.takeover.inherited
                if want:
                    config = self._inherit_config(config)
        #: The listening sockets the workers inherit (``own_sockets``), by listener name.
        self.listening: dict[str, socket.socket] = {}
        try:
            if own_sockets:
                self.config = self._listen(config, inherited)
                self.held: list[socket.socket] = []
            else:
                self.config, self.held = reserve_ports(config)
        except BaseException:
            self._close_sockets()
            if self.takeover is not None:
                self.takeover.abort()
            raise
        self.workers = workers
        self.serve = serve
        self.notify = notify
        #: The admin process's slot is ``workers`` (after the workers'), when there is one.
        self.admin: AdminSockets | None = None
        self.admin_serve = admin_serve
        if workers > 1 and needs_admin_process(config):
            try:
                self.admin = AdminSockets(self.config, inherited)
            except BaseException:
                self._close_sockets()
                if self.takeover is not None:
                    self.takeover.abort()
                raise
            self.config = self.admin.config
        if inherited is not None:
            inherited.close_leftovers()  # the old supervisor closes its own after its drain
        #: Children that say they are ready (the admin process too) before READY=1.
        self.expected = workers + (self.admin is not None)
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self.exit_code = 0
        self.ready = 0
        self.backoff = [RESTART_BACKOFF_MIN] * (workers + 1)
        #: slot -> monotonic time of its restart: waited for in ``_poll``, never slept
        #: through, so a slot's back-off does not stop the others being reaped and restarted.
        self.restarts: dict[int, float] = {}
        self.ready_r, self.ready_w = os.pipe()

    def _inherit_config(self, config: MeshConfig) -> MeshConfig:
        assert self.takeover is not None
        try:
            loaded = parse_config(self.takeover.document)
        except ConfigError as exc:
            self.takeover.abort()
            for line in exc.errors:
                log.error("inherit_old_mosnconfig: the old process's configuration: %s", line)
            raise StartupError(
                "inherit_old_mosnconfig: the old process's configuration is invalid"
            ) from None
        log.info("inherit_old_mosnconfig: running the old process's configuration")
        self.document = self.takeover.document
        return loaded.config

    def _listen(self, config: MeshConfig, inherited: InheritedSockets | None) -> MeshConfig:
        """Bind (or take) every listener's socket; a port 0 becomes the real one."""
        from .upgrade.blocking import bind_listener

        servers = []
        for server in config.servers:
            listeners = []
            for lst in server.listeners:
                if lst.bind_port:
                    sock = inherited.take(lst.name, lst.address) if inherited else None
                    if sock is None:
                        sock = bind_listener(lst.name, lst.address)
                    self.listening[lst.name] = sock
                    port = sock.getsockname()[1]
                    if port != lst.address.port:
                        lst = attrs.evolve(lst, address=Address(host=lst.address.host, port=port))
                listeners.append(lst)
            servers.append(attrs.evolve(server, listeners=tuple(listeners)))
        return attrs.evolve(config, servers=tuple(servers))

    def _close_sockets(self) -> None:
        for s in [*self.held, *self.listening.values()]:
            s.close()

    def _handed(self) -> list[tuple[str, socket.socket]]:
        """What a hot upgrade hands over: every listener's socket (still listening: not a
        listener a reload removed) and the admin port's."""
        handed = [(name, s) for name, s in self.listening.items() if is_listening(s)]
        if self.admin is not None and self.admin.admin is not None:
            handed.append((ADMIN, self.admin.admin))
        return handed

    def _all_ready(self) -> None:
        """Every child is ready: the old supervisor (a hot upgrade) may go; then the next
        upgrade finds us."""
        if self.takeover is not None:
            self.takeover.ready()
            self.takeover = None
        if self.upgrade_path is not None and self.upgrades is None:
            from .upgrade.blocking import BlockingUpgradeServer

            self.upgrades = BlockingUpgradeServer(
                self.upgrade_path, self._handed, lambda: self.document
            )
            self.upgrades.open()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        try:
            if self.admin is not None:
                self._spawn(self.workers)  # first: workers link to it as they start
            for slot in range(self.workers):
                self._spawn(slot)
            while self.children or (self.restarts and not self.stopping):
                self._poll()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close_sockets()
            if self.upgrades is not None:
                self.upgrades.close()
            if self.takeover is not None:  # never ready: the old supervisor serves on
                self.takeover.abort()
            if self.admin is not None:
                self.admin.close()
            os.close(self.ready_r)
            os.close(self.ready_w)
        log.info("all workers stopped")
        return self.exit_code

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if signum != signal.SIGHUP:
            if not self.stopping:
                workers = sum(1 for slot in self.children.values() if slot < self.workers)
                log.info("%s received, stopping %d worker(s)", name, workers)
                self.notify(b"STOPPING=1")
            self.stopping = True
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _spawn(self, slot: int) -> None:
        # Signals wait until the child is recorded (a SIGTERM in between would miss it) and,
        # in the child, until it no longer runs the parent's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            supervisor = os.getpid()
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    _die_with(supervisor)
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        signal.signal(sig, signal.SIG_DFL)
                    # Until the worker's own signal receiver is open, a SIGHUP (a reload,
                    # logrotate) must not kill it.
                    signal.signal(signal.SIGHUP, signal.SIG_IGN)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
                    for s in self.held:
                        s.close()
                    self._close_upgrade_sockets()
                    os.close(self.ready_r)
                    code = self._child(slot)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            self.children[pid] = slot
            if self.stopping:
                # The mask holds signals back for this thread only: one delivered to another
                # thread of the process (an embedding program's, a test's) still runs our
                # handler here, between the fork and the line above. Stop the child too.
                os.kill(pid, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        log.info("%s started (pid %d)", self._name(slot), pid)

    def _close_upgrade_sockets(self) -> None:
        # A worker has no part in an upgrade: only the supervisor's link may tell the old
        # one we are ready (or, closing, that we failed).
        if self.upgrades is not None:
            for s in self.upgrades.waitables():
                s.close()
        if self.takeover is not None:
            self.takeover.link.sock.close()

    def _name(self, slot: int) -> str:
        return "admin process" if slot == self.workers else f"worker {slot}"

    def _child(self, slot: int) -> int:
        """In the forked child: be worker ``slot`` or the admin process."""
        extra: dict[str, Any] = {}
        if self.listening:
            # Not one a reload removed (its drain shut it down): that one is bound anew.
            live = {name: s for name, s in self.listening.items() if is_listening(s)}
            extra["inherited"] = InheritedSockets(by_name=live)
        if self.admin is None:
            return self.serve(self.config, self.ready_w, **extra)
        if slot == self.workers:
            for s in self.listening.values():
                s.close()
            serve = self.admin_serve or _default_admin_serve
            admin = self.admin
            return serve(
                self.config, admin.control, admin.admin, self.workers, self.started, self.ready_w
            )
        for s in self.admin.sockets():
            s.close()
        return self.serve(self.config, self.ready_w, AdminLink(self.admin.path, slot), **extra)

    def _poll(self) -> None:
        wait = 0.2
        if self.restarts:
            wait = max(0.0, min(wait, min(self.restarts.values()) - time.monotonic()))
        upgrade_socks = self.upgrades.waitables() if self.upgrades is not None else []
        readable, _, _ = select.select([self.ready_r, *upgrade_socks], [], [], wait)
        if self.ready_r in readable:
            self.ready += len(os.read(self.ready_r, 64))
            if self.ready == self.expected:
                log.info("all %d workers ready", self.workers)
                self.notify(b"READY=1")
                self._all_ready()
        if self.upgrades is not None:
            for sock in readable:
                if sock is not self.ready_r:
                    self.upgrades.handle(sock)
            self.upgrades.expire()
            if self.upgrades.handed is not None and not self.stopping:
                workers = sum(1 for slot in self.children.values() if slot < self.workers)
                log.info(
                    "upgraded: pid %d took over; stopping %d worker(s) (they drain)",
                    self.upgrades.handed.pid,
                    workers,
                )
                self.notify(b"STOPPING=1")
                self.stopping = True
                # Workers drain without shutting the sockets down (the new ones accept on
                # them); the admin process just stops.
                for pid, slot in list(self.children.items()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2 if slot < self.workers else signal.SIGTERM)
        self._reap()
        if self.stopping:
            self.restarts.clear()
            return
        now = time.monotonic()
        for slot, at in list(self.restarts.items()):
            if at <= now:
                del self.restarts[slot]
                self._spawn(slot)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            slot = self.children.pop(pid)
            if self.stopping:
                continue
            how = _describe(status)
            name = self._name(slot)
            if self.ready < self.expected:
                # Dying before every worker ever listened is a start-up failure (a port in
                # use, say): restarting would only repeat it. Stop, and fail as one process.
                log.error("%s (pid %d) %s during start-up; stopping", name, pid, how)
                self.exit_code = 1
                self.stopping = True
                self._forward(signal.SIGTERM)
                continue
            wait = self.backoff[slot]
            log.error("%s (pid %d) %s; restarting in %.1fs", name, pid, how, wait)
            self.restarts[slot] = time.monotonic() + wait
            self.backoff[slot] = min(wait * 2, RESTART_BACKOFF_MAX)


def _default_admin_serve(*args: Any) -> int:
    from .admin.workers_process import run_admin_process

    return run_admin_process(*args)


_PR_SET_PDEATHSIG = 1


def _die_with(supervisor: int) -> None:
    """A child gets SIGTERM (and drains) when the supervisor dies, even by SIGKILL: else
    the workers would go on serving and the admin process would keep the admin port, with
    nothing left to stop them or restart one that dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
        return
    if os.getppid() != supervisor:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
