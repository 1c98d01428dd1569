"""Results: ratios to nginx, the printed tables, results.json and plot.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMPORT_TRIO = "python -c 'import trio'"  # the start-up scenario's reference row

Results = dict[str, dict[str, dict[str, Any]]]

BASELINE = "nginx"
SATURATED = 0.95  # a fixed-rate run reaching less than this share of its target


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def add_ratios(results: Results) -> None:
    """Each entry's main figures divided by nginx's from the same run (same scenario)."""
    for entries in results.values():
        base = entries.get(BASELINE, {})
        for entry in entries.values():
            if "error" in entry and "rps" not in entry:
                continue
            if "rps" in entry:
                entry["rps_vs_nginx"] = _ratio(entry.get("rps"), base.get("rps"))
                entry["p99_vs_nginx"] = _ratio(entry.get("p99_ms"), base.get("p99_ms"))
            if "kib_per_connection" in entry:
                entry["kib_per_connection_vs_nginx"] = _ratio(
                    entry.get("kib_per_connection"), base.get("kib_per_connection")
                )
            if "startup_ms" in entry:
                entry["startup_vs_nginx"] = _ratio(entry.get("startup_ms"), base.get("startup_ms"))
                trio = entries.get(IMPORT_TRIO, {}).get("startup_ms")
                entry["startup_vs_import_trio"] = _ratio(entry.get("startup_ms"), trio)


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}{suffix}"
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; a row shorter than the header is a note spanning the columns after the
    first two (an unavailable contender, an error)."""
    full = [r for r in rows if len(r) == len(header)]
    widths = [max([len(h)] + [len(r[i]) for r in full]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(parts).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    for r in rows:
        if len(r) == len(header):
            lines.append(line(r))
        else:
            lines.append(line(r[:2]) + "  " + "  ".join(r[2:]))
    return "\n".join(lines)


def format_tables(
    results: Results,
    scenarios: Sequence[str],
    contenders: Sequence[str],
    unavailable: dict[str, str],
    notes: dict[str, str],
) -> str:
    """The readable report: one table for the load scenarios, one each for idle-10k, startup."""
    out: list[str] = []
    load_header = [
        "scenario",
        "contender",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "CPU us/req",
        "peak RSS MiB",
        "req/s /nginx",
        "p99 /nginx",
        "errors",
    ]
    load_rows: list[list[str]] = []
    side_rows: list[str] = []
    saturated = False
    for scenario in scenarios:
        entries = results.get(scenario, {})
        label = scenario
        if scenario in notes:
            label = f"{scenario} ({notes[scenario]})"
        if scenario in ("idle-10k", "startup"):
            continue
        if not entries and scenario in notes:
            side_rows.append(f"{scenario}: {notes[scenario]}")
            continue
        for name in contenders:
            if name in unavailable:
                load_rows.append([label, name, "unavailable: " + unavailable[name]])
                continue
            e = entries.get(name)
            if e is None:
                continue
            if "skipped" in e:
                load_rows.append([label, name, "n/a: " + e["skipped"]])
                continue
            if "rps" not in e:
                load_rows.append([label, name, "error: " + e.get("error", "?").splitlines()[0]])
                continue
            errs = e.get("errors", 0) + e.get("non_2xx", 0)
            rps = _fmt(e.get("rps"), 0)
            target = e.get("target_rps")
            if target and (e.get("rps") or 0) < SATURATED * target:
                rps += "*"
                saturated = True
            load_rows.append(
                [
                    label,
                    name,
                    rps,
                    _fmt(e.get("p50_ms")),
                    _fmt(e.get("p99_ms")),
                    _fmt(e.get("max_ms")),
                    _fmt(e.get("cpu_s")),
                    _fmt(e.get("cpu_us_per_req"), 0),
                    _mib(e.get("peak_rss_kib")),
                    _fmt(e.get("rps_vs_nginx")),
                    _fmt(e.get("p99_vs_nginx")),
                    str(errs),
                ]
            )
    if load_rows:
        out.append(_table(load_header, load_rows))
    if saturated:
        out.append(
            f"* below {SATURATED:.0%} of the target rate: the contender did not keep up, so its"
            " latencies are those of a saturated proxy"
        )
    out.extend(side_rows)

    if "idle-10k" in scenarios:
        header = [
            "scenario",
            "contender",
            "alive",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/conn",
            "KiB/conn /nginx",
            "peak RSS MiB",
            "open s",
        ]
        rows = []
        for name in contenders:
            e = results.get("idle-10k", {}).get(name)
            if name in unavailable:
                rows.append(["idle-10k", name, "unavailable: " + unavailable[name]])
            elif e is None:
                continue
            elif "kib_per_connection" not in e:
                rows.append(["idle-10k", name, "error: " + e.get("error", "?").splitlines()[0]])
            else:
                rows.append(
                    [
                        "idle-10k",
                        name,
                        f"{e['connections']}/{e['opened'] + e['failed']}",
                        _mib(e["rss_before_kib"]),
                        _mib(e["rss_after_kib"]),
                        _fmt(e["kib_per_connection"]),
                        _fmt(e.get("kib_per_connection_vs_nginx")),
                        _mib(e.get("peak_rss_kib")),
                        _fmt(e.get("open_seconds")),
                    ]
                )
        out += ["", _table(header, rows)]

    if "startup" in scenarios:
        header = [
            "scenario",
            "contender",
            "median ms",
            "min ms",
            "max ms",
            "/nginx",
            "/import trio",
        ]
        rows = []
        for name in [*contenders, IMPORT_TRIO]:
            e = results.get("startup", {}).get(name)
            if name in unavailable:
                rows.append(["startup", name, "unavailable: " + unavailable[name]])
            elif e is None:
                continue
            elif "startup_ms" not in e:
                rows.append(["startup", name, "error: " + e.get("error", "?").splitlines()[0]])
            else:
                rows.append(
                    [
                        "startup",
                        name,
                        _fmt(e["startup_ms"], 1),
                        _fmt(e["min_ms"], 1),
                        _fmt(e["max_ms"], 1),
                        _fmt(e.get("startup_vs_nginx")),
                        _fmt(e.get("startup_vs_import_trio")),
                    ]
                )
        out += ["", _table(header, rows)]

    if unavailable:
        out.append("")
        out += [f"unavailable: {name}: {why}" for name, why in unavailable.items()]
    return "\n".join(out)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def write_plot(
    path: Path, results: Results, scenarios: Sequence[str], contenders: Sequence[str]
) -> None:
    """Four panels: req/s and p99 per load scenario, KiB per idle connection, start-up time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load_scenarios = [s for s in scenarios if s not in ("idle-10k", "startup")]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def grouped(ax: Any, groups: Sequence[str], key: str, title: str, log: bool) -> None:
        width = 0.8 / max(1, len(contenders))
        plotted: list[float] = []
        for i, name in enumerate(contenders):
            xs, ys = [], []
            for g, scenario in enumerate(groups):
                value = results.get(scenario, {}).get(name, {}).get(key)
                if value:
                    xs.append(g + i * width - 0.4 + width / 2)
                    ys.append(value)
            ax.bar(xs, ys, width, label=name, color=colors[i % len(colors)])
            plotted.extend(ys)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=15)
        ax.set_title(title)
        if not plotted:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)

    grouped(
        axes[0][0],
        [s for s in load_scenarios if not s.startswith("rate")],
        "rps",
        "throughput, req/s (wrk -t1 -c50), median of rounds",
        True,
    )
    grouped(axes[0][1], load_scenarios, "p99_ms", "p99 latency, ms (log)", True)
    grouped(
        axes[1][0],
        ["idle-10k"] if "idle-10k" in scenarios else [],
        "kib_per_connection",
        "memory per idle keep-alive connection, KiB",
        False,
    )
    grouped(
        axes[1][1],
        ["startup"] if "startup" in scenarios else [],
        "startup_ms",
        "start-up to accepting connections, ms (median)",
        False,
    )
    axes[0][0].legend(loc="best", fontsize="small")
    fig.suptitle("trio-mesh HTTP/1.1 benchmark (127.0.0.1, one run, contenders alternating)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_load_plot(
    path: Path, results: Results, scenarios: Sequence[str], contenders: Sequence[str], title: str
) -> None:
    """Three panels over the load scenarios: req/s, p99 latency, CPU us per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = (
        ("rps", "throughput, req/s (median of rounds)", False),
        ("p99_ms", "p99 latency, ms (log)", True),
        ("cpu_us_per_req", "CPU us per request (proxy's processes)", False),
    )
    width = 0.8 / max(1, len(contenders))
    for ax, (key, panel_title, log) in zip(axes, panels, strict=True):
        plotted = []
        for i, name in enumerate(contenders):
            xs, ys = [], []
            for g, scenario in enumerate(scenarios):
                value = results.get(scenario, {}).get(name, {}).get(key)
                if value:
                    xs.append(g + i * width - 0.4 + width / 2)
                    ys.append(value)
            ax.bar(xs, ys, width, label=name, color=colors[i % len(colors)])
            plotted.extend(ys)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios)
        ax.set_title(panel_title)
        if not plotted:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
