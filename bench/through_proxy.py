"""``python -m bench.through_proxy``: the live scenario through HAProxy with 1, 2, ... backends.

    python -m bench.through_proxy [--workers 1,2] [--channels 40] [--duration 8] [--direct]

For each worker count N it starts ``trickle-trio cluster --workers N`` (HAProxy in front of
N ``trickle-trio serve`` processes, see ``deploy/``), then runs ``python -m bench live``
against it twice: ``--find-max`` for the capacity (the most channels with p99 under
100 ms and nothing lost), and one run at a fixed ``--channels`` for the CPU split. The
runner only sees the process listening on the URL (HAProxy), so this script reads the
CPU time of HAProxy (user and system apart) and of every backend (psutil) around
that run. ``--direct`` adds the same two runs against one plain ``trickle-trio serve``.
Prints a Markdown table; the runs' JSON stays in ``--keep DIR`` when given.

Needs HAProxy (``apt-get install haproxy``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from trickle_trio.client.cli import HelpFormatter
from trickle_trio.ops.processes import free_port


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (0, 0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return times.user, times.system


@dataclass
class Row:
    setup: str
    max_channels: int | None = None
    p99_at_max: float | None = None
    generator_limited: bool = False
    p50: float | None = None
    p99: float | None = None
    proxy_user: float = 0.0  # CPU ms per channel-second
    proxy_sys: float = 0.0
    backends: float = 0.0
    other: float | None = None  # cores


class Steps:
    """``[2/6 12s] proxy+1: find-max ...`` lines on stderr, one per step."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{self.done}/{self.total} {elapsed:.0f}s] {text}", file=sys.stderr, flush=True)


def run_bench(
    url: str, label: str, extra: list[str], out: Path, *, quiet: bool = False
) -> dict[str, Any]:
    """``python -m bench live`` against ``url``; its JSON. Its progress shows on stderr."""
    command = [sys.executable, "-m", "bench", "live", "--url", f"{label}={url}"]
    if quiet:
        command.append("--quiet")
    subprocess.run([*command, "--json", str(out), *extra], check=False, stdout=subprocess.DEVNULL)
    if not out.exists():
        raise SystemExit(f"bench: python -m bench live wrote no results for {label}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def start_cluster(workers: int, run_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    port = free_port()
    command = [sys.executable, "-m", "trickle_trio", "cluster", "--workers", str(workers)]
    command += ["--port", str(port), "--run-dir", str(run_dir), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = run_dir / "cluster.json"
    deadline = time.monotonic() + 60
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"cluster with {workers} workers did not start; see {run_dir}")
        time.sleep(0.1)
    state: dict[str, Any] = json.loads(state_file.read_text())
    state["port"] = port
    return process, state


def measure(
    setup: str,
    url: str,
    pids: tuple[int | None, list[int]],
    args: argparse.Namespace,
    keep: Path,
    steps: Steps,
) -> Row:
    row = Row(setup)
    timing = ["--duration", str(args.duration)]
    steps.step(f"{setup}: find-max (the most channels with p99 < 100 ms)")
    found = run_bench(
        url, setup, ["--find-max", *timing], keep / f"{setup}-max.json", quiet=args.quiet
    )
    search = found["find_max"][0]
    row.max_channels = search["max_channels"]
    row.p99_at_max = search["p99_ms_at_max"]
    row.generator_limited = bool(search["limited_by_generator"])

    proxy, backends = pids
    before = [cpu_seconds(pid) for pid in [proxy or 0, *backends]]
    fixed = ["--channels", str(args.channels), *timing]
    steps.step(f"{setup}: {args.channels} channels, for the CPU split")
    result = run_bench(url, setup, fixed, keep / f"{setup}-fixed.json", quiet=args.quiet)
    after = [cpu_seconds(pid) for pid in [proxy or 0, *backends]]
    run = result["runs"][0]
    row.p50, row.p99 = run["metrics"]["p50_ms"], run["metrics"]["p99_ms"]
    row.other = run["usage"]["other_busy"]
    per = 1000 / (args.channels * args.duration)  # CPU s -> ms per channel-second
    if proxy is None:  # plain serve: the runner measured it as "server"
        row.backends = run["usage"]["server"]["cpu_s"] * per
    else:
        row.proxy_user = (after[0][0] - before[0][0]) * per
        row.proxy_sys = (after[0][1] - before[0][1]) * per
        used = sum(sum(a) - sum(b) for a, b in zip(after[1:], before[1:], strict=True))
        row.backends = used * per
        # The runner counts the backends as "other": take them out again.
        row.other = max(0.0, row.other - used / run["usage"]["wall_s"])
    return row


def table(rows: list[Row], args: argparse.Namespace) -> str:
    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"live, 2 Mbit/s per channel, 1 subscriber, {args.duration:g} s runs; CPU at "
        f"{args.channels} channels, in ms of CPU per channel-second",
        "",
        "| setup | max channels (p99 < 100 ms) | p99 at max | p50 / p99 ms at "
        f"{args.channels} ch | HAProxy user + sys | backends | other load (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " (generator-bound)" if row.generator_limited else ""
        proxy = "-" if row.setup == "direct" else f"{row.proxy_user:.1f} + {row.proxy_sys:.1f}"
        lines.append(
            f"| {row.setup} | {row.max_channels}{mark} | {num(row.p99_at_max)} | "
            f"{num(row.p50)} / {num(row.p99)} | {proxy} | {num(row.backends)} | "
            f"{num(row.other, 2)} |"
        )
    return "\n".join(lines)


DESCRIPTION = """\
Run the live scenario through HAProxy with 1, 2, ... backends, to see what a proxy costs
and how capacity grows with backends on one machine. For each backend count N it starts
trickle-trio cluster --workers N (HAProxy in front of N trickle-trio serve processes),
then runs python -m bench live against it twice: --find-max for the capacity (the most
channels with p99 under 100 ms and nothing lost), and one run at a fixed --channels for
the CPU split between HAProxy (user and system) and the backends. --direct adds the same
two runs against one plain trickle-trio serve. Prints a Markdown table; progress goes to
stderr. Needs HAProxy (apt-get install haproxy).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.through_proxy",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--workers", default="1,2", metavar="N[,N...]", help="backend counts, comma list"
    )
    parser.add_argument("--channels", type=int, default=40, help="channels of the CPU run")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--direct", action="store_true", help="also one plain serve process")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs' JSON and cluster logs here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error(f"argument --workers: not a comma list of numbers: {args.workers!r}")
    if not counts or min(counts) < 1 or args.channels < 1 or args.duration <= 0:
        parser.error("--workers, --channels and --duration must be > 0")
    keep = Path(args.keep or tempfile.mkdtemp(prefix="bench-proxy-"))
    keep.mkdir(parents=True, exist_ok=True)
    steps = Steps(2 * (len(counts) + bool(args.direct)), args.quiet)
    rows = []
    if args.direct:
        rows.append(measure("direct", "trickle-trio", (None, []), args, keep, steps))
    for workers in counts:
        process, state = start_cluster(workers, keep / f"cluster-{workers}")
        try:
            url = f"http://127.0.0.1:{state['port']}/"
            pids = (state["proxy_pid"], [shard["pid"] for shard in state["shards"]])
            rows.append(measure(f"proxy+{workers}", url, pids, args, keep, steps))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
    print(table(rows, args))
    print(f"bench: the runs' JSON is in {keep}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
