"""Child processes: start in their own process group, stop the whole group, measure the tree.

Every process the harness starts goes through :class:`Processes`, whose ``close()`` (called from
a ``finally``) stops them all, also after Ctrl-C or an error. Measurements read ``/proc``: CPU
time (utime+stime) and memory (VmRSS, VmHWM) summed over a process and its descendants, so a
contender with several processes (nginx master + worker, trio-mesh --workers 2, proxy.py's
acceptors) is measured whole.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class NotReady(RuntimeError):
    """A process did not start serving before its deadline (or exited)."""


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (children inherit it).

    The hard limit can only be raised with CAP_SYS_RESOURCE; without it the soft limit goes up
    to the hard one. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (wanted, hard):
        if target == resource.RLIM_INFINITY or target <= soft:
            continue
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Child:
    """One started process (the leader of its own process group) and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float  # time.perf_counter() just before the process was created

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Starts processes in new sessions and stops every one of them (group-wide) on ``close``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._count = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Child:
        self._count += 1
        log_path = self.log_dir / f"{self._count:03d}-{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,  # own process group: stopped as a whole, no stray Ctrl-C
            )
        child = Child(name, popen, log_path, started)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it is still there."""
        if child in self.children:
            self.children.remove(child)
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # Whatever is left of the group (a worker that outlived its master) goes too.
        _signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(2.0)

    def close(self) -> None:
        for child in list(reversed(self.children)):
            self.stop(child)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- readiness -----------------------------------------------------------------------------


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to 127.0.0.1:port is accepted."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(port: int, path: str = "/small", timeout: float = 2.0) -> int | None:
    """Status code of one ``GET path`` (Connection: close) to 127.0.0.1:port; None on failure."""
    request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(request.encode())
            data = b""
            while b"\r\n" not in data and len(data) < 8192:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def wait_accepting(child: Child, port: int, deadline: float, poll: float = 0.001) -> float:
    """Poll until the port accepts a connection; seconds since the child was started.

    Raises NotReady when the child exits or ``deadline`` (a perf_counter value) passes.
    """
    while True:
        if port_accepts(port, timeout=0.1):
            return time.perf_counter() - child.started_at
        code = child.exited()
        if code is not None:
            raise NotReady(f"{child.name} exited with code {code}:\n{child.log_tail()}")
        if time.perf_counter() > deadline:
            raise NotReady(f"{child.name}: port {port} not accepting connections in time")
        time.sleep(poll)


def wait_ready(
    child: Child,
    port: int,
    timeout: float = 30.0,
    path: str = "/small",
    status: Callable[[int, str], int | None] = http_status,
) -> float:
    """Wait until the port accepts a connection AND answers ``GET path`` with 200.

    ``status`` makes the request (HTTP/1.1 by default; ``bench.h2.h2_status`` for h2c-only
    listeners). Bounded: short sleeps between tries, one overall deadline. Returns the seconds
    from process start until the port first accepted a connection.
    """
    deadline = time.perf_counter() + timeout
    accepting = wait_accepting(child, port, deadline)
    last: int | None = None
    while True:
        last = status(port, path)
        if last == 200:
            return accepting
        code = child.exited()
        if code is not None:
            raise NotReady(f"{child.name} exited with code {code}:\n{child.log_tail()}")
        if time.perf_counter() > deadline:
            raise NotReady(f"{child.name}: GET {path} answered {last}, not 200, before deadline")
        time.sleep(0.02)


# --- measuring a process tree ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the tree (including reaped children's, via cutime/cstime)."""
    total = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) summed over the tree, KiB."""
    return sum(_status_kib(p, "VmRSS") for p in process_tree(pid))


def tree_hwm_kib(pid: int) -> int:
    """Peak resident memory (VmHWM) summed over the tree, KiB (an upper bound of the true peak)."""
    return sum(_status_kib(p, "VmHWM") for p in process_tree(pid))
