"""Load generators: wrk (throughput), h2load (fixed rate; HTTP/2 throughput), and an
idle-connection client.

Every load is bounded: wrk and h2load run for a fixed duration under a subprocess timeout,
the idle client opens a fixed number of connections under an overall deadline. All traffic
goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

WRK = shutil.which("wrk") or "/usr/bin/wrk"
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"


class LoadError(RuntimeError):
    """The load tool itself failed (not: the contender answered slowly or with errors)."""


@dataclass
class LoadResult:
    """One load run against one contender."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int = 0  # socket errors, failed or timed-out requests
    non_2xx: int = 0
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# --- wrk -----------------------------------------------------------------------------------

POST_LUA = """\
-- 1 KiB POST body (wrk adds Content-Length)
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def run_wrk(
    url: str,
    duration: float,
    connections: int = 50,
    *,
    script: Path | None = None,
    headers: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadResult:
    """``wrk -t1 -c<connections> -d<duration>s --latency``; parsed Requests/sec and latencies.
    ``env``: added to the environment (``OPENSSL_CONF`` for https URLs)."""
    # wrk takes whole seconds only.
    seconds = max(1, round(duration))
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 30,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(argv)}") from exc
    if out.returncode != 0:
        raise LoadError(f"wrk exited {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return parse_wrk(out.stdout)


def parse_wrk(text: str) -> LoadResult:
    """Requests/sec, the --latency distribution (50%, 99%), Max, errors, from wrk's output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    done = re.search(r"(\d+) requests in " + _TIME, text)
    if rps is None or done is None:
        raise LoadError(f"cannot parse wrk output:\n{text}")
    pct = {
        int(m.group(1)): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(\d+)%\s+" + _TIME + r"\s*$", text, re.M)
    }
    latency = re.search(r"Latency\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME, text)
    max_ms = _ms(latency.group(5), latency.group(6)) if latency else None
    errors = 0
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors = sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return LoadResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2), done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=pct.get(50),
        p99_ms=pct.get(99),
        max_ms=max_ms,
        errors=errors,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


# --- h2load at a fixed rate ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_fixed_rate(
    url: str, rate: float, duration: float, log_path: Path, clients: int = 10
) -> LoadResult:
    """``h2load --h1 -c <clients> -D <duration> --rps <rate/clients>`` with a per-request log.

    h2load's ``--rps`` is per client. Latency percentiles come from ``--log-file`` (one line per
    request: start time, status, microseconds until the end of the response), not from h2load's
    summary, which has no percentiles. A client whose previous response is late sends its next
    request late (HTTP/1.1 without pipelining), so ``achieved_rps`` below ``target_rps`` means
    the contender did not keep up.
    """
    per_client = max(1, round(rate / clients))
    argv = [
        H2LOAD,
        "--h1",
        "-c",
        str(clients),
        "-D",
        f"{round(duration * 1000)}ms",
        "--rps",
        str(per_client),
        "--log-file",
        str(log_path),
        url,
    ]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load did not finish: {' '.join(argv)}") from exc
    if out.returncode != 0 or not log_path.exists():
        raise LoadError(f"h2load exited {out.returncode}: {out.stderr.strip()[-500:]}")
    durations_us, non2xx, failed = read_h2load_log(log_path)
    summary = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out.stdout)
    if summary:
        failed = max(failed, sum(int(x) for x in summary.groups()))
    target = per_client * clients
    achieved = len(durations_us) / duration
    if not durations_us:
        return LoadResult(
            0, duration, 0.0, None, None, None, failed, non2xx, {"target_rps": target}
        )
    return LoadResult(
        requests=len(durations_us),
        seconds=duration,
        rps=achieved,
        p50_ms=percentile(durations_us, 50) / 1e3,
        p99_ms=percentile(durations_us, 99) / 1e3,
        max_ms=durations_us[-1] / 1e3,
        errors=failed,
        non_2xx=non2xx,
        extra={"target_rps": target, "achieved_rps": round(achieved, 1)},
    )


def read_h2load_log(log_path: Path) -> tuple[list[int], int, int]:
    """h2load's ``--log-file`` (start time, status, microseconds until the response ended, a
    line per request): the durations of the answered requests, ascending; how many of those
    were not 2xx; how many failed (status -1)."""
    durations_us: list[int] = []
    non2xx = failed = 0
    for line in log_path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status = int(parts[1])
        if status == -1:
            failed += 1
            continue
        if not 200 <= status < 300:
            non2xx += 1
        durations_us.append(int(parts[2]))
    durations_us.sort()
    return durations_us, non2xx, failed


# --- h2load, HTTP/2 throughput -------------------------------------------------------------


