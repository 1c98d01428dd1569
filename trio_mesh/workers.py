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

from .config import Address, MeshConfig
from .errors import StartupError

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

    def __init__(self, config: MeshConfig) -> None:
        self.directory = tempfile.mkdtemp(prefix="trio-mesh-")  # 0700, ours alone
        self.path = os.path.join(self.directory, "control.sock")
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.admin: socket.socket | None = None
        self.config = config
        try:
            self.control.bind(self.path)
            self.control.listen(64)
            if config.admin is not None:
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
    ) -> None:
        self.started = time.monotonic()
        self.config, self.held = reserve_ports(config)
        self.workers = workers
        self.serve = serve
        self.notify = notify
        #: The admin process's slot is ``workers`` (after the workers'), when there is one.
        self.admin: AdminSockets | None = None
        self.admin_serve = admin_serve
        if workers > 1 and needs_admin_process(config):
            try:
                self.admin = AdminSockets(self.config)
            except BaseException:
                for s in self.held:
                    s.close()
                raise
            self.config = self.admin.config
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
            for s in self.held:
                s.close()
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

    def _name(self, slot: int) -> str:
        return "admin process" if slot == self.workers else f"worker {slot}"

    def _child(self, slot: int) -> int:
        """In the forked child: be worker ``slot`` or the admin process."""
        tag_log_lines(f"[{self._name(slot)}] ")
        if self.admin is None:
            return self.serve(self.config, self.ready_w)
        if slot == self.workers:
            serve = self.admin_serve or _default_admin_serve
            admin = self.admin
            return serve(
                self.config, admin.control, admin.admin, self.workers, self.started, self.ready_w
            )
        for s in self.admin.sockets():
            s.close()
        return self.serve(self.config, self.ready_w, AdminLink(self.admin.path, slot))

    def _poll(self) -> None:
        wait = 0.2
        if self.restarts:
            wait = max(0.0, min(wait, min(self.restarts.values()) - time.monotonic()))
        readable, _, _ = select.select([self.ready_r], [], [], wait)
        if readable:
            self.ready += len(os.read(self.ready_r, 64))
            if self.ready == self.expected:
                log.info("all %d workers ready", self.workers)
                self.notify(b"READY=1")
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
