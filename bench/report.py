"""Results out: a Markdown table (stdout), JSON (``--json``), PNG plots (``--plot``).

Repetitions of one (scenario, configuration, target) are folded into the median with
the min-max range. Server CPU is in cores (1.00 = one core busy for the whole run);
peak RSS is the server's high-water mark during the run.

Imports: stdlib and the bench's modules; matplotlib only inside :func:`plot`.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from .procstat import cpu_count
from .runner import SCENARIOS, RunRecord

#: The figure each scenario's bar chart shows.
HEADLINE = {
    "fanout": ("mb_s", "delivered MB/s"),
    "small": ("segments_s", "segments/s"),
    "live": ("p99_ms", "p99 latency (ms)"),
    "join": ("cur_p99_ms", "GET -2 time to first byte, p99 (ms)"),
}
_PACKAGES = ("trickle-trio", "trio", "hypercorn", "h11", "quart", "quart-trio")


def environment() -> dict[str, Any]:
    """Date, versions and machine, for the JSON and the README table."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
        "cores": cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
    }


def _fold(values: list[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return mid if low == high else f"{mid} ({low}-{high})"


def _groups(records: Iterable[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.scenario, record.config, record.target), []).append(record)
    return groups


def summary(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per (scenario, config, target): every metric's median, min and max over reps."""
    out = []
    for (scenario, config, target), group in _groups(records).items():
        good = [r for r in group if r.outcome is not None]
        metrics: dict[str, dict[str, float]] = {}
        for key in good[0].outcome.metrics if good and good[0].outcome else {}:
            values = [
                r.outcome.metrics[key]
                for r in good
                if r.outcome is not None and not math.isnan(r.outcome.metrics.get(key, math.nan))
            ]
            if values:
                metrics[key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
        out.append(
            {
                "scenario": scenario,
                "config": config,
                "target": target,
                "reps": len(group),
                "failed_reps": len(group) - len(good),
                "clean": all(r.outcome.clean for r in good if r.outcome is not None),
                "generator_bound_reps": sum(1 for r in group if r.warning),
                "metrics": metrics,
            }
        )
    return out


def markdown(records: list[RunRecord], find_max: list[dict[str, Any]] | None = None) -> str:
    """One table per scenario, plus the find-max table and footnotes."""
    lines: list[str] = []
    notes: list[str] = []
    by_scenario: dict[str, list[RunRecord]] = {}
    for record in records:
        by_scenario.setdefault(record.scenario, []).append(record)
    for scenario, recs in by_scenario.items():
        _, columns = SCENARIOS[scenario]
        header = ["config", "server", *(h for _, h, _ in columns)]
        header += ["checks", "server CPU", "server peak MiB", "generator CPU", "other CPU"]
        lines.append(f"### {scenario}\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for (_, config, target), group in _groups(recs).items():
            good = [r for r in group if r.outcome is not None and r.usage is not None]
            row = [config, target]
            for key, _, fmt in columns:
                row.append(
                    _fold([r.outcome.metrics.get(key, math.nan) for r in good if r.outcome], fmt)
                )
            row.append(_checks(group))
            servers = [r.usage.server for r in good if r.usage is not None and r.usage.server]
            row.append(_fold([s.busy for s in servers], "{:.2f}"))
            row.append(
                _fold([(s.peak_rss or math.nan) / 2**20 for s in servers], "{:.0f}")
                if servers
                else "-"
            )
            gens = [r.usage for r in good if r.usage is not None]
            gen = _fold([u.generator_busy for u in gens], "{:.2f}")
            if any(r.warning for r in group):
                mark = f"[{len(notes) + 1}]"
                notes.append(
                    f"{scenario} {config} on {target}: generator-bound in "
                    f"{sum(1 for r in group if r.warning)}/{len(group)} runs, so the figure is "
                    f"a lower bound ({next(r.warning for r in group if r.warning)})"
                )
                gen += " " + mark
            row.append(gen)
            row.append(_fold([u.other_busy for u in gens], "{:.2f}"))
            lines.append("| " + " | ".join(row) + " |")
            for r in group:
                if r.error:
                    notes.append(f"{scenario} {config} on {target} rep {r.rep + 1}: {r.error}")
                elif r.outcome is not None:
                    notes.extend(
                        f"{scenario} {config} on {target} rep {r.rep + 1}: {n}"
                        for n in r.outcome.notes
                    )
        lines.append("")
    if find_max:
        lines.append("### live --find-max\n")
        lines.append("| server | max channels | p99 at max (ms) | first failing | probes |")
        lines.append("|---|---|---|---|---|")
        for result in find_max:
            probes = ", ".join(
                f"{p['channels']}{'✓' if p['passed'] else '✗'}" for p in result["probes"]
            )
            p99 = result["p99_ms_at_max"]
            bound = result["limited_by_generator"] or result["failure_generator_bound"]
            max_c = str(result["max_channels"]) + (
                " (lower bound: generator-bound)" if bound else ""
            )
            lines.append(
                f"| {result['target']} | {max_c} | {'-' if p99 is None else f'{p99:.1f}'} | "
                f"{result['first_failing'] or '-'} | {probes} |"
            )
        lines.append("")
    if notes:
        lines.append("Notes:\n")
        lines.extend(f"{i}. {note}" for i, note in enumerate(notes, 1))
        lines.append("")
    return "\n".join(lines)


def _checks(group: list[RunRecord]) -> str:
    bad: dict[str, int] = {}
    failed = 0
    for r in group:
        if r.outcome is None:
            failed += 1
            continue
        for key, value in r.outcome.checks.items():
            if value:
                bad[key] = bad.get(key, 0) + value
    parts = [f"{k} {v}" for k, v in bad.items()]
    if failed:
        parts.append(f"{failed} run(s) failed")
    return ", ".join(parts) or "ok"


def to_json(
    records: list[RunRecord],
    args: dict[str, Any],
    find_max: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "environment": environment(),
        "args": args,
        "summary": summary(records),
        "find_max": find_max,
        "runs": [r.to_json() for r in records],
    }


def plot(records: list[RunRecord], directory: Path) -> list[Path]:
    """Latency CDFs and throughput per configuration as PNGs; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "bench: matplotlib is not installed; no plots (pip install '.[bench]')", file=sys.stderr
        )
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Latency CDFs: one figure per (scenario, config, sample kind), a line per target.
    cdfs: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in records:
        if r.outcome is None:
            continue
        for kind, values in r.outcome.samples.items():
            cdfs.setdefault((r.scenario, r.config, kind), {}).setdefault(r.target, []).extend(
                values
            )
    for (scenario, config, kind), per_target in cdfs.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for target, values in per_target.items():
            if not values:
                continue
            values = sorted(values)
            n = len(values)
            step = max(1, n // 2000)
            xs = [*values[::step], values[-1]]
            ys = [i / n for i in range(0, n, step)] + [1.0]
            ax.plot(xs, ys, label=target)
        ax.set_xscale("log")
        ax.set_xlabel(kind if "ms" in kind else f"{kind} (ms)")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title(f"{scenario}: {config}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = directory / _file_name(f"cdf-{scenario}-{config}-{kind}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    # The headline figure per configuration: bars per target.
    by_scenario: dict[str, list[RunRecord]] = {}
    for r in records:
        by_scenario.setdefault(r.scenario, []).append(r)
    for scenario, recs in by_scenario.items():
        key, header = HEADLINE[scenario]
        groups = _groups(recs)
        configs = list(dict.fromkeys(c for _, c, _ in groups))
        targets = list(dict.fromkeys(t for _, _, t in groups))
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(configs) * len(targets)), 4.5))
        width = 0.8 / max(1, len(targets))
        for ti, target in enumerate(targets):
            medians, lows, highs = [], [], []
            for config in configs:
                values = [
                    r.outcome.metrics.get(key, math.nan)
                    for r in groups.get((scenario, config, target), [])
                    if r.outcome is not None
                ]
                values = [v for v in values if not math.isnan(v)]
                med = statistics.median(values) if values else 0.0
                medians.append(med)
                lows.append(med - min(values) if values else 0.0)
                highs.append(max(values) - med if values else 0.0)
            xs = [i + ti * width for i in range(len(configs))]
            ax.bar(xs, medians, width, yerr=[lows, highs], capsize=3, label=target)
        ax.set_xticks([i + width * (len(targets) - 1) / 2 for i in range(len(configs))])
        ax.set_xticklabels(configs, rotation=15)
        ax.set_ylabel(header)
        ax.set_title(f"{scenario}: {header} per configuration (median, min-max)")
        ax.legend()
        path = directory / _file_name(f"throughput-{scenario}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _file_name(text: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe.strip("_")[:120] + ".png"
