"""``python -m bench upgrade [--smoke]``: requests lost while trio-mesh is hot-upgraded.

One nginx upstream (``bench/nginx.py``'s, one worker), one ``trio-mesh run`` in front of it
(HTTP/1 and h2c on one listener, ``Auto``), its upgrade socket in the work directory. Two
phases, each with fresh processes: wrk (50 connections, 20 s; ``--smoke``: 4 s) on ``/small``,
then h2load (10 clients, 10 streams each, runs of 2000 requests back to back for 20 s) on
``/small``; during each, the proxy is
upgraded 5 times (``--smoke``: 2), evenly spaced: a new ``trio-mesh run`` on the same
configuration takes the sockets, the old one drains and exits.

Printed per phase: total requests, failed (wrk: its socket errors; h2load: failed, with how
many of them it never started, and errored), non-2xx; the upgrades done and each old process's exit
code. h2load (nghttp2 1.52) does not open a new connection after a GOAWAY: the requests a
client still planned when its connection received one are counted as failed although they
were never started (``started`` is below ``total``), so its line gives both. h2load's
``started`` counts requests handed to its HTTP/2 library: one submitted just as a GOAWAY
arrives is started, never sent, and failed.

Exit code 0 when the harness ran, whatever the numbers; 1 when it broke.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import load, nginx, procs

CONNECTIONS = 50
H2_CLIENTS = 10
H2_STREAMS = 10
H2_RUN_REQUESTS = 2000  # per h2load run (``run_h2load_runs``)
READY = re.compile(r"trio-mesh \S+ ready$|all \d+ workers ready$", re.MULTILINE)
READY_TIMEOUT = 30.0


@dataclass
class PhaseResult:
    tool: str
    total: int = 0
    failed: int = 0
    non_2xx: int = 0
    detail: str = ""
    upgrades: int = 0
    exit_codes: list[int | None] = field(default_factory=list)


def proxy_conf(port: int, upstream_port: int) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
    return {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": f"127.0.0.1:{port}",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {
                                            "downstream_protocol": "Auto",
                                            "upstream_protocol": "Http1",
                                            "router_config_name": "r",
                                        },
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [route]}],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "type": "SIMPLE",
                    "lb_type": "LB_ROUNDROBIN",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
    }


def _wait_ready(child: procs.Child) -> None:
    """Until the child's log says ready (a new process: the port accepts already)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise procs.NotReady(f"{child.name} exited {child.exited()}:\n{child.log_tail()}")
        try:
            if READY.search(child.log_path.read_text(errors="replace")):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise procs.NotReady(f"{child.name} not ready in {READY_TIMEOUT:g}s:\n{child.log_tail()}")


