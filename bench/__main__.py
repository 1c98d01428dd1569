"""``python -m bench http1|http2|rpc|tls [options]``: trio-mesh against direct, nginx and others.

``http1``: HTTP/1.1 proxying, against direct, nginx, proxy.py, mitmproxy. ``http2``: h2c and
gRPC unary proxying, against direct and nginx. ``rpc``: SOFA bolt and Dubbo proxying, against
direct. ``tls``: TLS termination (handshakes, small GETs), against nginx and trio-mesh's own
cleartext. ``resilience``: one of two upstreams killed under load (``bench/resilience.py``,
its own options). ``upgrade``: requests lost across hot upgrades (``bench/upgrade.py``).

Starts everything on 127.0.0.1 (the upstreams and each contender, in their own process
groups), runs the scenarios, stops everything (also on Ctrl-C, SIGTERM or an error), prints the
tables, and writes ``results.json`` and ``plot.png`` under ``bench/results/<timestamp>/``.

Exit code: 0 when the harness ran (whatever the numbers), 1 when it broke (a contender never
became ready or failed its check, a load tool failed, the ``--deadline`` passed), 2 for bad
arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import load, report, rpc, tls
from .contenders import (
    CONTENDERS,
    H2_CONTENDERS,
    REPO_ROOT,
    RPC_CONTENDERS,
    TLS_CONTENDERS,
    Contender,
    Workdir,
    start_h2_upstream,
    start_rpc_upstream,
    start_upstream,
)
from .procs import NotReady, Processes, free_port, raise_nofile_limit
from .scenarios import H2_SCENARIOS, SCENARIOS, Bench, Scenario, Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# --smoke: trio-mesh and the protocol's floor relay (each a few seconds).
H1_SMOKE_CONTENDERS = [
    "trio-mesh-1",
    "trio-mesh-metrics",
    "trio-mesh-filters",
    "trio-mesh-trace100",
    "trio-mesh-trace0",
    "trio-floor-h1",
]
H2_SMOKE_CONTENDERS = ["trio-mesh-h2h2", "trio-floor-h2"]
H2_SMOKE_DEADLINE = 120  # seconds: the http2 --smoke run is stopped (exit 1) after this
RPC_SMOKE_CONTENDERS = ["trio-mesh", "trio-floor-bolt"]
RPC_SMOKE_DEADLINE = 60  # seconds: the rpc --smoke run is stopped (exit 1) after this
TLS_SMOKE_CONTENDERS = list(TLS_CONTENDERS)  # nginx-tls, trio-mesh-tls, trio-mesh
TLS_SMOKE_DEADLINE = 90  # seconds: the tls --smoke run is stopped (exit 1) after this


class DeadlinePassed(BaseException):
    """``--deadline`` passed: unwinds like Ctrl-C (everything stopped), reported as a failure."""


def tables(protocol: str) -> tuple[dict[str, Contender], dict[str, Scenario]]:
    if protocol == "http2":
        return H2_CONTENDERS, H2_SCENARIOS
    if protocol == "rpc":
        return RPC_CONTENDERS, rpc.RPC_SCENARIOS
    if protocol == "tls":
        return TLS_CONTENDERS, tls.TLS_SCENARIOS
    return CONTENDERS, SCENARIOS


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="protocol", required=True)
    h1 = sub.add_parser("http1", help="HTTP/1.1 proxying")
    h1.add_argument("--duration", type=int, default=4, help="whole seconds per load run (4)")
    h1.add_argument("--rounds", type=int, default=3, help="rounds per load scenario (3)")
    h1.add_argument(
        "--contenders",
        type=_csv,
        default=list(CONTENDERS),
        help=f"comma-separated, from {','.join(CONTENDERS)} (all)",
    )
    h1.add_argument(
        "--scenarios",
        type=_csv,
        default=list(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (all)",
    )
    h1.add_argument(
        "--smoke",
        action="store_true",
        help=f"CI check: {', '.join(H1_SMOKE_CONTENDERS)}, small-get, 2 s, 1 round"
        " (overrides the options above)",
    )
    h1.add_argument("--out", type=Path, help="results directory (bench/results/<timestamp>)")
    h1.add_argument(
        "--idle-connections", type=int, default=10_000, help="connections for idle-10k (10000)"
    )
    h1.add_argument("--startup-runs", type=int, default=5, help="timed starts per contender (5)")
    h1.add_argument(
        "--deadline", type=int, help="stop everything after SECS (exit 1); default: none"
    )
    h2 = sub.add_parser("http2", help="HTTP/2 (h2c) and gRPC unary proxying")
    h2.add_argument("--duration", type=int, default=4, help="whole seconds per load run (4)")
    h2.add_argument("--rounds", type=int, default=3, help="rounds per load scenario (3)")
    h2.add_argument(
        "--contenders",
        type=_csv,
        default=list(H2_CONTENDERS),
        help=f"comma-separated, from {','.join(H2_CONTENDERS)} (all)",
    )
    h2.add_argument(
        "--scenarios",
        type=_csv,
        default=list(H2_SCENARIOS),
        help=f"comma-separated, from {','.join(H2_SCENARIOS)} (all)",
    )
    h2.add_argument(
        "--smoke",
        action="store_true",
        help=f"CI check: {', '.join(H2_SMOKE_CONTENDERS)}, every scenario, 2 s, 1 round, "
        "no warm-up, "
        f"--deadline {H2_SMOKE_DEADLINE} (overrides the options above)",
    )
    h2.add_argument("--out", type=Path, help="results directory (bench/results/<timestamp>)")
    h2.add_argument("--clients", type=int, default=10, help="h2load connections, -c (10)")
    h2.add_argument("--streams", type=int, default=10, help="h2load streams per connection (10)")
    h2.add_argument(
        "--deadline",
        type=int,
        help=f"stop everything after SECS (exit 1); default none, {H2_SMOKE_DEADLINE} with --smoke",
    )
    rp = sub.add_parser("rpc", help="SOFA bolt and Dubbo proxying")
    rp.add_argument("--duration", type=int, default=4, help="whole seconds per load run (4)")
    rp.add_argument("--rounds", type=int, default=3, help="rounds per load scenario (3)")
    rp.add_argument(
        "--contenders",
        type=_csv,
        default=list(RPC_CONTENDERS),
        help=f"comma-separated, from {','.join(RPC_CONTENDERS)} (all)",
    )
    rp.add_argument(
        "--scenarios",
        type=_csv,
        default=list(rpc.RPC_SCENARIOS),
        help=f"comma-separated, from {','.join(rpc.RPC_SCENARIOS)} (all)",
    )
    rp.add_argument(
        "--smoke",
        action="store_true",
        help=f"CI check: {', '.join(RPC_SMOKE_CONTENDERS)}, every scenario, 2 s, 1 round, "
        "no warm-up, "
        f"--deadline {RPC_SMOKE_DEADLINE} (overrides the options above)",
    )
    rp.add_argument("--out", type=Path, help="results directory (bench/results/<timestamp>)")
    rp.add_argument("--clients", type=int, default=10, help="connections, -c (10)")
    rp.add_argument(
        "--streams",
        type=int,
        default=10,
        help="requests in flight per connection, -m (10)",
    )
    rp.add_argument(
        "--deadline",
        type=int,
        help=f"stop everything after SECS (exit 1); default none, {RPC_SMOKE_DEADLINE} with "
        "--smoke",
    )
    tl = sub.add_parser("tls", help="TLS termination: handshakes and small GETs over TLS")
    tl.add_argument("--duration", type=int, default=4, help="whole seconds per load run (4)")
    tl.add_argument("--rounds", type=int, default=3, help="rounds per load scenario (3)")
    tl.add_argument(
        "--contenders",
        type=_csv,
        default=list(TLS_CONTENDERS),
        help=f"comma-separated, from {','.join(TLS_CONTENDERS)} (all)",
    )
    tl.add_argument(
        "--scenarios",
        type=_csv,
        default=list(tls.TLS_SCENARIOS),
        help=f"comma-separated, from {','.join(tls.TLS_SCENARIOS)} (all)",
    )
    tl.add_argument(
        "--smoke",
        action="store_true",
        help=f"CI check: {', '.join(TLS_SMOKE_CONTENDERS)}, every scenario, 1 s, 1 round, "
        f"no warm-up, --deadline {TLS_SMOKE_DEADLINE} (overrides the options above)",
    )
    tl.add_argument("--out", type=Path, help="results directory (bench/results/<timestamp>)")
    tl.add_argument(
        "--deadline",
        type=int,
        help=f"stop everything after SECS (exit 1); default none, {TLS_SMOKE_DEADLINE} with "
        "--smoke",
    )
    args = parser.parse_args(argv)
    contenders, scenarios = tables(args.protocol)
    if args.smoke and args.protocol == "http1":
        args.contenders, args.scenarios = list(H1_SMOKE_CONTENDERS), ["small-get"]
        args.duration, args.rounds = 2, 1
    elif args.smoke and args.protocol == "rpc":
        args.contenders, args.scenarios = list(RPC_SMOKE_CONTENDERS), list(rpc.RPC_SCENARIOS)
        args.duration, args.rounds = 2, 1
        if args.deadline is None:
            args.deadline = RPC_SMOKE_DEADLINE
    elif args.smoke and args.protocol == "tls":
        args.contenders, args.scenarios = list(TLS_SMOKE_CONTENDERS), list(tls.TLS_SCENARIOS)
        args.duration, args.rounds = 1, 1
        if args.deadline is None:
            args.deadline = TLS_SMOKE_DEADLINE
    elif args.smoke:
        args.contenders, args.scenarios = list(H2_SMOKE_CONTENDERS), list(H2_SCENARIOS)
        args.duration, args.rounds = 2, 1
        if args.deadline is None:
            args.deadline = H2_SMOKE_DEADLINE
    for name in args.contenders:
        if name not in contenders:
            parser.error(f"unknown contender {name!r} (known: {', '.join(contenders)})")
    for name in args.scenarios:
        if name not in scenarios:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(scenarios)})")
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration must be >= 1 and --rounds >= 1")
    if args.protocol in ("http2", "rpc") and (args.clients < 1 or args.streams < 1):
        parser.error("--clients and --streams must be >= 1")
    if args.deadline is not None and args.deadline < 1:
        parser.error("--deadline must be >= 1")
    return args


def _tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable: {exc}"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else ""

    return {
        "wrk": first_line([load.WRK, "-v"]),
        "h2load": first_line([load.H2LOAD, "--version"]),
        "nginx": first_line(["nginx", "-v"]),
        "openssl": first_line(["openssl", "version"]),
        "python": sys.version.split()[0],
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return ""


def _git_dirty(path: str = "trio_mesh") -> bool | None:
    """Whether ``path`` has uncommitted changes (the code measured is not the commit's)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", path],
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM like Ctrl-C: unwinds through every finally (children stopped), partial results.
    raise KeyboardInterrupt


def _deadline(signum: int, frame: Any) -> None:
    raise DeadlinePassed


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["resilience"]:  # its own options (bench/resilience.py)
        from . import resilience

        return resilience.main(given[1:])
    if given[:1] == ["upgrade"]:  # its own options (bench/upgrade.py)
        from . import upgrade

        return upgrade.main(given[1:])
    args = parse_args(argv)
    contender_table, scenario_table = tables(args.protocol)
    tools = {
        "http1": (load.WRK, load.H2LOAD),
        "http2": (load.H2LOAD,),
        "tls": (load.WRK, "openssl"),
    }.get(args.protocol, ())
    for tool in tools:
        if not shutil.which(tool):
            print(
                f"bench: {tool} not found (apt-get install wrk nghttp2-client openssl)",
                file=sys.stderr,
            )
            return 1
    signal.signal(signal.SIGTERM, _interrupt)
    # Also when started in the background by a shell, which would have SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.deadline:
        signal.signal(signal.SIGALRM, _deadline)
        signal.alarm(args.deadline)
    nofile = raise_nofile_limit()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out or RESULTS_DIR / stamp
    out_dir.mkdir(parents=True, exist_ok=True)

    contenders, unavailable = [], {}
    for name in args.contenders:
        why = contender_table[name].unavailable()
        if why:
            unavailable[name] = why
            print(f"bench: {name} unavailable: {why}", file=sys.stderr)
        else:
            contenders.append(contender_table[name])
    settings = Settings(
        duration=args.duration,
        rounds=args.rounds,
        warmup=0.0 if args.smoke else 1.0,
        idle_connections=getattr(args, "idle_connections", 10_000),
        startup_runs=getattr(args, "startup_runs", 5),
        h2_clients=getattr(args, "clients", 10),
        h2_streams=getattr(args, "streams", 10),
    )
    started = time.monotonic()
    load_start = os.getloadavg()
    # Each contender starts from the working tree when its scenario begins: note the commit
    # at the start and at the end (others may commit to a shared tree during the run).
    commit_start, dirty_start = _git_commit(), _git_dirty()
    tmp = Path(tempfile.mkdtemp(prefix="trio-mesh-bench-"))
    tmp.chmod(0o755)  # nginx workers (user nobody when run as root) read the 64 KiB file
    procs = Processes(log_dir=tmp)
    work = Workdir(tmp, free_port(), nofile)
    if args.protocol == "http2":
        work.h2_upstream_port = free_port()
    if args.protocol == "rpc":
        rpc_protocols = [
            p for p in rpc.PROTOCOLS if any(rpc.RPC_LOADS[s].protocol == p for s in args.scenarios)
        ]
        if "dubbo" in rpc_protocols:
            work.dubbo_upstream_port = free_port()
        bench: Bench = rpc.RpcBench(procs, work, contenders, settings)
    elif args.protocol == "tls":
        bench = tls.TlsBench(procs, work, contenders, settings)
    else:
        bench = Bench(procs, work, contenders, settings)
    interrupted = False
    try:
        from . import nginx

        if args.protocol == "rpc":
            for p in rpc_protocols:  # a shared echo server per protocol the scenarios use
                start_rpc_upstream(procs, work, p)
        else:
            nginx.write_body_files(tmp)
            start_upstream(procs, work)
        if args.protocol == "tls":
            tls.prepare(work)
        if args.protocol == "http2":
            start_h2_upstream(procs, work)
        for name in args.scenarios:
            bench.run(scenario_table[name])
    except NotReady as exc:
        bench.failures.append(f"upstream: {exc}")
        print(f"bench: the upstream never became ready: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted, stopping everything", file=sys.stderr)
    except DeadlinePassed:
        bench.failures.append(f"deadline: {args.deadline} s passed, stopped")
        print(f"bench: --deadline {args.deadline} s passed, stopping everything", file=sys.stderr)
    finally:
        signal.alarm(0)
        procs.close()
    elapsed = time.monotonic() - started

    if args.protocol == "rpc":
        rpc.add_ratios(bench.results)
    elif args.protocol == "tls":
        tls.add_ratios(bench.results)
    else:
        report.add_ratios(bench.results)
    document = {
        "meta": {
            "timestamp": stamp,
            "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": commit_start,
            "git_commit_end": _git_commit(),
            "trio_mesh_uncommitted_changes": dirty_start,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "nofile_limit": nofile,
            "tools": _tool_versions(),
            "settings": vars(settings),
            "elapsed_s": round(elapsed, 1),
            # Others' processes compete for the same cores: the 1/5/15-minute load averages.
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "interrupted": interrupted,
        },
        "contenders": {
            name: {
                "description": contender_table[name].description,
                "available": name not in unavailable,
                **({"unavailable": unavailable[name]} if name in unavailable else {}),
            }
            for name in args.contenders
        },
        "scenarios": {name: scenario_table[name].description for name in args.scenarios},
        "notes": bench.notes,
        "failures": bench.failures,
        "results": bench.results,
    }
    report.write_json(out_dir / "results.json", document)
    if args.protocol == "rpc":
        table = rpc.format_table(bench.results, args.scenarios, args.contenders, unavailable)
    elif args.protocol == "tls":
        table = tls.format_table(
            bench.results, args.scenarios, args.contenders, unavailable, bench.notes
        )
    else:
        table = report.format_tables(
            bench.results, args.scenarios, args.contenders, unavailable, bench.notes
        )
    (out_dir / "table.txt").write_text(table + "\n")
    try:
        if args.protocol == "http1":
            report.write_plot(out_dir / "plot.png", bench.results, args.scenarios, args.contenders)
        elif args.protocol == "rpc":
            report.write_load_plot(
                out_dir / "plot.png",
                bench.results,
                args.scenarios,
                args.contenders,
                "trio-mesh SOFA bolt and Dubbo benchmark (bench.bolt_load -c10 -m10, 127.0.0.1, "
                "one run, contenders alternating)",
            )
        elif args.protocol == "tls":
            report.write_load_plot(
                out_dir / "plot.png",
                bench.results,
                args.scenarios,
                args.contenders,
                "trio-mesh TLS termination benchmark (wrk -t1 -c50, TLS 1.3 TLS_AES_128_GCM_SHA256,"
                " ECDSA P-256, 127.0.0.1, one run, contenders alternating)",
            )
        else:
            report.write_load_plot(
                out_dir / "plot.png",
                bench.results,
                args.scenarios,
                args.contenders,
                "trio-mesh HTTP/2 and gRPC benchmark (h2load over h2c, 127.0.0.1, one run, "
                "contenders alternating)",
            )
    except ImportError:
        print("bench: matplotlib missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
    except Exception as exc:  # a plot problem must not lose the measurements
        bench.failures.append(f"plot: {type(exc).__name__}: {exc}")
    print(table)
    print(f"\nresults: {out_dir}  ({elapsed:.0f} s; generated files and logs were in {tmp})")
    if bench.failures:
        print("harness failures:", *bench.failures, sep="\n  ", file=sys.stderr)
    if interrupted:
        return 130
    if bench.failures:
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
