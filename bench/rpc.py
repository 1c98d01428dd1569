"""``python -m bench rpc``: SOFA bolt and Apache Dubbo through trio-mesh against direct.

The same scheme as the HTTP benchmarks (``scenarios.Bench``): every contender started fresh per
scenario and checked with one full echo before its load runs, a 1 s untimed warm-up, rounds in
an order rotated each round, the median over the rounds, CPU and peak RSS of the contender's
process tree. The load generator is ``bench/bolt_load.py`` (its own process, like h2load), the
upstream ``bench/bolt_server.py``, both with ``--protocol bolt|dubbo`` per scenario. The
contenders ``direct`` and ``trio-mesh`` are the same in every scenario, built for its protocol
(``contenders.rpc_contenders``). Ratios are to ``direct`` (there is no nginx for bolt or Dubbo).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import load
from .bolt_load import probe
from .contenders import REPO_ROOT, Running, rpc_contenders
from .report import Results, _fmt, _mib, _ratio, _table
from .scenarios import Bench, Scenario

BASELINE = "direct"


@dataclass(frozen=True)
class RpcLoad:
    protocol: str  # bolt or dubbo: bench.bolt_load/bolt_server --protocol, the contenders' build
    payload: int = 64  # request content bytes


# The content of the check before load: every byte value for bolt; for Dubbo (a string
# argument) ASCII, 2- and 3-byte UTF-8 and a supplementary character (a surrogate pair).
CHECK_CONTENT = {
    "bolt": b"check " + bytes(range(256)),
    "dubbo": ("check " + "".join(map(chr, range(32, 127))) + " é€ 😀").encode(),
}


RPC_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "bolt-echo",
            "rpc",
            "SOFA bolt v1 request (64-byte content) echoed, 10 connections x 10 in flight",
        ),
        Scenario(
            "dubbo-echo",
            "rpc",
            "Dubbo echo(String) call (64-character argument, hessian2) answered with the string,"
            " 10 connections x 10 in flight",
            skip=(("trio-floor-bolt", "a bolt relay only"),),
        ),
    )
}
RPC_LOADS: dict[str, RpcLoad] = {"bolt-echo": RpcLoad("bolt"), "dubbo-echo": RpcLoad("dubbo")}
PROTOCOLS = tuple(dict.fromkeys(spec.protocol for spec in RPC_LOADS.values()))


def run_rpc_load(
    protocol: str, port: int, duration: float, clients: int, inflight: int, payload: int
) -> load.LoadResult:
    """``python -m bench.bolt_load --protocol P`` against 127.0.0.1:port; its JSON as a
    LoadResult."""
    argv = [
        sys.executable,
        "-m",
        "bench.bolt_load",
        "--port",
        str(port),
        "-c",
        str(clients),
        "-m",
        str(inflight),
        "-d",
        str(duration),
        "--payload",
        str(payload),
    ]
    if protocol != "bolt":  # bolt without the flag, as before
        argv += ["--protocol", protocol]
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 30,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        raise load.LoadError(f"{protocol}_load did not finish: {' '.join(argv)}") from exc
    if out.returncode != 0:
        raise load.LoadError(
            f"{protocol}_load exited {out.returncode}: {(out.stderr or out.stdout).strip()[-500:]}"
        )
    try:
        doc = json.loads(out.stdout)
        return load.LoadResult(
            requests=int(doc["requests"]),
            seconds=float(doc["seconds"]),
            rps=float(doc["rps"]),
            p50_ms=doc["p50_ms"],
            p99_ms=doc["p99_ms"],
            max_ms=doc["max_ms"],
            errors=int(doc["errors"]),
            extra=doc.get("extra", {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise load.LoadError(f"cannot parse {protocol}_load output: {out.stdout[-500:]}") from exc


class RpcBench(Bench):
    """``Bench`` with the RPC load generator and the echo check, for the scenario's protocol."""

    def _start_all(self, scenario: Scenario) -> list[Running]:
        # The same contenders by name, built for the scenario's protocol.
        table = rpc_contenders(RPC_LOADS[scenario.name].protocol)
        chosen = self.contenders
        self.contenders = [table[c.name] for c in chosen]
        try:
            return super()._start_all(scenario)
        finally:
            self.contenders = chosen

    def _check(self, scenario: Scenario, r: Running) -> str | None:
        protocol = RPC_LOADS[scenario.name].protocol
        problem = probe(r.port, CHECK_CONTENT[protocol], protocol=protocol)
        return f"echo check failed: {problem}" if problem else None

    def _load(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> load.LoadResult:
        spec = RPC_LOADS[scenario.name]
        s = self.settings
        return run_rpc_load(
            spec.protocol, r.port, seconds, s.h2_clients, s.h2_streams, spec.payload
        )

    def run(self, scenario: Scenario) -> None:
        self.log(f"scenario {scenario.name}: {scenario.description}")
        self.run_load(scenario)


def add_ratios(results: Results) -> None:
    """req/s and p99 of each entry divided by ``direct``'s from the same scenario."""
    for entries in results.values():
        base = entries.get(BASELINE, {})
        for entry in entries.values():
            if "rps" in entry:
                entry["rps_vs_direct"] = _ratio(entry.get("rps"), base.get("rps"))
                entry["p99_vs_direct"] = _ratio(entry.get("p99_ms"), base.get("p99_ms"))


def format_table(
    results: Results,
    scenarios: Sequence[str],
    contenders: Sequence[str],
    unavailable: dict[str, str],
) -> str:
    header = [
        "scenario",
        "contender",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "CPU us/req",
        "peak RSS MiB",
        "req/s /direct",
        "p99 /direct",
        "errors",
    ]
    rows: list[list[str]] = []
    for scenario in scenarios:
        entries = results.get(scenario, {})
        for name in contenders:
            if name in unavailable:
                rows.append([scenario, name, "unavailable: " + unavailable[name]])
                continue
            e = entries.get(name)
            if e is None:
                continue
            if "skipped" in e:
                rows.append([scenario, name, "n/a: " + e["skipped"]])
                continue
            if "rps" not in e:
                rows.append([scenario, name, "error: " + e.get("error", "?").splitlines()[0]])
                continue
            rows.append(
                [
                    scenario,
                    name,
                    _fmt(e.get("rps"), 0),
                    _fmt(e.get("p50_ms")),
                    _fmt(e.get("p99_ms")),
                    _fmt(e.get("max_ms")),
                    _fmt(e.get("cpu_s")),
                    _fmt(e.get("cpu_us_per_req"), 0),
                    _mib(e.get("peak_rss_kib")),
                    _fmt(e.get("rps_vs_direct")),
                    _fmt(e.get("p99_vs_direct")),
                    str(e.get("errors", 0)),
                ]
            )
    return _table(header, rows) if rows else "(no results)"