def run_phase(
    tool: str, seconds: int, upgrades: int, work: Path, nofile: int, workers: int = 1
) -> PhaseResult:
    result = PhaseResult(tool)
    children = procs.Processes(work)
    try:
        up_port, port = procs.free_port(), procs.free_port()
        conf = nginx.write_upstream_conf(work, f"up-{tool}", up_port, nofile, 4096)
        procs.wait_ready(children.start(f"nginx-{tool}", nginx.nginx_argv(conf, work)), up_port)
        config = work / f"trio-mesh-{tool}.json"
        config.write_text(json.dumps(proxy_conf(port, up_port)))
        argv = [sys.executable, "-m", "trio_mesh.cli", "run", str(config)]
        argv += ["--upgrade-socket", str(work / f"upgrade-{tool}.sock")]
        if workers > 1:
            argv += ["--workers", str(workers)]
        current = children.start(f"trio-mesh-{tool}-0", argv)
        _wait_ready(current)
        outcome: dict[str, Any] = {}
        url = f"http://127.0.0.1:{port}/small"

        def load_run() -> None:
            try:
                if tool == "wrk":
                    outcome["load"] = load.run_wrk(url, seconds, CONNECTIONS)
                else:
                    outcome["h2"] = run_h2load_runs(url, seconds)
            except load.LoadError as exc:
                outcome["error"] = exc

        runner = threading.Thread(target=load_run, daemon=True)
        started = time.monotonic()
        runner.start()
        for i in range(1, upgrades + 1):
            # Evenly spaced inside the run, none in its first or last moments.
            time.sleep(max(0.0, started + seconds * i / (upgrades + 1) - time.monotonic()))
            new = children.start(f"trio-mesh-{tool}-{i}", argv)
            _wait_ready(new)
            try:
                code: int | None = current.popen.wait(READY_TIMEOUT)
            except Exception:
                code = None
            result.exit_codes.append(code)
            result.upgrades += 1
            current = new
        runner.join(seconds + 60)
        if "error" in outcome:
            raise outcome["error"]
        if tool == "wrk":
            lr: load.LoadResult = outcome["load"]
            result.total, result.failed, result.non_2xx = lr.requests, lr.errors, lr.non_2xx
            result.detail = "failed = socket errors (connect, read, write, timeout)"
        else:
            h2: H2Counts = outcome["h2"]
            result.total, result.failed, result.non_2xx = h2.total, h2.failed, h2.non_2xx
            result.detail = (
                f"{h2.runs} h2load runs: {h2.started} started, {h2.succeeded} succeeded,"
                f" {h2.errored} errored, {h2.total - h2.started} never started (h2load does not"
                " reconnect after a GOAWAY: a client's remaining requests count as failed)"
            )
    finally:
        children.close()
    return result


@dataclass
class H2Counts:
    runs: int = 0
    total: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    non_2xx: int = 0


H2LOAD_COUNTS = re.compile(
    r"requests: (\d+) total, (\d+) started, \d+ done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored"
)
H2LOAD_CODES = re.compile(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_h2load_runs(url: str, seconds: float) -> H2Counts:
    """h2load runs back to back for ``seconds``, the counts summed. One long run would not
    do: h2load's clients stop for good at the first GOAWAY (no new connection), so later
    upgrades would meet no HTTP/2 load at all."""
    counts = H2Counts()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        argv = [load.H2LOAD, "-t1", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS)]
        argv += ["-n", str(H2_RUN_REQUESTS), url]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise load.LoadError(f"h2load did not finish: {' '.join(argv)}") from exc
        found, codes = H2LOAD_COUNTS.search(out.stdout), H2LOAD_CODES.search(out.stdout)
        if out.returncode != 0 or found is None or codes is None:
            raise load.LoadError(f"h2load exited {out.returncode}: {out.stdout[-500:]}")
        total, started, succeeded, failed, errored = (int(x) for x in found.groups())
        counts.runs += 1
        counts.total += total
        counts.started += started
        counts.succeeded += succeeded
        counts.failed += failed
        counts.errored += errored
        counts.non_2xx += sum(int(x) for x in codes.groups())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench upgrade", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="4 s runs, 2 upgrades each")
    parser.add_argument("--seconds", type=int, default=None, help="each run (default 20)")
    parser.add_argument("--upgrades", type=int, default=None, help="per run (default 5)")
    parser.add_argument("--workers", type=int, default=1, help="trio-mesh --workers (default 1)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (4 if args.smoke else 20)
    upgrades = args.upgrades or (2 if args.smoke else 5)
    nofile = procs.raise_nofile_limit()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
            for tool in ("wrk", "h2load"):
                results.append(run_phase(tool, seconds, upgrades, Path(tmp), nofile, args.workers))
    except (procs.NotReady, load.LoadError) as exc:
        print(f"bench upgrade: {exc}", file=sys.stderr)
        return 1
    how = f" (--workers {args.workers})" if args.workers > 1 else ""
    print(f"trio-mesh{how} hot-upgraded {upgrades} times during each {seconds} s run")
    for r in results:
        print(
            f"{r.tool:7} total {r.total:8d}  failed {r.failed:6d}  non-2xx {r.non_2xx:6d}"
            f"  upgrades {r.upgrades}  old processes' exit codes {r.exit_codes}"
        )
        if r.detail:
            print(f"        {r.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
