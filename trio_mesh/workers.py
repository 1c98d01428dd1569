"""``--workers N``: N forked processes serving every listener on shared sockets.

The parent runs no Trio loop: it binds every listener's socket (or takes the ones systemd
passed, or the old supervisor's in a hot upgrade, and serves the upgrade socket from its
select loop), forks the workers that inherit and all accept on them, restarts one that dies
unasked, forwards SIGTERM/SIGINT/SIGHUP, tells systemd READY=1 once every worker is
listening, and exits when all workers are gone. (``Supervisor(own_sockets=False)``: each
worker binds with SO_REUSEPORT, only systemd's sockets are held here.)

It speaks to systemd for all of them (``trio_mesh.systemd``): READY=1 and STATUS=,
RELOADING=1 on SIGHUP and READY=1 once every worker has reloaded, STOPPING=1, and with
WatchdogSec= the WATCHDOG=1 pings while every worker reports alive (each runs the watchdog
task of a single process, but tells the supervisor). Workers write to it on one pipe: ``R``
(ready, one byte: the admin process too), ``A`` + pid (alive) and ``H`` + pid (reloaded).
Sockets from systemd's socket activation are held here and inherited by every worker.

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
import struct
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import attrs

from . import systemd
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


#: A worker's messages on the ready pipe besides ``R``: the kind and its pid (4 bytes).
ALIVE = b"A"
RELOADED = b"H"
_PID = struct.Struct("!I")


def tell_supervisor(fd: int, kind: bytes) -> None:
    """Write ``kind`` + our pid on the ready pipe. Non-blocking (the pipe is): a supervisor
    that stopped reading must not stall a worker's event loop; the message is dropped."""
    try:
        os.write(fd, kind + _PID.pack(os.getpid()))
    except BlockingIOError:
        log.warning("the supervisor's pipe is full: %r not sent", kind)


def claim(inherited: InheritedSockets, config: MeshConfig) -> InheritedSockets:
    """The activated sockets the listeners of ``config`` take, by listener name (what each
    worker's server takes again from its copy); the others are closed with a warning."""
    claimed = InheritedSockets()
    inherited.reserved = {lst.name for lst in config.listeners}
    try:
        for lst in config.listeners:
            if lst.bind_port:
                sock = inherited.take(lst.name, lst.address)
                if sock is not None:
                    claimed.by_name[lst.name] = sock
    except BaseException:
        for sock in [*claimed.leftovers(), *inherited.leftovers()]:
            sock.close()
        raise
    inherited.close_leftovers()
    return claimed


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


