"""Results out: a Markdown table (stdout), JSON (``--json``), PNG plots (``--plot``).

Repetitions of one (scenario, configuration, target) are folded into the median with
the min-max range. Server CPU is in cores (1.00 = one core busy for the whole run);
peak RSS is the server's high-water mark during the run. When a target is labelled
``reference``, every other target's rows get a ``vs reference`` column: its headline
figure over the reference's in the same run. Rows and bars go by load, lightest first.
A noisy run (other load over the threshold) is marked; a repeated one is left out.

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
from .servers import REFERENCE_LABEL, Reference

#: The figure each scenario's bar chart shows.
HEADLINE = {
    "fanout": ("mb_s", "delivered MB/s"),
    "small": ("segments_s", "segments/s"),
    "live": ("p99_ms", "p99 latency (ms)"),
    "join": ("cur_p99_ms", "GET -2 time to first byte, p99 (ms)"),
}
_PACKAGES = ("trickle-trio", "trio", "hypercorn", "h11", "quart", "quart-trio")


def environment(reference: Reference | None = None) -> dict[str, Any]:
    """Date, versions and machine (and the reference's build), for the JSON and tables."""
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
        "reference": None
        if reference is None
        else {
            "path": str(reference.path),
            "sha256": reference.sha256,
            "go_livepeer_commit": reference.commit,
        },
    }


def header(env: dict[str, Any]) -> str:
    """The comment line above the tables: when, where, which versions."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    ref = env.get("reference")
    reference = ""
    if ref:
        build = f"go-livepeer {ref['go_livepeer_commit'][:10]}" if ref["go_livepeer_commit"] else ""
        reference = f"; reference goref-server {build} sha256 {str(ref['sha256'])[:12]}"
    return (
        f"<!-- {env['date']}, {env['cores']} cores ({env['cpu']}), Python {env['python']}, "
        f"{versions}, commit {env['commit']}{reference} -->"
    )


def load(record: RunRecord) -> float:
    """How heavy a configuration is, to sort rows and bars by."""
    p = record.params
    if record.scenario == "fanout":
        return float(p.get("subscribers", 0) * p.get("segment_bytes", 0))
    if record.scenario == "live":
        return float(p.get("channels", 0) * p.get("subscribers", 1) * p.get("bitrate", 1))
    if record.scenario == "join":
        return float(p.get("background", 0) + p.get("concurrency", 0))
    return float(p.get("subscribers", 0) * p.get("segment_bytes", 0))


def _fold(values: list[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return mid if low == high else f"{mid} ({low}-{high})"


def _by_scenario(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """The records of each scenario, in the order they ran."""
    out: dict[str, list[RunRecord]] = {}
    for record in records:
        out.setdefault(record.scenario, []).append(record)
    return out


def _groups(records: Iterable[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    """Counted runs per (scenario, config, target), lightest load first."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in sorted((r for r in records if r.counted), key=load):
        groups.setdefault((record.scenario, record.config, record.target), []).append(record)
    return groups


def _headline(group: list[RunRecord], scenario: str) -> float:
    key, _ = HEADLINE[scenario]
    values = [r.outcome.metrics.get(key, math.nan) for r in group if r.outcome is not None]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


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
                "noisy_reps": sum(1 for r in group if r.noisy),
                "metrics": metrics,
            }
        )
    return out


