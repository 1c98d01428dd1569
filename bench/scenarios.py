"""The scenarios, and running them over the contenders.

Load scenarios start every contender fresh, then run a few rounds; in each round every
contender gets one load run, in an order rotated each round, so whatever drifts on the
machine (thermal, caches, other processes) hits all of them alike. The figure reported is the
median over the rounds. ``idle-10k`` and ``startup`` measure memory and start-up time instead.

``SCENARIOS`` are those of ``python -m bench http1``, ``H2_SCENARIOS`` those of ``python -m
bench http2`` (h2load over h2c; each contender is checked with one request of the scenario's
kind before its load runs, since h2load counts a response without its gRPC trailer as success).
"""

from __future__ import annotations

import compileall
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import h1, h2, load, nginx, scraper
from .contenders import REPO_ROOT, Contender, Running, Workdir, start
from .procs import NotReady, Processes, tree_cpu_seconds, tree_hwm_kib, tree_rss_kib
from .report import IMPORT_TRIO

Entry = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "wrk", "rate", "idle", "startup", "h2load"
    description: str
    path: str = "/small"
    post: bool = False
    headers: tuple[str, ...] = ()
    rate: float | None = None  # requests/s for kind "rate"; None: half of trio-mesh-1's max
    grpc: bool = False  # h2load: POST one gRPC message (the grpc-request file)
    # Contenders that do not take part, with the reason shown in the table.
    skip: tuple[tuple[str, str], ...] = ()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("small-get", "wrk", "GET /small (5 B), keep-alive, 50 connections"),
        Scenario(
            "post-1k",
            "wrk",
            "POST /post with a 1 KiB body, keep-alive, 50 connections",
            path="/post",
            post=True,
        ),
        Scenario("get-64k", "wrk", "GET /64k (64 KiB), keep-alive, 50 connections", path="/64k"),
        Scenario(
            "new-connection",
            "wrk",
            "GET /small, Connection: close (a connection each)",
            headers=("Connection: close",),
        ),
        Scenario(
            "rate-2000", "rate", "GET /small at 2,000 req/s (h2load, 10 connections)", rate=2000.0
        ),
        Scenario(
            "rate-half",
            "rate",
            "GET /small at half of trio-mesh-1's small-get req/s (h2load, 10 connections)",
        ),
        Scenario("idle-10k", "idle", "10,000 idle keep-alive connections (one GET each): RSS"),
        Scenario("startup", "startup", "process start to port accepting connections"),
    )
}


H2_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "h2-small-get",
            "h2load",
            "GET /small (5 B) over h2c, 10 connections x 10 concurrent streams",
        ),
        Scenario(
            "grpc-unary",
            "h2load",
            f"gRPC unary POST {h2.GRPC_PATH} (12-byte message each way, grpc-status trailer), "
            "h2c, 10 connections x 10 concurrent streams",
            path=h2.GRPC_PATH,
            grpc=True,
            headers=tuple(f"{k}: {v}" for k, v in h2.GRPC_HEADERS),
            skip=(
                ("nginx-grpc-pass", "the same configuration as nginx for gRPC"),
                (
                    "trio-mesh-h2h1",
                    "gRPC needs HTTP/2 upstream (trailers); the upstream here is HTTP/1.1",
                ),
            ),
        ),
    )
}


