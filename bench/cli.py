"""``python -m bench``: the command line.

    python -m bench fanout [--config 10x1MiB --config 50x256KiB] [--segments 100] [--chunk 64KiB]
    python -m bench live   [--channels 100] [--subscribers 1] [--bitrate 2M] [--duration 10]
                           [--find-max [--bound-ms 100]]
    python -m bench small  [--segments 5000] [--size 200]
    python -m bench join   [--background 10] [--concurrency 16] [--duration 10]
    python -m bench all    (each of the above with its defaults)

Common options: ``--url`` (repeatable: ``trickle-trio``, ``baseline``, ``[label=]http://..``;
default ``trickle-trio``), ``--reps``, ``--workers``, ``--json``, ``--plot``, ``--quiet``.
Exit status: 0 when every run completed with every check clean, 1 otherwise, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import report
from .runner import Progress, Runner, RunRecord
from .scenarios.common import parse_rate, parse_size
from .scenarios.join import JoinConfig
from .scenarios.live import LiveConfig
from .scenarios.stream import StreamConfig
from .servers import Target

SCENARIO_NAMES = ("fanout", "live", "small", "join")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--url",
        action="append",
        metavar="SPEC",
        help="server to measure, repeatable: 'trickle-trio' (default; started here), "
        "'baseline' (the bare relay, started here) or '[label=]http://host:port/base/' "
        "(an already running server with autocreate on)",
    )
    group.add_argument("--reps", type=int, default=1, help="repetitions (median, min-max)")
    group.add_argument(
        "--workers",
        type=int,
        default=2,
        help="load-generator worker processes (plus one for a fan-out publisher; default 2)",
    )
    group.add_argument("--json", metavar="PATH", help="write results as JSON ('-' = stdout)")
    group.add_argument("--plot", metavar="DIR", help="write PNG plots there (needs matplotlib)")
    group.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    group.add_argument("--server-logs", metavar="DIR", help="keep started servers' logs there")
    group.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other processes to go quiet "
        "(< 0.25 busy cores): useful on a shared machine (default 0: don't wait)",
    )
    group.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="niceness of the servers started here and of the load generator, e.g. -10 "
        "to favour them over other jobs on a shared machine (negative needs root)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks for trickle servers."
    )
    sub = parser.add_subparsers(dest="scenario", required=True)

    fanout = sub.add_parser("fanout", help="1 publisher -> N subscribers, as fast as possible")
    fanout.add_argument(
        "--config",
        action="append",
        metavar="NxSIZE",
        help="subscribers x segment size, repeatable (default: 10x1MiB and 50x256KiB)",
    )
    fanout.add_argument("--segments", type=int, default=100, help="segments per run (100)")
    fanout.add_argument("--chunk", default="64KiB", help="publisher write size (64KiB)")
    fanout.add_argument("--ahead", type=int, default=3, help="max segments ahead of the slowest")
    _common(fanout)

    live = sub.add_parser("live", help="C paced channels; per-chunk latency")
    live.add_argument(
        "--channels", default="100", help="channel count(s), comma-separated (default 100)"
    )
    live.add_argument("--subscribers", type=int, default=1, help="subscribers per channel (1)")
    live.add_argument("--bitrate", default="2M", help="bit/s per channel (2M)")
    live.add_argument("--segment-seconds", type=float, default=1.0, help="segment length (1.0)")
    live.add_argument("--interval-ms", type=float, default=20.0, help="write interval (20)")
    live.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    live.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds at the start whose chunks count for delivery but not latency (1)",
    )
    live.add_argument(
        "--aligned-segments",
        action="store_true",
        help="every channel starts its segments at the same instant (worst case); "
        "default: boundaries spread over one segment, as independent streams",
    )
    live.add_argument(
        "--find-max",
        action="store_true",
        help="search the largest channel count with p99 < --bound-ms and nothing lost",
    )
    live.add_argument("--bound-ms", type=float, default=100.0, help="p99 bound (100)")
    live.add_argument("--start", type=int, default=50, help="first channel count probed (50)")
    live.add_argument("--max-channels", type=int, default=1000, help="search limit (1000)")
    _common(live)

    small = sub.add_parser("small", help="tiny JSON segments back to back")
    small.add_argument("--segments", type=int, default=5000, help="segments per run (5000)")
    small.add_argument("--size", default="200", help="segment size in bytes (200)")
    small.add_argument("--subscribers", type=int, default=1, help="subscribers (1)")
    small.add_argument("--ahead", type=int, default=3, help="max segments ahead of subscriber")
    _common(small)

    join = sub.add_parser("join", help="time to first byte of new subscribers (-2 / -1)")
    join.add_argument("--background", type=int, default=10, help="subscribers already there")
    join.add_argument("--concurrency", type=int, default=16, help="joiner tasks (16)")
    join.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    join.add_argument("--bitrate", default="2M", help="the channel's bit/s (2M)")
    join.add_argument("--segment-seconds", type=float, default=1.0, help="segment length (1.0)")
    join.add_argument("--interval-ms", type=float, default=20.0, help="write interval (20)")
    _common(join)

    everything = sub.add_parser("all", help="every scenario with its defaults")
    _common(everything)
    return parser


def configs_for(scenario: str, args: argparse.Namespace) -> list[Any]:
    """The configurations ``args`` asks for (``--find-max`` aside)."""
    configs: list[Any]
    if scenario == "fanout":
        chunk = parse_size(args.chunk)
        configs = []
        for spec in args.config or ["10x1MiB", "50x256KiB"]:
            count, _, size = spec.lower().partition("x")
            configs.append(
                StreamConfig(
                    "fanout", int(count), args.segments, parse_size(size), chunk, args.ahead
                )
            )
    elif scenario == "small":
        size = parse_size(args.size)
        configs = [
            StreamConfig(
                "small",
                args.subscribers,
                args.segments,
                size,
                max(size, 1),
                args.ahead,
                "application/json",
            )
        ]
    elif scenario == "live":
        configs = [_live(args, int(c)) for c in str(args.channels).split(",") if c.strip()]
    else:
        configs = [
            JoinConfig(
                background=args.background,
                concurrency=args.concurrency,
                duration=args.duration,
                bitrate=parse_rate(args.bitrate),
                segment_s=args.segment_seconds,
                interval=args.interval_ms / 1000,
            )
        ]
    for config in configs:
        config.validate()
    return configs


def _live(args: argparse.Namespace, channels: int) -> LiveConfig:
    return LiveConfig(
        channels=channels,
        subscribers=args.subscribers,
        bitrate=parse_rate(args.bitrate),
        segment_s=args.segment_seconds,
        interval=args.interval_ms / 1000,
        duration=args.duration,
        warmup=args.warmup,
        aligned_segments=getattr(args, "aligned_segments", False),
    )


async def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run what ``args`` asks for; SIGTERM/SIGINT stop it cleanly (servers, workers)."""
    outcome: list[int] = []
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    print(f"bench: {signal.Signals(signum).name}, stopping", file=sys.stderr)
                    outcome.append(128 + signum)
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            outcome.append(await _run(args, parser))
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        nursery.start_soon(main)
    return outcome[0] if outcome else 1