def run_h2load(
    url: str,
    duration: float,
    log_path: Path,
    *,
    clients: int = 10,
    streams: int = 10,
    data: Path | None = None,
    headers: Sequence[str] = (),
) -> LoadResult:
    """``h2load -t1 -c<clients> -m<streams> -D <duration>`` over h2c (prior knowledge: h2load's
    default for an http:// URL); ``-d data`` makes it a POST of that file's bytes.

    Requests per second and the counts come from h2load's summary (its req/s counts every
    completed request, whatever the status; non-2xx are reported apart); p50, p99 and max from
    the per-request ``--log-file``, since the summary has min/max/mean/sd but no percentiles.
    The latency of a request is from its HEADERS being sent until its stream ended, so it
    includes queueing behind the other streams of the connection (``-m`` at once).
    """
    argv = [
        H2LOAD,
        "-t1",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-D",
        f"{round(duration * 1000)}ms",
        "--log-file",
        str(log_path),
    ]
    if data is not None:
        argv += ["-d", str(data)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    log_path.unlink(missing_ok=True)
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load did not finish: {' '.join(argv)}") from exc
    if out.returncode != 0 or not log_path.exists():
        raise LoadError(
            f"h2load exited {out.returncode}: {(out.stderr or out.stdout).strip()[-500:]}"
        )
    return parse_h2load(out.stdout, *read_h2load_log(log_path))


def parse_h2load(
    text: str, durations_us: Sequence[int], non2xx_logged: int, failed_logged: int
) -> LoadResult:
    """h2load's summary plus its request log (``read_h2load_log``) as a LoadResult."""
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s", text)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if finished is None or counts is None:
        raise LoadError(f"cannot parse h2load output:\n{text[-2000:]}")
    succeeded = int(counts.group(4))
    failed, errored, timeouts = (int(counts.group(i)) for i in (5, 6, 7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else non2xx_logged
    extra: dict[str, float | int | str] = {
        "failed": failed,
        "errored": errored,
        "timeout": timeouts,
        "logged": len(durations_us) + failed_logged,
    }
    has = bool(durations_us)
    return LoadResult(
        requests=succeeded,
        seconds=_ms(finished.group(1), finished.group(2)) / 1e3,
        rps=float(finished.group(3)),
        p50_ms=percentile(durations_us, 50) / 1e3 if has else None,
        p99_ms=percentile(durations_us, 99) / 1e3 if has else None,
        max_ms=durations_us[-1] / 1e3 if has else None,
        errors=max(failed, failed_logged),
        non_2xx=non2xx,
        extra=extra,
    )


# --- idle keep-alive connections -----------------------------------------------------------


@dataclass
class IdleResult:
    wanted: int
    opened: int  # connections that completed one GET with 200
    alive: int  # of those, still open when memory was measured
    failed: int
    open_seconds: float
    first_error: str = ""
    stopped: str = ""  # why opening stopped before ``wanted`` (deadline, too many failures)


def _response_complete(buf: bytes) -> bool:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = buf[:head_end].lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if m:
        return len(buf) - head_end - 4 >= int(m.group(1))
    if b"transfer-encoding: chunked" in head:
        return buf.endswith(b"0\r\n\r\n")
    return True


async def _open_one(port: int, request: bytes) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        await trio.lowlevel.wait_writable(s)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
        s.send(request)
        buf = b""
        while not _response_complete(buf):
            await trio.lowlevel.wait_readable(s)
            data = s.recv(65536)
            if not data:
                raise OSError("closed before a complete response")
            buf += data
        if not buf.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            status_line = buf.split(b"\r\n", 1)[0]
            raise OSError(f"status line {status_line!r}")
    except BaseException:
        s.close()
        raise
    return s


def _is_alive(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def hold_idle_connections(
    port: int,
    count: int,
    measure: Callable[[], None],
    *,
    path: str = "/small",
    concurrency: int = 100,
    per_connection_timeout: float = 10.0,
    deadline: float = 60.0,
    give_up_failures: int | None = None,
) -> IdleResult:
    """Open ``count`` keep-alive connections, each after one ``GET path`` answered 200; then call
    ``measure()`` while all of them sit idle; then close them.

    The one request makes each connection a used keep-alive connection, holding whatever a
    proxy keeps for one (parser state, buffers, and for some proxies an upstream connection).
    Opening stops at ``deadline`` seconds, or once ``give_up_failures`` connections failed
    (default: a tenth of ``count``); the connections open by then are measured.
    """
    if give_up_failures is None:
        give_up_failures = max(100, count // 10)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    opened: list[socket.socket] = []
    failures: list[str] = []
    started = time.perf_counter()

    gave_up = False

    async def worker(limiter: trio.CapacityLimiter, scope: trio.CancelScope) -> None:
        nonlocal gave_up
        async with limiter:
            try:
                with trio.fail_after(per_connection_timeout):
                    opened.append(await _open_one(port, request))
            except trio.TooSlowError:
                failures.append(f"no complete response within {per_connection_timeout:g} s")
            except OSError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            if len(failures) >= give_up_failures:
                gave_up = True
                scope.cancel()

    async def open_all() -> None:
        nonlocal gave_up
        limiter = trio.CapacityLimiter(concurrency)
        with trio.move_on_after(deadline) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(worker, limiter, scope)
        if scope.cancelled_caught and not gave_up:
            failures.append(f"deadline: {deadline:g} s passed while opening")

    try:
        trio.run(open_all)
        open_seconds = time.perf_counter() - started
        measure()
        alive = sum(1 for s in opened if _is_alive(s))
    finally:
        for s in opened:
            s.close()
    return IdleResult(
        wanted=count,
        opened=len(opened),
        alive=alive,
        failed=count - len(opened),
        open_seconds=open_seconds,
        first_error=failures[0] if failures else "",
        stopped=(
            f"gave up after {len(failures)} failures"
            if gave_up
            else failures[-1]
            if failures and failures[-1].startswith("deadline")
            else ""
        ),
    )


# --- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