@dataclass
class Settings:
    duration: float = 4.0
    rounds: int = 3
    warmup: float = 1.0  # wrk takes whole seconds
    connections: int = 50
    rate_clients: int = 10
    idle_connections: int = 10_000
    startup_runs: int = 5
    ready_timeout: float = 30.0
    h2_clients: int = 10  # h2load -c
    h2_streams: int = 10  # h2load -m


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    procs: Processes
    work: Workdir
    contenders: list[Contender]
    settings: Settings
    results: dict[str, dict[str, Entry]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # scenario -> note
    failures: list[str] = field(default_factory=list)  # harness-level problems (exit code 1)
    log: Callable[[str], None] = _log

    # --- helpers ----------------------------------------------------------------------------

    def _start_all(self, scenario: Scenario) -> list[Running]:
        running = []
        skip = dict(scenario.skip)
        for c in self.contenders:
            if c.name in skip:
                self.results.setdefault(scenario.name, {})[c.name] = {"skipped": skip[c.name]}
                continue
            try:
                r = start(c, self.procs, self.work, scenario.name, self.settings.ready_timeout)
            except NotReady as exc:
                self._fail(scenario, c.name, f"never became ready: {exc}")
                continue
            problem = self._check(scenario, r)
            if problem:
                self._fail(scenario, c.name, problem)
                self.procs.stop(r.child)
                continue
            running.append(r)
        return running

    def _check(self, scenario: Scenario, r: Running) -> str | None:
        """Requests of the scenario's kind, checked in full (load scenarios only)."""
        if r.scrape is not None:
            problem = scraper.check(r.scrape)
            if problem:
                return f"metrics scrape failed: {problem}"
        if scenario.kind in ("wrk", "rate"):
            problem = h1.check(r.port, scenario.path, scenario.post)
            return f"check failed: {problem}" if problem else None
        if scenario.kind != "h2load":
            return None
        if scenario.grpc:
            return h2.check_grpc_unary(r.port)
        return h2.check_small_get(r.port, nginx.SMALL_BODY)

    def _fail(self, scenario: Scenario, contender: str, error: str) -> None:
        self.log(f"{scenario.name} {contender}: {error}")
        self.results.setdefault(scenario.name, {})[contender] = {"error": error}
        self.failures.append(f"{scenario.name} {contender}: {error.splitlines()[0]}")

    def _stop_all(self, running: list[Running]) -> None:
        for r in running:
            self.procs.stop(r.child)

    def _load(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> load.LoadResult:
        url = r.url(scenario.path)
        if scenario.kind == "h2load":
            return load.run_h2load(
                url,
                seconds,
                self.work.dir / f"h2load-{scenario.name}-{r.name}.tsv",
                clients=self.settings.h2_clients,
                streams=self.settings.h2_streams,
                data=self.work.dir / "grpc-request" if scenario.grpc else None,
                headers=scenario.headers,
            )
        if scenario.kind == "rate":
            assert rate is not None
            log_path = self.work.dir / f"h2load-{scenario.name}-{r.name}.tsv"
            log_path.unlink(missing_ok=True)
            return load.run_fixed_rate(url, rate, seconds, log_path, self.settings.rate_clients)
        script = self.work.dir / "post.lua" if scenario.post else None
        return load.run_wrk(
            url, seconds, self.settings.connections, script=script, headers=scenario.headers
        )

    # --- load scenarios ---------------------------------------------------------------------

    def run_load(self, scenario: Scenario) -> None:
        s = self.settings
        (self.work.dir / "post.lua").write_text(load.POST_LUA)
        (self.work.dir / "grpc-request").write_bytes(h2.grpc_frame(h2.GRPC_MESSAGE))
        running = self._start_all(scenario)
        try:
            rate = scenario.rate
            if scenario.kind == "rate" and rate is None:
                rate = self._half_of_trio_mesh_1(scenario, running)
                if rate is None:
                    return
            if rate is not None:
                self.notes[scenario.name] = f"target {rate:.0f} req/s"
            if s.warmup > 0:
                for r in running:
                    # Untimed: first requests pay for lazy imports, pool fills, page faults.
                    self._safe_load(scenario, r, s.warmup, rate)
            rounds: dict[str, list[Entry]] = {r.name: [] for r in running}
            alive = list(running)
            for n in range(s.rounds):
                order = alive[n % len(alive) :] + alive[: n % len(alive)] if alive else []
                for r in order:
                    self.log(f"{scenario.name} round {n + 1}/{s.rounds}: {r.name}")
                    entry = self._measured_run(scenario, r, s.duration, rate)
                    rounds[r.name].append(entry)
                    if r.child.exited() is not None:
                        alive.remove(r)
                        entry["error"] = f"process exited with code {r.child.exited()}"
                        self.failures.append(f"{scenario.name} {r.name}: {entry['error']}")
            for r in running:
                entry = _summarize(rounds[r.name])
                entry["peak_rss_kib"] = tree_hwm_kib(r.pid)
                self.results.setdefault(scenario.name, {})[r.name] = entry
        finally:
            self._stop_all(running)

    def _scraped(self, r: Running, seconds: float) -> contextlib.AbstractContextManager[Any]:
        """Scrapes ``r``'s metrics once a second for the run (stops by itself after it)."""
        if r.scrape is None:
            return contextlib.nullcontext()
        return scraper.Scraper(r.scrape, limit=seconds + 10)

    def _safe_load(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> None:
        try:
            with self._scraped(r, seconds):
                self._load(scenario, r, seconds, rate)
        except load.LoadError as exc:
            self.log(f"{scenario.name} {r.name}: warm-up failed: {exc}")

    def _measured_run(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> Entry:
        cpu0 = tree_cpu_seconds(r.pid)
        try:
            with self._scraped(r, seconds) as scraping:
                res = self._load(scenario, r, seconds, rate)
        except load.LoadError as exc:
            self.failures.append(f"{scenario.name} {r.name}: {exc}")
            return {"error": str(exc)}
        cpu = tree_cpu_seconds(r.pid) - cpu0
        entry: Entry = res.to_json()
        if isinstance(scraping, scraper.Scraper):
            entry["scrapes"] = scraping.scrapes
            if scraping.failures or not scraping.scrapes:
                entry["error"] = (
                    f"{scraping.failures} of {scraping.scrapes} scrapes failed:"
                    f" {scraping.last_error}"
                )
                self.failures.append(f"{scenario.name} {r.name}: {entry['error']}")
        if not res.requests:
            entry["error"] = "no request completed"
            self.failures.append(f"{scenario.name} {r.name}: no request completed")
        entry["cpu_s"] = round(cpu, 3)
        entry["cpu_us_per_req"] = round(cpu / res.requests * 1e6, 1) if res.requests else None
        return entry

    def _half_of_trio_mesh_1(self, scenario: Scenario, running: list[Running]) -> float | None:
        measured = self.results.get("small-get", {}).get("trio-mesh-1", {}).get("rps")
        if measured:
            return measured / 2
        tm1 = next((r for r in running if r.name == "trio-mesh-1"), None)
        if tm1 is None:
            self.notes[scenario.name] = "skipped: needs trio-mesh-1 (its small-get req/s)"
            self.log(f"{scenario.name}: {self.notes[scenario.name]}")
            return None
        self.log(f"{scenario.name}: measuring trio-mesh-1's small-get req/s first")
        probe = self._measured_run(SCENARIOS["small-get"], tm1, self.settings.duration, None)
        if not probe.get("rps"):
            self.notes[scenario.name] = f"skipped: trio-mesh-1 probe failed: {probe.get('error')}"
            return None
        return probe["rps"] / 2

    # --- idle connections -------------------------------------------------------------------

    def run_idle(self, scenario: Scenario) -> None:
        n = self.settings.idle_connections
        for c in self.contenders:
            try:
                r = start(c, self.procs, self.work, scenario.name, self.settings.ready_timeout)
            except NotReady as exc:
                self._fail(scenario, c.name, f"never became ready: {exc}")
                continue
            try:
                self.log(f"{scenario.name}: {c.name}: opening {n} connections")
                before = tree_rss_kib(r.pid)
                after: list[int] = []
                idle = load.hold_idle_connections(
                    r.port, n, lambda r=r, after=after: after.append(tree_rss_kib(r.pid))
                )
                entry: Entry = {
                    "connections": idle.alive,
                    "opened": idle.opened,
                    "failed": idle.failed,
                    "open_seconds": round(idle.open_seconds, 2),
                    "rss_before_kib": before,
                    "rss_after_kib": after[0],
                    "kib_per_connection": (
                        round((after[0] - before) / idle.alive, 2) if idle.alive else None
                    ),
                    "peak_rss_kib": tree_hwm_kib(r.pid),
                }
                if idle.first_error:
                    entry["first_error"] = idle.first_error
                if idle.stopped:
                    entry["stopped"] = idle.stopped
                self.results.setdefault(scenario.name, {})[c.name] = entry
                self.log(
                    f"{scenario.name}: {c.name}: {idle.alive}/{n} alive, "
                    f"{entry['kib_per_connection']} KiB/connection"
                    + (
                        f" ({idle.stopped}; first error: {idle.first_error})"
                        if idle.stopped
                        else ""
                    )
                )
            finally:
                self.procs.stop(r.child)

    # --- start-up time ----------------------------------------------------------------------

    def run_startup(self, scenario: Scenario) -> None:
        times: dict[str, list[float]] = {c.name: [] for c in self.contenders}
        # Bytecode as an installed package has it (pip compiles at install; trio's own is in
        # site-packages): with PYTHONDONTWRITEBYTECODE set, as in some sandboxes, every start
        # would otherwise compile trio-mesh's ~0.5 MB of source again (about +30%).
        for package in ("trio_mesh", "bench"):
            compileall.compile_dir(REPO_ROOT / package, quiet=1)
        usable = []
        for c in self.contenders:  # one untimed start each: warm page cache, one-time setup
            try:
                self.procs.stop(start(c, self.procs, self.work, "startup-warm").child)
                usable.append(c)
            except NotReady as exc:
                self._fail(scenario, c.name, f"never became ready: {exc}")
        for n in range(self.settings.startup_runs):
            order = usable[n % len(usable) :] + usable[: n % len(usable)] if usable else []
            for c in order:
                try:
                    r = start(c, self.procs, self.work, f"startup-{n}", self.settings.ready_timeout)
                except NotReady as exc:
                    self.failures.append(f"{scenario.name} {c.name}: {exc}")
                    continue
                times[c.name].append(r.startup_s)
                self.procs.stop(r.child)
        # The reference for trio-mesh's start-up: the interpreter importing trio, and exiting.
        times[IMPORT_TRIO] = []
        for _ in range(self.settings.startup_runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import trio"], check=True, timeout=60)
            times[IMPORT_TRIO].append(time.perf_counter() - started)
        for name in [c.name for c in usable] + [IMPORT_TRIO]:
            t = times[name]
            if t:
                self.results.setdefault(scenario.name, {})[name] = {
                    "startup_ms": round(load.median(t) * 1e3, 1),
                    "min_ms": round(min(t) * 1e3, 1),
                    "max_ms": round(max(t) * 1e3, 1),
                    "runs_ms": [round(x * 1e3, 1) for x in t],
                }

    def run(self, scenario: Scenario) -> None:
        self.log(f"scenario {scenario.name}: {scenario.description}")
        if scenario.kind in ("wrk", "rate", "h2load"):
            self.run_load(scenario)
        elif scenario.kind == "idle":
            self.run_idle(scenario)
        else:
            self.run_startup(scenario)


def _median_of(rounds: list[Entry], key: str) -> float | None:
    values = [e[key] for e in rounds if e.get(key) is not None]
    return load.median(values) if values else None


def _summarize(rounds: list[Entry]) -> Entry:
    """Median of each figure over the rounds that ran; the rounds themselves are kept too."""
    good = [e for e in rounds if "error" not in e or e.get("requests")]
    entry: Entry = {"rounds": rounds}
    if not good:
        entry["error"] = next((e["error"] for e in rounds if "error" in e), "no rounds ran")
        return entry
    for key in ("rps", "p50_ms", "p99_ms", "max_ms", "cpu_s", "cpu_us_per_req"):
        value = _median_of(good, key)
        entry[key] = round(value, 3) if value is not None else None
    entry["errors"] = sum(e.get("errors", 0) for e in good)
    entry["non_2xx"] = sum(e.get("non_2xx", 0) for e in good)
    entry["requests"] = sum(e.get("requests", 0) for e in good)
    targets = [e["extra"]["target_rps"] for e in good if "target_rps" in e.get("extra", {})]
    if targets:
        entry["target_rps"] = targets[0]
    return entry
