"""``python -m bench tls``: TLS termination, trio-mesh against nginx and its own cleartext.

The same scheme as the HTTP benchmarks (``scenarios.Bench``): every contender started fresh per
scenario and checked before its load runs, a 1 s untimed warm-up, rounds in an order rotated
each round, the median over the rounds, CPU and peak RSS of the contender's process tree. The
load tool is wrk (``-t1 -c50``) with ``OPENSSL_CONF`` pinning TLS 1.3 and
TLS_AES_128_GCM_SHA256 (``bench/tls_client.py``). The certificate is made for the run (ECDSA
P-256, by ``tests/tls_pki.py``), the same file for both TLS contenders.

- ``tls-handshake``: ``Connection: close`` on every request: the server answers and closes,
  wrk opens a new connection, and since neither server keeps sessions or sends tickets (checked
  before load: an offered session is not resumed), each request is a full handshake. wrk
  rather than ``h2load -D`` (h2load 1.52 never ends a timed run whose server closes
  connections: it reconnects forever) or ``openssl s_time -new`` (one connection at a time:
  it measures the round trip, not the server). Counted: the TCP connections accepted on the
  host during each run (``/proc/net/snmp``), per request (``conn/req``, 1.0 expected; other
  processes on the host can only add to it).
- ``tls-small-get``: GET /small on 50 keep-alive TLS connections.

Contenders: ``nginx-tls`` (1 worker), ``trio-mesh-tls`` (1 process), and ``trio-mesh`` in
cleartext, whose small-GET rate from the same run is the reference of the TLS GET target.
Targets (issue 16): handshakes at least 0.5x nginx's; TLS small GETs at least 0.8x trio-mesh's
cleartext rate. wrk's single thread pays more per handshake than the server does (it verifies
the server's signature and shares the two cores with it), so the handshake rates are bounded by
the client as much as by the server; the servers' CPU per handshake (CPU us/req) is the
figure that compares the two servers themselves, and is shown next to the rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import h1, load, tls_client
from .contenders import Running, Workdir
from .report import Results, _fmt, _mib, _ratio, _table
from .scenarios import Bench, Entry, Scenario

NGINX_TLS = "nginx-tls"
TRIO_TLS = "trio-mesh-tls"
CLEARTEXT = "trio-mesh"
HANDSHAKE = "tls-handshake"
SMALL_GET = "tls-small-get"
HANDSHAKE_TARGET = 0.5  # trio-mesh-tls / nginx-tls, handshakes per second
GET_TARGET = 0.8  # trio-mesh-tls / trio-mesh (cleartext), keep-alive small GETs per second

TLS_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            HANDSHAKE,
            "wrk",
            "a full TLS handshake per request: GET /small with Connection: close, 50"
            " connections (trio-mesh: a new cleartext connection per request)",
            headers=("Connection: close",),
        ),
        Scenario(SMALL_GET, "wrk", "GET /small (5 B) over TLS, keep-alive, 50 connections"),
    )
}


def prepare(work: Workdir) -> None:
    """The run's certificates (a CA and a server certificate for 127.0.0.1 and localhost,
    ECDSA P-256) and the load tools' OpenSSL configuration, in the run's temp dir."""
    from tests.tls_pki import make_ca  # the tests' own PKI maker: openssl, at run time

    ca = make_ca(work.dir / "pki", "bench-ca")
    pair = ca.issue("bench-server", cn="localhost", dns=("localhost",), ips=("127.0.0.1",))
    # nginx reads its key as root (the master) before dropping to its user: 0600 is fine.
    work.tls_ca, work.tls_cert, work.tls_key = ca.cert, pair.cert, pair.key
    tls_client.write_client_conf(work.dir)


class TlsBench(Bench):
    """``Bench`` with TLS checks, the pinned client configuration, and connections counted."""

    @property
    def client_conf(self) -> Path:
        return self.work.dir / "client-openssl.cnf"

    def _check(self, scenario: Scenario, r: Running) -> str | None:
        if r.contender.scheme != "https":
            problem = h1.check(r.port, scenario.path)
            return f"check failed: {problem}" if problem else None
        assert self.work.tls_ca is not None
        problem = tls_client.check(r.port, self.work.tls_ca, scenario.path)
        if problem:
            return f"TLS check failed: {problem}"
        found = tls_client.negotiated(r.port, self.client_conf)
        if isinstance(found, str):
            return f"negotiation probe failed: {found}"
        wanted = (tls_client.TLS_VERSION, tls_client.TLS_CIPHER)
        if (found["protocol"], found["cipher"]) != wanted:
            return f"negotiated {found}, not {wanted}"
        self.notes[f"negotiated {r.name}"] = " ".join(found.values())
        return None

    def _load(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> load.LoadResult:
        env = tls_client.client_env(self.client_conf) if r.contender.scheme == "https" else None
        return load.run_wrk(
            r.url(scenario.path),
            seconds,
            self.settings.connections,
            headers=scenario.headers,
            env=env,
        )

    def _measured_run(
        self, scenario: Scenario, r: Running, seconds: float, rate: float | None
    ) -> Entry:
        opened = tls_client.passive_opens()
        entry = super()._measured_run(scenario, r, seconds, rate)
        connections = tls_client.passive_opens() - opened
        entry["connections"] = connections
        if entry.get("requests"):
            entry["connections_per_request"] = round(connections / entry["requests"], 3)
        return entry

    def run_load(self, scenario: Scenario) -> None:
        super().run_load(scenario)
        for entry in self.results.get(scenario.name, {}).values():
            per = [
                e["connections_per_request"]
                for e in entry.get("rounds", ())
                if e.get("connections_per_request") is not None
            ]
            if per:
                entry["connections_per_request"] = round(load.median(per), 3)

    def run(self, scenario: Scenario) -> None:
        self.log(f"scenario {scenario.name}: {scenario.description}")
        self.run_load(scenario)


def add_ratios(results: Results) -> None:
    """req/s to nginx-tls's and to cleartext trio-mesh's from the same scenario; CPU per request
    to nginx-tls's."""
    for entries in results.values():
        nginx, clear = entries.get(NGINX_TLS, {}), entries.get(CLEARTEXT, {})
        for entry in entries.values():
            if "rps" not in entry:
                continue
            entry["rps_vs_nginx_tls"] = _ratio(entry.get("rps"), nginx.get("rps"))
            entry["rps_vs_cleartext"] = _ratio(entry.get("rps"), clear.get("rps"))
            entry["cpu_per_req_vs_nginx_tls"] = _ratio(
                entry.get("cpu_us_per_req"), nginx.get("cpu_us_per_req")
            )


