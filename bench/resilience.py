"""``python -m bench.resilience [--smoke]``: one of two nginx upstreams killed under load.

Two nginx upstreams (``bench/nginx.py``'s, one worker each) behind one trio-mesh process (an
admin port on loopback), wrk with 50 connections for 20 s (``--smoke``: 4 s) on ``/small``;
at 25% of the run one nginx is killed with SIGKILL (its whole process group). Three modes,
each with fresh processes:

- ``a``: no health checks, no retries;
- ``b``: an HTTP health check (1 s interval, ``unhealthy_threshold`` 1, ``healthy_threshold``
  1) and outlier detection (``consecutive_gateway_failure`` 1 with enforcing 100, the
  ejection 1 s, at most 50% of the hosts);
- ``c``: ``b`` plus route retries on ``connect-failure`` (two; ``previous_hosts`` is the
  default host choice of a retry).

Printed per mode: failed requests (wrk's socket errors plus non-2xx answers) of the total,
and the failures after the killed host was marked down: a thread polls the admin API every
50 ms (``/stats`` for the listener's 5xx count, then ``/clusters`` for the host's
``health_flags``); the 5xx count read just before the poll that first saw the host down is the
"before" (so a failure in between counts as after: the figure errs high). Then (``b``, ``c``)
the killed nginx is started again on its port while one client keeps sending requests, and
the time from its start to the proxy's first request to it (the host's ``rq_total``
in ``/clusters``) is reported.

Exit code 0 when the harness ran, whatever the numbers; 1 when it broke.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import load, nginx, procs

KILL_AT = 0.25  # of the run
POLL = 0.05  # seconds between admin polls
RESTART_DEADLINE = 15.0  # seconds for the restarted host to take traffic again
CONNECTIONS = 50

MODES: dict[str, str] = {
    "a": "no health checks, no retries",
    "b": "health checks (1 s) + outlier detection",
    "c": "(b) + retries on connect-failure (previous_hosts)",
}


@dataclass
class ModeResult:
    mode: str
    description: str
    total: int = 0
    failed: int = 0
    rps: float = 0.0
    #: Seconds from the kill until the poller saw the host down (None: never).
    marked_down_after: float | None = None
    #: Failures counted by the proxy after that (None: never marked down).
    failed_after_down: int | None = None
    #: The proxy's own 5xx count over the run (a check of the poller's reading).
    proxy_5xx: int | None = None
    #: Seconds from the restarted nginx's start until the proxy sent it a request.
    back_after: float | None = None
    #: Failed requests of the client that drove traffic during the restart.
    restart_failed: int = 0
    notes: list[str] = field(default_factory=list)


def proxy_conf(port: int, admin: int, upstreams: list[int], mode: str) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster_name": "up", "timeout": "5s"}
    if mode == "c":
        route["retry_policy"] = {"retry_on": "connect-failure", "num_retries": 2}
    cluster: dict[str, Any] = {
        "name": "up",
        "lb_type": "LB_ROUNDROBIN",
        "connect_timeout": "1s",
        "hosts": [{"address": f"127.0.0.1:{p}"} for p in upstreams],
    }
    if mode in ("b", "c"):
        cluster["health_check"] = {
            "protocol": "http",
            "timeout": "500ms",
            "interval": "1s",
            "interval_jitter": "100ms",
            "healthy_threshold": 1,
            "unhealthy_threshold": 1,
            "check_config": {"path": "/small"},
        }
        cluster["outlier_detection"] = {
            "consecutive_gateway_failure": 1,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "500ms",
            "base_ejection_time": "1s",
            "max_ejection_time": "2s",
            "max_ejection_percent": 50,
        }
    return {
        "servers": [
            {
                "default_log_level": "WARN",
                "listeners": [
                    {
                        "name": "ingress",
                        "address": f"127.0.0.1:{port}",
                        "filter_chains": [
                            {"filters": [{"type": "proxy", "config": {"router_config_name": "r"}}]}
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "all",
                                "domains": ["*"],
                                "routers": [{"match": {"prefix": "/"}, "route": route}],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": [cluster]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }


class Admin:
    """One keep-alive connection to the admin API (reopened after an error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> str | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(procs.LOOPBACK, self.port, timeout=2)
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            body = response.read().decode()
            return body if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def five_xx(self) -> int | None:
        text = self.get("/stats?filter=downstream_rq_5xx")
        if text is None:
            return None
        return sum(
            int(line.rsplit(":", 1)[1])
            for line in text.splitlines()
            if line.startswith("http.ingress.downstream_rq_5xx:")
        )

    def host(self, port: int) -> dict[str, str] | None:
        """The ``/clusters`` lines of the host on ``port``: {stat or field: value}."""
        text = self.get("/clusters")
        if text is None:
            return None
        prefix = f"up::127.0.0.1:{port}::"
        return {
            key: value
            for line in text.splitlines()
            if line.startswith(prefix)
            for key, _, value in [line[len(prefix) :].partition("::")]
        }


class Watcher(threading.Thread):
    """Polls the admin API: when the host on ``port`` first shows down after ``armed``."""

    def __init__(self, admin_port: int, port: int) -> None:
        super().__init__(daemon=True)
        self.admin = Admin(admin_port)
        self.port = port
        self.stop = threading.Event()
        self.down_at: float | None = None
        self.five_xx_before_down: int | None = None
        self.flags = ""

    def run(self) -> None:
        try:
            while not self.stop.wait(POLL):
                five = self.admin.five_xx()
                host = self.admin.host(self.port)
                if five is None or host is None:
                    continue
                if host.get("health_flags", "healthy") != "healthy":
                    self.down_at = time.perf_counter()
                    self.five_xx_before_down = five
                    self.flags = host["health_flags"]
                    return
        finally:
            self.admin.close()


class Driver(threading.Thread):
    """One client sending GET /small through the proxy until stopped; counts failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(procs.LOOPBACK, self.port, timeout=5)
                conn.request("GET", "/small")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.005)  # light traffic: about 200 requests a second
        if conn is not None:
            conn.close()


def kill_group(child: procs.Child, children: procs.Processes) -> None:
    """SIGKILL the nginx master and worker at once (a crash, not a shutdown)."""
    if child in children.children:
        children.children.remove(child)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.popen.wait(5)


def start_nginx(
    children: procs.Processes, work: Path, name: str, port: int, nofile: int
) -> procs.Child:
    conf = nginx.write_upstream_conf(work, name, port, nofile, 4096)
    child = children.start(name, nginx.nginx_argv(conf, work))
    procs.wait_ready(child, port, timeout=15)
    return child


def run_mode(mode: str, seconds: int, work: Path, nofile: int) -> ModeResult:
    result = ModeResult(mode, MODES[mode])
    children = procs.Processes(work)
    try:
        ports = [procs.free_port(), procs.free_port()]
        ups = [start_nginx(children, work, f"up{i}-{mode}", p, nofile) for i, p in enumerate(ports)]
        port, admin = procs.free_port(), procs.free_port()
        conf = work / f"trio-mesh-{mode}.json"
        conf.write_text(json.dumps(proxy_conf(port, admin, ports, mode)))
        argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(conf), "--log-level", "WARN"]
        proxy = children.start(f"trio-mesh-{mode}", argv)
        procs.wait_ready(proxy, port, timeout=30)
        victim, victim_port = ups[0], ports[0]
        watcher = Watcher(admin, victim_port) if mode != "a" else None
        outcome: dict[str, Any] = {}

        def load_run() -> None:
            try:
                outcome["load"] = load.run_wrk(
                    f"http://127.0.0.1:{port}/small", seconds, CONNECTIONS
                )
            except load.LoadError as exc:
                outcome["error"] = exc

        wrk = threading.Thread(target=load_run, daemon=True)
        wrk.start()
        time.sleep(seconds * KILL_AT)
        if watcher is not None:
            watcher.start()
        killed_at = time.perf_counter()
        kill_group(victim, children)
        wrk.join(seconds + 60)
        if watcher is not None:
            watcher.stop.set()
            watcher.join(5)
        if "error" in outcome:
            raise outcome["error"]
        lr: load.LoadResult = outcome["load"]
        result.total, result.failed, result.rps = lr.requests, lr.errors + lr.non_2xx, lr.rps
        final = Admin(admin)
        result.proxy_5xx = five = final.five_xx()
        final.close()
        if watcher is not None and watcher.down_at is not None:
            result.marked_down_after = round(watcher.down_at - killed_at, 3)
            result.notes.append(f"marked down by {watcher.flags}")
            if five is not None and watcher.five_xx_before_down is not None:
                result.failed_after_down = five - watcher.five_xx_before_down
        if mode != "a":
            restart(result, children, work, mode, victim_port, port, admin, nofile)
    finally:
        children.close()
    return result


def restart(
    result: ModeResult,
    children: procs.Processes,
    work: Path,
    mode: str,
    victim_port: int,
    port: int,
    admin_port: int,
    nofile: int,
) -> None:
    """Start the killed nginx again under light traffic; time until the proxy uses it."""
    admin = Admin(admin_port)
    driver = Driver(port)
    try:
        before = admin.host(victim_port) or {}
        served_before = int(before.get("rq_total", "0"))
        driver.start()
        child = start_nginx(children, work, f"up0-{mode}-again", victim_port, nofile)
        accepting = child.started_at  # nginx accepts within milliseconds: the figure errs high
        deadline = time.perf_counter() + RESTART_DEADLINE
        while time.perf_counter() < deadline:
            host = admin.host(victim_port)
            if host is not None and int(host.get("rq_total", "0")) > served_before:
                result.back_after = round(time.perf_counter() - accepting, 3)
                break
            time.sleep(POLL)
        else:
            result.notes.append(f"the restarted host took no request in {RESTART_DEADLINE:g} s")
    finally:
        driver.stop.set()
        driver.join(10)
        admin.close()
    result.restart_failed = driver.failed


def table(results: list[ModeResult], seconds: int) -> str:
    lines = [
        f"one of two nginx killed (SIGKILL) at {KILL_AT:.0%} of a {seconds} s wrk run,"
        f" {CONNECTIONS} connections, one trio-mesh process",
        "down after: from the kill until /clusters showed the host down; failed after down:"
        " the proxy's 5xx from then on; back after: from the restarted nginx's start until"
        " the proxy sent it a request",
        "",
        f"{'mode':<54} {'failed/total':>16} {'failed %':>9} {'rps':>7}"
        f" {'proxy 5xx':>9} {'down after':>10} {'failed after down':>17} {'back after':>10}",
    ]
    for r in results:
        pct = 100 * r.failed / r.total if r.total else 0.0
        down = "-" if r.marked_down_after is None else f"{r.marked_down_after:.2f} s"
        after = "-" if r.failed_after_down is None else str(r.failed_after_down)
        back = "-" if r.back_after is None else f"{r.back_after:.2f} s"
        lines.append(
            f"({r.mode}) {r.description:<50} {f'{r.failed}/{r.total}':>16} {pct:>8.3f}%"
            f" {r.rps:>7.0f} {r.proxy_5xx if r.proxy_5xx is not None else '-':>9} {down:>10}"
            f" {after:>17} {back:>10}"
        )
    for r in results:
        if r.restart_failed:
            lines.append(f"({r.mode}) requests failed while the host came back: {r.restart_failed}")
        for note in r.notes:
            lines.append(f"({r.mode}) {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.resilience", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds of load (20)")
    parser.add_argument("--modes", default="a,b,c", help="comma-separated, from a,b,c (all)")
    parser.add_argument("--smoke", action="store_true", help="4 s runs")
    parser.add_argument("--out", type=Path, default=None, help="results.json and table.txt here")
    args = parser.parse_args(argv)
    seconds = 4 if args.smoke else args.duration
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {','.join(unknown)}")
    nofile = procs.raise_nofile_limit()
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
        work = Path(tmp)
        try:
            for mode in modes:
                print(f"mode {mode}: {MODES[mode]} ...", file=sys.stderr, flush=True)
                results.append(run_mode(mode, seconds, work, nofile))
        except (procs.NotReady, load.LoadError) as exc:
            print(f"resilience: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    text = table(results, seconds)
    print(text)
    out = args.out or Path("bench/results") / time.strftime("%Y%m%d-%H%M%S-resilience")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.txt").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
