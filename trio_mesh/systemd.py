"""systemd: ``sd_notify`` (readiness, status, reload, stop, the watchdog) and socket
activation (``LISTEN_FDS``), without libsystemd.

Every variable systemd sets for us is removed from the environment once read: the worker
processes (and anything else started from here) must not take them as their own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

import trio

from .errors import StartupError
from .network.inherit import InheritedSockets, mark_shared

if TYPE_CHECKING:
    from .network.listener import ListenerRuntime
    from .server import Server

log = logging.getLogger("trio_mesh.systemd")

#: sd_listen_fds(3): the passed descriptors start here.
LISTEN_FDS_START = 3


def notify(message: bytes) -> None:
    """Tell systemd (``Type=notify``) ``message`` (``READY=1``, ``STATUS=...``, lines joined
    by newlines); a no-op outside systemd.

    Non-blocking: it runs inside the event loop (and in the workers' supervisor), and a
    notify socket whose reader has stopped (its queue full) must never stall the proxy. A
    message that cannot go now is dropped with a warning."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        try:
            s.sendto(message, target)
        except OSError as exc:  # BlockingIOError: the receiver's queue is full
            log.warning("sd_notify %r failed: %s", message, exc)


def status(text: str) -> bytes:
    return b"STATUS=" + text.encode("utf-8", "replace").replace(b"\n", b" ")


def ready(status_text: str) -> bytes:
    return b"READY=1\n" + status(status_text)


def reloading() -> bytes:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that ``Type=notify-reload`` requires (the
    moment the reload began, on CLOCK_MONOTONIC)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return b"RELOADING=1\n" + status("reloading") + b"\nMONOTONIC_USEC=%d" % usec


def stopping() -> bytes:
    return b"STOPPING=1\n" + status("draining")


def serving(listeners: int, source: str) -> str:
    """The ``STATUS=`` line while serving: the listener count and where the config came from."""
    return f"serving {listeners} listener(s) from {source}"


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> InheritedSockets | None:
    """The sockets systemd passed (sd_listen_fds_with_names(3)): ``None`` when none were
    passed to this process (no ``LISTEN_FDS``, or ``LISTEN_PID`` is another process's). Each
    descriptor gets FD_CLOEXEC; the variables are removed. ``StartupError`` when they do not
    make sense (a count that is not a number, names that do not match the count, a
    descriptor that is not a socket)."""
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    names_text = environ.pop("LISTEN_FDNAMES", None)
    if count is None or pid is None:
        return None
    if not pid.strip().isdigit() or int(pid) != os.getpid():
        return None  # meant for the process that started us
    try:
        n = int(count)
    except ValueError:
        raise StartupError(f"LISTEN_FDS: not a number: {count!r}") from None
    if n < 0:
        raise StartupError(f"LISTEN_FDS: not a count: {count!r}")
    names: list[str | None] = [None] * n
    if names_text is not None:
        given = names_text.split(":")
        if len(given) != n:
            raise StartupError(
                f"LISTEN_FDNAMES: {len(given)} name(s) for LISTEN_FDS={n}: {names_text!r}"
            )
        names = [name or None for name in given]
    pairs: list[tuple[str | None, socket.socket]] = []
    try:
        for fd, name in zip(range(LISTEN_FDS_START, LISTEN_FDS_START + n), names, strict=True):
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
                pairs.append((name, socket.socket(fileno=fd)))
            except OSError as exc:
                raise StartupError(
                    f"LISTEN_FDS: descriptor {fd} ({name or 'unnamed'}) is not a usable socket:"
                    f" {exc.strerror or exc}"
                ) from None
    except BaseException:
        for _, sock in pairs:
            sock.close()
        raise
    for _, sock in pairs:
        mark_shared(sock)  # systemd keeps its copy: a drain must never shut it down
    return InheritedSockets.of(pairs)


def watchdog_interval(environ: MutableMapping[str, str] = os.environ) -> float | None:
    """``WatchdogSec=`` in seconds (``WATCHDOG_USEC``), when it applies to this process
    (``WATCHDOG_PID`` unset or ours); the variables are removed."""
    usec = environ.pop("WATCHDOG_USEC", None)
    pid = environ.pop("WATCHDOG_PID", None)
    if usec is None:
        return None
    if pid is not None and (not pid.strip().isdigit() or int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC: not a number (%r): no watchdog pings", usec)
        return None
    return value / 1e6 if value > 0 else None


async def run_watchdog(
    server: Server,
    interval: float,
    ping: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``ping`` (``WATCHDOG=1``; a worker: a message to its supervisor) every half
    ``interval``, but only while the proxy works:

    - the event loop runs: this task is woken on time. A tick woken half the interval or
      more late (a blocking call, a CPU-bound stall) skips its ping; a loop blocked for
      good sends nothing at all;
    - every listener's accept loop is alive: since the last tick it went round (accepted,
      or retried after a failure: an accept back-off goes round every ``ACCEPT_BACKOFF``)
      or it is parked waiting for a connection (woken by the same loop that woke this
      task). One stuck elsewhere skips the ping.

    Never from a thread: a thread would go on pinging for a wedged loop."""
    period = interval / 2
    seen: dict[ListenerRuntime, int] = {}
    lag = 0.0
    task_status.started()
    while True:
        stuck, seen = _stuck_listeners(server, seen)
        if lag >= period:
            log.warning("watchdog: the event loop was blocked for %.2fs: no ping this time", lag)
        elif stuck:
            log.warning(
                "watchdog: listener(s) %s made no accept progress in %.2fs: no ping",
                ", ".join(repr(name) for name in stuck),
                period,
            )
        else:
            ping()
        due = trio.current_time() + period
        await trio.sleep_until(due)
        lag = trio.current_time() - due


def _stuck_listeners(
    server: Server, seen: dict[ListenerRuntime, int]
) -> tuple[list[str], dict[ListenerRuntime, int]]:
    stuck = []
    now: dict[ListenerRuntime, int] = {}
    for name, runtime in server.listeners.items():
        if not runtime.accepting:
            continue  # draining, removed: it accepts nothing on purpose
        passes = runtime.accept_passes
        now[runtime] = passes
        if not runtime.accept_parked and seen.get(runtime) == passes:
            stuck.append(name)
    return stuck, now