def targets(results: Results) -> list[str]:
    """The issue's two targets, from this run's medians: one line each (or why not)."""

    def figure(scenario: str, contender: str, key: str) -> Any:
        return results.get(scenario, {}).get(contender, {}).get(key)

    def verdict(ratio: float | None, target: float) -> str:
        if ratio is None:
            return "not measured"
        return f"{ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'missed'})"

    lines = []
    hs = _ratio(figure(HANDSHAKE, TRIO_TLS, "rps"), figure(HANDSHAKE, NGINX_TLS, "rps"))
    line = f"handshakes/s, {TRIO_TLS} / {NGINX_TLS}: {verdict(hs, HANDSHAKE_TARGET)}"
    cpu_t = figure(HANDSHAKE, TRIO_TLS, "cpu_us_per_req")
    cpu_n = figure(HANDSHAKE, NGINX_TLS, "cpu_us_per_req")
    if cpu_t and cpu_n:
        line += (
            f"; server CPU per handshake {cpu_t:,.0f} us vs {cpu_n:,.0f} us, handshakes per"
            f" CPU-second {cpu_n / cpu_t:.2f}x"
        )
    lines.append(line)
    get = _ratio(figure(SMALL_GET, TRIO_TLS, "rps"), figure(SMALL_GET, CLEARTEXT, "rps"))
    lines.append(
        f"small GETs/s over TLS, {TRIO_TLS} / {CLEARTEXT} (cleartext): {verdict(get, GET_TARGET)}"
    )
    return lines


def format_table(
    results: Results,
    scenarios: Sequence[str],
    contenders: Sequence[str],
    unavailable: dict[str, str],
    notes: dict[str, str],
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
        "conn/req",
        "req/s /nginx-tls",
        "req/s /cleartext",
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
                    _fmt(e.get("connections_per_request")),
                    _fmt(e.get("rps_vs_nginx_tls")),
                    _fmt(e.get("rps_vs_cleartext")),
                    str(e.get("errors", 0) + e.get("non_2xx", 0)),
                ]
            )
    out = [_table(header, rows) if rows else "(no results)", ""]
    out += targets(results)
    out += [f"{key}: {value}" for key, value in notes.items() if key.startswith("negotiated ")]
    out.append(
        "conn/req: TCP connections accepted on the host during the run, per request (other"
        " processes' included)"
    )
    return "\n".join(out)