async def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    targets = [Target.parse(spec) for spec in args.url or ["trickle-trio"]]
    if len({t.label for t in targets}) != len(targets):
        parser.error("two --url targets have the same label; name them: --url NAME=SPEC")
    plans: list[tuple[str, argparse.Namespace]] = []
    if args.scenario == "all":
        for name in SCENARIO_NAMES:
            plans.append((name, parser.parse_args([name])))
    else:
        plans.append((args.scenario, args))
    work = [
        (name, scenario_args, configs_for(name, scenario_args)) for name, scenario_args in plans
    ]
    find_max: list[dict[str, Any]] | None = None
    logs = Path(args.server_logs) if args.server_logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    with Runner(
        targets,
        workers=args.workers,
        progress=Progress(not args.quiet),
        server_logs=logs,
        wait_idle=args.wait_idle,
        priority=args.priority,
    ) as runner:
        for name, scenario_args, configs in work:
            if name == "live" and getattr(scenario_args, "find_max", False):
                find_max = await runner.find_max(
                    partial(_live, scenario_args),
                    start=scenario_args.start,
                    limit=scenario_args.max_channels,
                    bound_ms=scenario_args.bound_ms,
                    reps=args.reps,
                )
            else:
                await runner.run_all(name, configs, args.reps)
        records = runner.records
    _output(args, records, find_max)
    ok = all(r.outcome is not None and r.outcome.clean for r in records)
    return 0 if ok else 1


def _output(
    args: argparse.Namespace, records: list[RunRecord], find_max: list[dict[str, Any]] | None
) -> None:
    if args.json:
        data = report.to_json(records, _jsonable(vars(args)), find_max)
        text = json.dumps(_no_nan(data), indent=2, default=str, allow_nan=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        env = report.environment()
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        print(
            f"<!-- {env['date']}, {env['cores']} cores ({env['cpu']}), Python {env['python']}, "
            f"{versions}, commit {env['commit']} -->\n"
        )
        print(report.markdown(records, find_max))
    if args.plot:
        for path in report.plot(records, Path(args.plot)):
            print(f"bench: wrote {path}", file=sys.stderr)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, str | int | float | bool | list) or v is None
    }


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be computed becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return trio.run(run, args, parser)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
