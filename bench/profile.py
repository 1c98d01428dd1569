"""``python -m bench.profile SCENARIO --contender NAME``: where one contender's time goes under
one scenario's load, with cProfile (the contender runs under ``python -m cProfile``) or py-spy
(sampling the running process, native frames off). cProfile charges the thread's CPU time
by default (``--timer wall`` for wall time).

Starts the scenario's upstream and the contender like ``python -m bench`` does, warms it up
for a second, loads it for ``--seconds`` (wrk, h2load or bench.bolt_load as in the bench),
stops it with SIGINT (so cProfile writes its file) and prints the top entries by own time and
by cumulative time; the raw profile stays in ``--out``. Profilers slow the process (cProfile
about 2x), so read shares, not absolute times.

    python -m bench.profile small-get --contender trio-mesh-1 --seconds 10
    python -m bench.profile small-get --contender trio-mesh-1 --tool py-spy
    python -m bench.profile h2-small-get --contender trio-mesh-h2h2
    python -m bench.profile bolt-echo --contender trio-floor-bolt
    python -m bench.profile tls-small-get --contender trio-mesh-tls --tool py-spy [--native]
    python -m bench.profile tls-small-get --contender trio-mesh-tls --tool perf

``--tool perf`` (Linux ``perf record -g``, 999 Hz, on the process) splits the CPU by shared
object: the interpreter (libpython), OpenSSL (libssl, libcrypto), the kernel, llhttp, libc;
then the top symbols. It answers "how much is OpenSSL" where py-spy, which sees Python frames,
charges a C call to the Python line that made it.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import h2, nginx, rpc, tls
from .contenders import (
    CONTENDERS,
    H2_CONTENDERS,
    REPO_ROOT,
    TLS_CONTENDERS,
    Running,
    Workdir,
    rpc_contenders,
    start_h2_upstream,
    start_rpc_upstream,
    start_upstream,
)
from .procs import Processes, free_port, raise_nofile_limit, tree_cpu_seconds, wait_ready
from .scenarios import H2_SCENARIOS, SCENARIOS, Bench, Settings

PY_SPY = str(Path(sys.executable).parent / "py-spy")
SUFFIX = {"cprofile": "prof", "py-spy": "txt", "perf": "perf"}  # the raw profile's file
# ``python -m cProfile`` with a chosen clock: argv is ``-c CODE MODULE ARGS...``.
_CPROFILE = """\
import cProfile, runpy, sys, time
sys.argv = sys.argv[1:]
profile = cProfile.Profile({timer})
try:
    profile.runcall(runpy.run_module, sys.argv[0], run_name="__main__", alter_sys=True)
except KeyboardInterrupt:
    pass
finally:
    profile.dump_stats({out!r})