def reserve_ports(
    config: MeshConfig, inherited: frozenset[str] = frozenset()
) -> tuple[MeshConfig, list[socket.socket]]:
    """Turn every port 0 into one real port that all workers then share.

    The parent binds (without listening) a SO_REUSEPORT socket per such listener and holds it,
    so the port stays ours while workers come and go. Not for the listeners named in
    ``inherited``: they serve on a socket systemd passed.
    """
    held: list[socket.socket] = []
    servers = []
    for server in config.servers:
        listeners = []
        for lst in server.listeners:
            if lst.bind_port and lst.address.port == 0 and lst.name not in inherited:
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
        notify: Callable[[bytes], None],
        admin_serve: AdminServe | None = None,
        *,
        watchdog: float | None = None,
        status: str = "serving",
        inherited: InheritedSockets | None = None,
        own_sockets: bool = False,
        upgrade_path: str | None = None,
        document: Any = None,
    ) -> None:
        """``own_sockets``: bind every listener here, the workers inherit the sockets (else
        each worker binds its own with SO_REUSEPORT). ``inherited``: systemd's sockets
        (taken before the old supervisor's; what no listener takes is closed).
        ``upgrade_path``: take the sockets of the supervisor serving it (a hot upgrade),
        then serve it once every worker is ready; ``document``: the configuration document
        handed on (``inherit_old_mosnconfig``). ``watchdog``/``status``: systemd's
        WatchdogSec= and the STATUS= text while serving."""
        self.started = time.monotonic()
        #: systemd's WatchdogSec=: WATCHDOG=1 every half of it while every worker's last
        #: ``A`` is recent (``alive``: pid -> monotonic time; a spawn counts as one).
        self.watchdog = watchdog
        self.alive: dict[int, float] = {}
        self.next_ping = time.monotonic()
        #: systemd's STATUS= while serving.
        self.status = status
        #: The workers whose ``H`` a reload still waits for (``None``: no reload running).
        self.reloading: set[int] | None = None
        self._messages = b""
        self.upgrade_path = upgrade_path
        self.document = document
        self.upgrades: Any = None  # upgrade.blocking.BlockingUpgradeServer, once all are ready
        self.takeover: Any = None  # upgrade.blocking.BlockingTakeover until we are ready
        #: The listening sockets the workers inherit, by listener name: every listener's
        #: (``own_sockets``), else those systemd passed (``claim``); held here across worker
        #: restarts, closed at exit.
        self.listening: dict[str, socket.socket] = {}
        self.held: list[socket.socket] = []
        try:
            if upgrade_path is not None:
                from .upgrade.blocking import take_over_blocking

                want = config.inherit_old_mosnconfig
                self.takeover = take_over_blocking(upgrade_path, config, want_config=want)
                if self.takeover is not None:
                    if inherited is None:
                        inherited = self.takeover.inherited
                    else:  # started by systemd while another supervisor serves: systemd's first
                        inherited.merge(self.takeover.inherited)
                    if want:
                        config = self._inherit_config(config)
            if own_sockets:
                self.config = self._listen(config, inherited)
            else:
                if inherited is not None:
                    self.listening = dict(claim(inherited, config).by_name)
                taken = frozenset(self.listening)
                self.config, self.held = reserve_ports(config, taken)
        except BaseException:
            self._abandon(inherited)
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
                self._abandon(inherited)
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
        # The children's writes must never block their event loops (``tell_supervisor``).
        os.set_blocking(self.ready_w, False)

    def _abandon(self, inherited: InheritedSockets | None) -> None:
        """A failed start: close every socket we hold or were handed (the old supervisor of
        a hot upgrade serves on with its own)."""
        self._close_sockets()
        if inherited is not None:
            for sock in inherited.leftovers():
                sock.close()
        if self.takeover is not None:
            self.takeover.abort()

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

        if inherited is not None:
            inherited.reserved = {lst.name for lst in config.listeners}
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
            took = self.takeover.ready()
            self.takeover = None
            if not took:
                # It serves on with the sockets: our workers drain (not shutting them down)
                # rather than serve beside it for ever.
                log.error("upgrade: the old supervisor serves on (it gave up on us): stopping")
                self.exit_code = 1
                self.stopping = True
                for pid, slot in list(self.children.items()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2 if slot < self.workers else signal.SIGTERM)
                return
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
                self.notify(systemd.stopping())
            self.stopping = True
            taking = self.takeover is not None  # the old supervisor's sockets, not ready
            if taking or (self.upgrades is not None and self.upgrades.handing):
                # A new supervisor holds the sockets (not ready yet), or the old one still
                # serves on ours: the workers drain without shutting them down.
                if self.upgrades is not None:
                    self.upgrades.closed = True
                for pid, slot in list(self.children.items()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2 if slot < self.workers else signum)
                return
            if self.upgrades is not None:
                self.upgrades.closed = True
        elif not self.stopping and self.ready >= self.expected:
            # Each worker reloads on its own; READY=1 again once all of them are done.
            self.notify(systemd.reloading())
            self.reloading = set(self._worker_pids())
        self._forward(signum)

    def _worker_pids(self) -> list[int]:
        return [pid for pid, slot in self.children.items() if slot < self.workers]

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
            self.alive[pid] = time.monotonic()  # it has the interval to say so itself
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
        tag_log_lines(f"[{self._name(slot)}] ")
        extra: dict[str, Any] = {}
        if self.listening:
            # Not one a reload removed (its drain shut it down): that one is bound anew.
            live = {name: s for name, s in self.listening.items() if is_listening(s)}
            extra["inherited"] = InheritedSockets(by_name=live)
        if self.admin is None:
            return self.serve(self.config, self.ready_w, **extra)
        if slot == self.workers:
            for s in self.listening.values():  # the workers' sockets: not the admin process's
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
        if self.watchdog is not None:
            wait = max(0.0, min(wait, self.next_ping - time.monotonic()))
        upgrade_socks = self.upgrades.waitables() if self.upgrades is not None else []
        readable, _, _ = select.select([self.ready_r, *upgrade_socks], [], [], wait)
        if self.ready_r in readable:
            self._read_messages(os.read(self.ready_r, 4096))
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
                self.notify(systemd.stopping())
                self.stopping = True
                # Workers drain without shutting the sockets down (the new ones accept on
                # them); the admin process just stops.
                for pid, slot in list(self.children.items()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2 if slot < self.workers else signal.SIGTERM)
        self._reap()
        self._check_reloaded()
        if self.watchdog is not None and time.monotonic() >= self.next_ping:
            self._watchdog(self.watchdog)
        if self.stopping:
            self.restarts.clear()
            return
        now = time.monotonic()
        for slot, at in list(self.restarts.items()):
            if at <= now:
                del self.restarts[slot]
                self._spawn(slot)

    def _read_messages(self, data: bytes) -> None:
        # Each write is one message, whole (shorter than PIPE_BUF); a read may end midway.
        buf = self._messages + data
        at = 0
        while at < len(buf):
            kind = buf[at : at + 1]
            if kind in (ALIVE, RELOADED):
                if len(buf) - at < 1 + _PID.size:
                    break
                (pid,) = _PID.unpack_from(buf, at + 1)
                at += 1 + _PID.size
                if kind == ALIVE:
                    if pid in self.children:
                        self.alive[pid] = time.monotonic()
                elif self.reloading is not None:
                    self.reloading.discard(pid)
                continue
            at += 1  # ``R``
            self.ready += 1
            if self.ready == self.expected:
                log.info("all %d workers ready", self.workers)
                self.notify(systemd.ready(self.status))
                self._all_ready()
        self._messages = buf[at:]

    def _check_reloaded(self) -> None:
        if self.reloading is None:
            return
        self.reloading &= set(self.children)  # one that died has nothing more to say
        if not self.reloading:
            self.reloading = None
            if not self.stopping:
                self.notify(systemd.ready(self.status))

    def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 if every worker said it is alive within three quarters of the interval
        (each says so every half: a quarter of slack). A worker being restarted is not
        waited for: the supervisor does that work, and is alive."""
        now = time.monotonic()
        self.next_ping = now + interval / 2
        late = [
            pid for pid in self._worker_pids() if now - self.alive.get(pid, now) > interval * 0.75
        ]
        if late:
            log.warning(
                "watchdog: worker(s) %s not alive for %.2fs: no ping",
                ", ".join(f"{self._name(self.children[pid])} (pid {pid})" for pid in late),
                interval * 0.75,
            )
            return
        self.notify(b"WATCHDOG=1")

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
            self.alive.pop(pid, None)
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


class _TaggedFormatter(logging.Formatter):
    """Puts ``tag`` before each record the wrapped formatter writes."""

    def __init__(self, inner: logging.Formatter, tag: str) -> None:
        super().__init__()
        self.inner, self.tag = inner, tag

    def format(self, record: logging.LogRecord) -> str:
        return self.tag + self.inner.format(record)


def tag_log_lines(tag: str) -> None:
    """In a child: every line its root handlers write starts with ``tag`` (which process
    wrote it, since all of them share the supervisor's stderr)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_TaggedFormatter(handler.formatter or logging.Formatter(), tag))


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
