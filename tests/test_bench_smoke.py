"""Smoke tests of the benchmark runner (``python -m bench``): each scenario at a tiny
size, in a subprocess, against a server the runner starts itself.

They check only that a run completes, every correctness check is clean and the JSON
has the expected shape. No timing assertions: CI machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 90

SMALL_SIZES = {
    "fanout": ["--config", "2x64KiB", "--segments", "6", "--chunk", "16KiB"],
    "small": ["--segments", "60"],
    "live": ["--channels", "2", "--duration", "1.5", "--segment-seconds", "0.3"],
    "join": ["--duration", "2", "--segment-seconds", "0.3", "--background", "2"],
}


def run_bench(*args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--workers", "1", "--quiet", "--json", "-"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    # 3: every check clean, but other load on the machine made some runs noisy.
    assert proc.returncode in (0, 3), (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def check_runs(data: dict[str, Any], scenario: str, targets: set[str]) -> None:
    assert {"environment", "args", "summary", "runs"} <= data.keys()
    assert data["environment"]["cores"] >= 1
    runs = data["runs"]
    assert {run["target"] for run in runs} == targets
    for run in runs:
        assert run["scenario"] == scenario
        assert run["error"] is None, run["error"]
        assert run["clean"], run["checks"]
        assert run["metrics"], run
        assert run["usage"]["wall_s"] > 0
        assert run["usage"]["server"]["cpu_s"] >= 0
    for row in data["summary"]:
        assert row["reps"] >= 1
        assert row["failed_reps"] == 0


@pytest.mark.parametrize("scenario", sorted(SMALL_SIZES))
def test_scenario_runs(scenario: str) -> None:
    data = run_bench(scenario, *SMALL_SIZES[scenario])
    check_runs(data, scenario, {"trickle-trio"})
    metrics = data["runs"][0]["metrics"]
    if scenario == "fanout":
        assert metrics["mb_s"] > 0
    elif scenario == "live":
        assert metrics["chunks_written"] > 0
    elif scenario == "join":
        assert metrics["joins"] > 0


def test_compare_with_baseline_and_reps() -> None:
    data = run_bench(
        "fanout",
        *SMALL_SIZES["fanout"],
        "--url",
        "trickle-trio",
        "--url",
        "baseline",
        "--reps",
        "2",
    )
    check_runs(data, "fanout", {"trickle-trio", "baseline"})
    assert len(data["runs"]) == 4
    assert all(row["reps"] == 2 for row in data["summary"])


def test_find_max() -> None:
    data = run_bench(
        "live",
        "--find-max",
        "--start",
        "1",
        "--max-channels",
        "2",
        "--duration",
        "1",
        "--segment-seconds",
        "0.3",
        "--bound-ms",
        "10000",
    )
    (result,) = data["find_max"]
    assert result["max_channels"] == 2
    assert [p["channels"] for p in result["probes"]] == [1, 2]


def test_live_spreads_segment_boundaries_unless_aligned() -> None:
    from bench.scenarios.live import LiveConfig, first_segment_chunks

    spread = LiveConfig(channels=200)
    firsts = [first_segment_chunks(spread, c) for c in range(200)]
    assert all(f is not None and 1 <= f <= spread.chunks_per_segment for f in firsts)
    assert len(set(firsts)) > spread.chunks_per_segment // 2  # spread, not one phase
    assert firsts == [first_segment_chunks(spread, c) for c in range(200)]  # repeatable
    aligned = LiveConfig(channels=200, aligned_segments=True)
    assert {first_segment_chunks(aligned, c) for c in range(200)} == {None}