"""


def _tables(scenario: str) -> tuple[dict, dict, str]:  # type: ignore[type-arg]
    if scenario in SCENARIOS:
        return CONTENDERS, SCENARIOS, "http1"
    if scenario in H2_SCENARIOS:
        return H2_CONTENDERS, H2_SCENARIOS, "http2"
    if scenario in tls.TLS_SCENARIOS:
        return TLS_CONTENDERS, tls.TLS_SCENARIOS, "tls"
    return rpc_contenders(rpc.RPC_LOADS[scenario].protocol), rpc.RPC_SCENARIOS, "rpc"


def cprofile_report(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out).strip_dirs()
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``: shares per function, not line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].rsplit(':', 1)[0]})"


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pyspy_report(path: Path, top: int) -> str:
    """Own and total shares per function from py-spy's collapsed stacks (``--format raw``)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples"]
    for title, counter in (("own", own), ("total (own + callees)", total)):
        lines.append(f"\n{title}:")
        lines += [f"{100 * n / samples:6.1f}%  {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines)


def perf_report(path: Path, top: int) -> str:
    """CPU shares by shared object, then by symbol, from ``perf record`` (own time)."""
    out = []
    for sort in ("dso", "dso,sym"):
        text = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(path),
                "--no-children",
                "--stdio",
                "-g",
                "none",
                "--sort",
                sort,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        lines = [line for line in text.splitlines() if line.strip() and line[0] != "#"]
        out += [f"\nby {sort}:", *lines[:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenario", choices=[*SCENARIOS, *H2_SCENARIOS, *rpc.RPC_SCENARIOS, *tls.TLS_SCENARIOS]
    )
    parser.add_argument("--contender", required=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tool", choices=("cprofile", "py-spy", "perf"), default="cprofile")
    parser.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile's clock: the thread's CPU time (default: on a shared machine a wall"
        " clock charges a syscall for the time the process waited for a core) or wall time",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="py-spy: native frames too (C functions such as OpenSSL's under the Python ones)",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    contenders, scenarios, protocol = _tables(args.scenario)
    contender, scenario = contenders[args.contender], scenarios[args.scenario]
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"{args.contender}-{args.scenario}.{SUFFIX[args.tool]}"
    tmp = Path(tempfile.mkdtemp(prefix="trio-mesh-profile-"))
    tmp.chmod(0o755)
    procs = Processes(log_dir=tmp)
    work = Workdir(tmp, free_port(), raise_nofile_limit())
    settings = Settings(duration=args.seconds, rounds=1)
    try:
        if protocol == "rpc":
            bench: Bench = rpc.RpcBench(procs, work, [contender], settings)
            start_rpc_upstream(procs, work, rpc.RPC_LOADS[args.scenario].protocol)
        elif protocol == "tls":
            bench = tls.TlsBench(procs, work, [contender], settings)
            nginx.write_body_files(tmp)
            start_upstream(procs, work)
            tls.prepare(work)
        else:
            bench = Bench(procs, work, [contender], settings)
            nginx.write_body_files(tmp)
            (tmp / "grpc-request").write_bytes(h2.grpc_frame(h2.GRPC_MESSAGE))
            if protocol == "http2":
                work.h2_upstream_port = free_port()
                start_h2_upstream(procs, work)
            start_upstream(procs, work)
        port = free_port()
        launch = contender.build(work, port, "profile")
        cmd = launch.argv
        if args.tool == "cprofile":
            if cmd[1] != "-m":
                parser.error(f"{args.contender} is not a python -m command: {cmd}")
            timer = "time.thread_time" if args.timer == "cpu" else "time.perf_counter"
            cmd = [cmd[0], "-c", _CPROFILE.format(timer=timer, out=str(raw)), *cmd[2:]]
        child = procs.start(args.contender, cmd, env=launch.env, cwd=REPO_ROOT)
        wait_ready(child, port, timeout=60, status=contender.status)
        running = Running(contender, child, port)
        bench._load(scenario, running, 1, None)  # warm-up, not measured
        spy = None
        if args.tool == "perf":
            perf_argv = ["perf", "record", "-F", "999", "-g", "-o", str(raw), "-p", str(child.pid)]
            spy = subprocess.Popen(
                [*perf_argv, "--", "sleep", str(args.seconds)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        if args.tool == "py-spy":
            spy_argv = [PY_SPY, "record", "--format", "raw", "-o", str(raw), "--pid"]
            spy_argv += [str(child.pid), "-d", str(args.seconds), "-r", "200", "--nonblocking"]
            if args.native:
                spy_argv.append("--native")
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu0, split0 = tree_cpu_seconds(child.pid), _cpu_split(child.pid)
        result = bench._load(scenario, running, args.seconds, None)
        cpu, split = tree_cpu_seconds(child.pid) - cpu0, _cpu_split(child.pid)
        if spy is not None:
            _, err = spy.communicate(timeout=args.seconds + 30)
            if spy.returncode:
                print(f"{args.tool} failed: {err.decode(errors='replace')}", file=sys.stderr)
                return 1
        os.kill(child.pid, signal.SIGINT)  # cProfile writes its file on a normal exit
        child.popen.wait(30)
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    n = result.requests or 1
    user, system = ((split[i] - split0[i]) / n * 1e6 for i in (0, 1))
    print(
        f"{args.contender} {args.scenario} under {args.tool}: {result.rps:,.0f} req/s, "
        f"{result.requests} requests, {cpu / n * 1e6:.0f} us CPU per request (user {user:.0f},"
        f" system {system:.0f}; the profiler's cost included)"
    )
    report = {"cprofile": cprofile_report, "py-spy": pyspy_report, "perf": perf_report}[args.tool]
    print(report(raw, args.top))
    print(f"raw profile: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
