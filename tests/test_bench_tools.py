"""The bench as a tool for sizing a deployment: units that say what they mean, usage
errors instead of tracebacks, noisy find-max probes flagged and repeated, tables and
plots by load with a ratio against the reference, the reference server started by the
bench itself, and ``python -m bench`` from an installed wheel.

The runs here are tiny smoke runs of the tooling; no figure is asserted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.cli import build_parser, configs_for
from bench.procstat import Usage
from bench.runner import Progress, Runner, RunRecord
from bench.scenarios.common import Outcome, format_size, parse_size
from bench.scenarios.join import JoinConfig
from bench.scenarios.live import LiveConfig
from bench.scenarios.stream import StreamConfig, summarize
from bench.servers import Target, resolve_reference

REPO = Path(__file__).resolve().parent.parent
REFERENCE = resolve_reference(None)


def test_sizes_say_which_unit() -> None:
    assert parse_size("200") == 200
    assert parse_size("64KiB") == 65536
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1.5 kB") == 1500
    for ambiguous in ("1M", "64k", "2G", "10 megs"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(ambiguous)
    assert (format_size(1 << 20), format_size(1_000_000), format_size(256 << 10)) == (
        "1MiB",
        "1MB",
        "256KiB",
    )
    args = build_parser().parse_args(["fanout", "--config", "10x1MB", "--config", "2x1MiB"])
    labels = [config.label for config in configs_for("fanout", args)]
    assert labels == ["1->10 x 1MB", "1->2 x 1MiB"]


@pytest.mark.parametrize("scenario", ["live", "join"])
def test_live_and_join_take_the_same_pacing_flags(scenario: str) -> None:
    argv = [scenario, "--bitrate", "4M", "--segment-seconds", "0.5", "--interval-ms", "10"]
    args = build_parser().parse_args([*argv, "--duration", "3"])
    (config,) = configs_for(scenario, args)
    live = config if scenario == "live" else config.live
    assert (live.bitrate, live.segment_s, live.interval, live.duration) == (4e6, 0.5, 0.01, 3.0)
    assert live.chunk_bytes == 5000
    assert live.chunks_per_segment == 50


def test_a_run_whose_subscribers_never_finished_has_no_rate() -> None:
    config = StreamConfig("small", 1, 3, 200, 200, 3, "application/json")
    publisher = {"t_start": 100.0, "digests": [1, 2, 3], "waits": 0, "errors": []}
    stuck = {
        "digests": [1, None],
        "sizes": [200, 0],
        "latencies_ms": [1.0],
        "t_end": None,
        "errors": ["GET 1: status 470"],
    }
    outcome = summarize(config, [publisher, {"subscribers": [stuck]}])
    assert math.isnan(outcome.metrics["segments_s"])
    assert math.isnan(outcome.metrics["mb_s"])
    assert outcome.checks["lost"] == 2
    finished = stuck | {"digests": [1, 2, 3], "sizes": [200] * 3, "t_end": 102.0}
    outcome = summarize(config, [publisher, {"subscribers": [finished]}])
    assert outcome.metrics["segments_s"] == pytest.approx(1.5)


def test_join_refuses_a_pacing_that_cannot_run() -> None:
    with pytest.raises(ValueError, match="interval"):
        JoinConfig(segment_s=0).validate()
    with pytest.raises(ValueError, match="interval"):
        LiveConfig(channels=1, interval=0).validate()


@pytest.mark.parametrize(
    "argv",
    [
        ["live", "--channels", "abc"],
        ["live", "--channels", "0"],
        ["fanout", "--config", "10x1M"],
        ["fanout", "--config", "ten"],
        ["live", "--bitrate", "fast"],
        ["small", "--url", "ftp://x"],
        ["join", "--duration", "0"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("python -m bench ")


# -- noisy probes -------------------------------------------------------------------------


def record(channels: int, p99: float, *, noisy: bool, target: str = "trickle-trio") -> RunRecord:
    outcome = Outcome({"p99_ms": p99, "p50_ms": p99 / 2}, {"lost": 0})
    usage = Usage(wall_s=10.0, machine_busy=1.5 if noisy else 0.05, cores=2)
    run = RunRecord("live", f"{channels} ch", target, 0, {"channels": channels}, outcome, usage)
    run.noisy = noisy
    return run


async def test_find_max_repeats_noisy_probes_and_says_so() -> None:
    runner = Runner([Target.parse("trickle-trio")], progress=Progress(False))
    noisy_left = {100: 1, 200: 5}  # 100: noisy once, then quiet; 200: noisy every time
    calls: list[int] = []

    async def measure(scenario: str, config: Any, target: Target, rep: int, reps: int) -> Any:
        channels = config.channels
        calls.append(channels)
        noisy = noisy_left.get(channels, 0) > 0
        if noisy:
            noisy_left[channels] -= 1
        run = record(channels, 50.0 if channels <= 200 else 500.0, noisy=noisy)
        runner.records.append(run)
        return run

    runner.measure = measure  # type: ignore[method-assign]

    class Config:
        def __init__(self, channels: int) -> None:
            self.channels = channels
            self.label = f"{channels} ch"

    (result,) = await runner.find_max(
        Config, start=100, limit=400, bound_ms=100.0, reps=1, noisy_retries=2
    )
    assert calls[:5] == [100, 100, 200, 200, 200]  # each noisy run again, at most twice
    probes = {p["channels"]: p for p in result["probes"]}
    assert probes[100]["noisy"] is False  # the repeat was quiet: it counts
    assert probes[200]["noisy"] is True  # still noisy after two repeats: flagged
    assert result["noisy_probes"] == 1
    assert [r.counted for r in runner.records[:2]] == [False, True]
    table = report.markdown(runner.records, [result])
    assert "200✓~" in table
    assert "NOISY" in table


def test_tables_go_by_load_with_a_ratio_against_the_reference() -> None:
    records = [
        record(200, 40.0, noisy=False),
        record(100, 10.0, noisy=False),
        record(200, 20.0, noisy=False, target="reference"),
        record(100, 5.0, noisy=False, target="reference"),
    ]
    table = report.markdown(records).splitlines()
    rows = [line for line in table if line.startswith("| 1") or line.startswith("| 2")]
    assert [row.split(" | ")[0] for row in rows] == ["| 100 ch"] * 2 + ["| 200 ch"] * 2
    header = next(line for line in table if line.startswith("| config"))
    ratio = header.split(" | ").index("vs reference")
    ours = [row.split(" | ")[ratio] for row in rows if "trickle-trio" in row]
    assert ours == ["2.00", "2.00"]  # p99 twice the reference's
    finds = [
        {"target": "trickle-trio", "max_channels": 150, "probes": [], "bound_ms": 100},
        {"target": "reference", "max_channels": 600, "probes": [], "bound_ms": 100},
    ]
    for find in finds:
        find |= {"p99_ms_at_max": 1.0, "first_failing": None, "limited_by_generator": False}
        find |= {"failure_generator_bound": False}
    line = next(x for x in report.markdown([], finds).splitlines() if "| trickle-trio" in x)
    assert " | 0.25 | " in line


def test_find_max_plot_by_load_with_the_bound(tmp_path: Path) -> None:
    result = {
        "target": "trickle-trio",
        "max_channels": 150,
        "bound_ms": 100.0,
        "probes": [
            {"channels": 200, "passed": False, "noisy": False, "p99_ms": [300.0]},
            {"channels": 50, "passed": True, "noisy": True, "p99_ms": [2.0, 4.0]},
            {"channels": 150, "passed": True, "noisy": False, "p99_ms": [60.0]},
        ],
    }
    assert report.find_max_points(result) == [
        (50, 3.0, True, True),
        (150, 60.0, True, False),
        (200, 300.0, False, False),
    ]
    pytest.importorskip("matplotlib", reason="the [bench] extra (in [dev]) installs it")
    (path,) = report.plot([], tmp_path, [result])
    assert path.name == "find-max.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the reference, and an installed bench --------------------------------------------------


def test_a_missing_reference_is_skipped_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "small", "--url", "reference"),
            *("--reference", str(tmp_path / "nope"), "--quiet"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stderr == (
        f"bench: skipping the reference: {tmp_path / 'nope'} does not exist "
        "(give --reference PATH)\n"
    )


@pytest.mark.skipif(REFERENCE.problem is not None, reason=f"{REFERENCE.problem}")
def test_against_the_reference_started_by_the_bench() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = ["small", "--segments", "40", "--workers", "1", "--quiet"]
    argv += ["--url", "trickle-trio", "--url", "reference", "--json", "-"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert {run["target"] for run in data["runs"]} == {"trickle-trio", "reference"}
    assert all(run["clean"] for run in data["runs"])
    assert data["environment"]["reference"]["sha256"] == REFERENCE.sha256


def test_python_m_bench_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ in the source tree, and a stale one
    # would put deleted modules in later wheels.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("trickle_trio-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "bench/__main__.py" in names
    assert "bench/scenarios/live.py" in names
    # The watch page and its vendored player, with the player's licences.
    for page_file in ("index.html", "watch.js", "watch.css", "vendor/mpegts.js",
                      "vendor/LICENSE.mpegts.js", "vendor/mpegts.js.LICENSE.txt"):  # fmt: skip
        assert f"trickle_trio/http/watch/{page_file}" in names
    metadata = next(n for n in names if n.endswith("METADATA"))
    assert "Provides-Extra: bench" in (site / metadata).read_text()
    # The bench's process figures come from psutil, installed with the extra.
    assert 'Requires-Dist: psutil>=5.9; extra == "bench"' in (site / metadata).read_text()
    # From elsewhere, with only the wheel's files on the path: no checkout involved.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m bench" in proc.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import bench; print(bench.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site))