def markdown(records: list[RunRecord], find_max: list[dict[str, Any]] | None = None) -> str:
    """One table per scenario, plus the find-max table and footnotes."""
    lines: list[str] = []
    notes: list[str] = []
    for scenario, recs in _by_scenario(records).items():
        _, columns = SCENARIOS[scenario]
        groups = _groups(recs)
        has_reference = any(t == REFERENCE_LABEL for _, _, t in groups)
        header = ["config", "server", *(h for _, h, _ in columns)]
        if has_reference:
            header.append("vs reference")
        header += ["checks", "server CPU", "server peak MiB", "generator CPU", "other CPU"]
        lines.append(f"### {scenario}\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for (_, config, target), group in groups.items():
            good = [r for r in group if r.outcome is not None and r.usage is not None]
            row = [config, target]
            for key, _, fmt in columns:
                row.append(
                    _fold([r.outcome.metrics.get(key, math.nan) for r in good if r.outcome], fmt)
                )
            if has_reference:
                row.append(_ratio(group, groups.get((scenario, config, REFERENCE_LABEL)), target))
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
            other = _fold([u.other_busy for u in gens], "{:.2f}")
            noisy = sum(1 for r in group if r.noisy)
            if noisy:
                other += f" NOISY {noisy}/{len(group)}"
                notes.append(
                    f"{scenario} {config} on {target}: {noisy} of {len(group)} runs noisy "
                    "(other load took CPU): the figures understate the server"
                )
            row.append(other)
            lines.append("| " + " | ".join(row) + " |")
            for r in group:
                if r.error:
                    notes.append(f"{scenario} {config} on {target} rep {r.rep + 1}: {r.error}")
                elif r.outcome is not None:
                    notes.extend(
                        f"{scenario} {config} on {target} rep {r.rep + 1}: {n}"
                        for n in r.outcome.notes
                    )
        if has_reference:
            key, name = HEADLINE[scenario]
            lines.append(
                f"\n`vs reference`: {name} over the reference's, same run"
                + (" (> 1 is better)" if key in ("mb_s", "segments_s") else " (< 1 is better)")
            )
        lines.append("")
    if find_max:
        by_label = {r["target"]: r for r in find_max}
        reference = by_label.get(REFERENCE_LABEL)
        lines.append("### live --find-max\n")
        lines.append(
            "| server | max channels | vs reference | p99 at max (ms) | first failing "
            "| noisy probes | probes |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for result in find_max:
            probes = ", ".join(
                f"{p['channels']}{'✓' if p['passed'] else '✗'}{'~' if p.get('noisy') else ''}"
                for p in result["probes"]
            )
            ratio = "-"
            if reference is not None and result is not reference and reference["max_channels"]:
                ratio = f"{result['max_channels'] / reference['max_channels']:.2f}"
            p99 = result["p99_ms_at_max"]
            bound = result["limited_by_generator"] or result["failure_generator_bound"]
            max_c = str(result["max_channels"]) + (
                " (lower bound: generator-bound)" if bound else ""
            )
            lines.append(
                f"| {result['target']} | {max_c} | {ratio} | "
                f"{'-' if p99 is None else f'{p99:.1f}'} | "
                f"{result['first_failing'] or '-'} | {result.get('noisy_probes', 0)} | {probes} |"
            )
        lines.append("\n✓ passed, ✗ failed, ~ noisy (other load took CPU even after repeats)")
        lines.append("")
    if notes:
        lines.append("Notes:\n")
        lines.extend(f"{i}. {note}" for i, note in enumerate(notes, 1))
        lines.append("")
    return "\n".join(lines)


def _ratio(group: list[RunRecord], reference: list[RunRecord] | None, target: str) -> str:
    if target == REFERENCE_LABEL or not reference:
        return "-"
    ours, theirs = _headline(group, group[0].scenario), _headline(reference, group[0].scenario)
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}"


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
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "environment": env if env is not None else environment(),
        "args": args,
        "summary": summary(records),
        "find_max": find_max,
        "runs": [r.to_json() for r in records],
    }


def find_max_points(result: dict[str, Any]) -> list[tuple[int, float, bool, bool]]:
    """A find-max search's probes as (channels, median p99 ms, passed, noisy), by load."""
    points = []
    for probe in result["probes"]:
        values = [v for v in probe["p99_ms"] if v is not None and not math.isnan(v)]
        p99 = statistics.median(values) if values else math.nan
        points.append((probe["channels"], p99, bool(probe["passed"]), bool(probe.get("noisy"))))
    return sorted(points)


def plot(
    records: list[RunRecord], directory: Path, find_max: list[dict[str, Any]] | None = None
) -> list[Path]:
    """Latency CDFs, the headline figure per configuration (lightest load first) and the
    find-max probes (p99 against channels, the bound drawn, pass/fail marked) as PNGs;
    [] without matplotlib."""
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
        if r.outcome is None or not r.counted:
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
    for scenario, recs in _by_scenario(records).items():
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
        ax.set_xlabel("configuration (lightest load first)")
        ax.set_xticklabels(configs, rotation=15)
        ax.set_ylabel(header)
        ax.set_title(f"{scenario}: {header} per configuration (median, min-max)")
        ax.legend()
        path = directory / _file_name(f"throughput-{scenario}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    if find_max:
        written.append(_plot_find_max(plt, find_max, directory))
    return written


def _plot_find_max(plt: Any, find_max: list[dict[str, Any]], directory: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bound = find_max[0]["bound_ms"]
    for result in find_max:
        points = find_max_points(result)
        (line,) = ax.plot(
            [p[0] for p in points], [p[1] for p in points], "-", alpha=0.5, label=result["target"]
        )
        for channels, p99, passed, noisy in points:
            ax.plot(
                channels,
                p99,
                "o" if passed else "x",
                color=line.get_color(),
                markersize=8,
                markerfacecolor="none" if noisy else line.get_color(),
            )
        if result["max_channels"]:
            ax.axvline(result["max_channels"], color=line.get_color(), linestyle=":")
    ax.axhline(bound, color="red", linestyle="--", label=f"bound {bound:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("live channels (probes by load; ':' = the max found)")
    ax.set_ylabel("p99 latency (ms), median of reps")
    ax.set_title("live --find-max: o passed, x failed, hollow = noisy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = directory / "find-max.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _file_name(text: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe.strip("_")[:120] + ".png"
