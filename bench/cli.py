"""``python -m bench``: the command line.

    python -m bench fanout [--config 10x1MiB --config 50x256KiB] [--segments 100] [--chunk 64KiB]
    python -m bench live   [--channels 100] [--subscribers 1] [--bitrate 2M] [--duration 10]
                           [--find-max [--bound-ms 100]]
    python -m bench small  [--segments 5000] [--size 200]
    python -m bench join   [--background 10] [--concurrency 16] [--duration 10]
    python -m bench all    (each of the above with its defaults)

Common options: ``--url`` (repeatable: ``trickle-trio``, ``reference``, ``baseline``,
``[label=]http://..``; default ``trickle-trio``), ``--reps``, ``--workers``, ``--json``,
``--plot``, ``--quiet``. Every value is checked by the parser (a bad one is a usage
error, exit 2: ``cli_args``). Exit status: see ``cli_args.EXIT_HELP``.
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
from .cli_args import EXIT_NOISY, SCENARIO_NAMES, build_parser
from .runner import Progress, Runner, RunRecord
from .scenarios.join import JoinConfig
from .scenarios.live import LiveConfig
from .scenarios.stream import StreamConfig
from .servers import Reference, Target, resolve_reference


def configs_for(scenario: str, args: argparse.Namespace) -> list[Any]:
    """The configurations ``args`` asks for (``--find-max`` aside)."""
    configs: list[Any]
    if scenario == "fanout":
        chunk = args.chunk
        configs = []
        for count, size in args.config or [(10, 1 << 20), (50, 256 << 10)]:
            configs.append(StreamConfig("fanout", count, args.segments, size, chunk, args.ahead))
    elif scenario == "small":
        size = args.size
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
        configs = [_live(args, c) for c in sorted(args.channels)]
    else:
        configs = [
            JoinConfig(background=args.background, concurrency=args.concurrency, **_pacing(args))
        ]
    for config in configs:
        config.validate()
    return configs


def _live(args: argparse.Namespace, channels: int) -> LiveConfig:
    return LiveConfig(
        channels=channels,
        subscribers=args.subscribers,
        warmup=args.warmup,
        aligned_segments=getattr(args, "aligned_segments", False),
        **_pacing(args),
    )


def _pacing(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Pacing`` fields from ``--bitrate``, ``--segment-seconds``, ``--interval-ms``
    and ``--duration`` (see ``cli_args._pacing``)."""
    return {
        "bitrate": args.bitrate,
        "segment_s": args.segment_seconds,
        "interval": args.interval_ms / 1000,
        "duration": args.duration,
    }


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


Work = list[tuple[str, argparse.Namespace, list[Any]]]


def plan_work(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Work:
    """(scenario, its arguments, its configurations) for each scenario to run.

    Raises:
        ValueError: a configuration that cannot run (e.g. a warm-up longer than the run).
    """
    plans: list[tuple[str, argparse.Namespace]] = []
    if args.scenario == "all":
        for name in SCENARIO_NAMES:
            plans.append((name, parser.parse_args([name])))
    else:
        plans.append((args.scenario, args))
    return [
        (name, scenario_args, configs_for(name, scenario_args)) for name, scenario_args in plans
    ]


async def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    targets: list[Target] = args.url or [Target.parse("trickle-trio")]
    if len({t.label for t in targets}) != len(targets):
        parser.error("two --url targets have the same label; name them: --url NAME=SPEC")
    reference = None
    if any(t.managed == "reference" for t in targets):
        reference = resolve_reference(args.reference)
        if reference.problem is not None:
            print(f"bench: skipping the reference: {reference.problem}", file=sys.stderr)
            targets = [t for t in targets if t.managed != "reference"]
            if not targets:
                return 0
    work = plan_work(args, parser)
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
        reference=reference.path if reference is not None else None,
        noisy_cores=args.noisy_cores,
    ) as runner:
        for name, scenario_args, configs in work:
            if name == "live" and getattr(scenario_args, "find_max", False):
                find_max = await runner.find_max(
                    partial(_live, scenario_args),
                    start=scenario_args.start,
                    limit=scenario_args.max_channels,
                    bound_ms=scenario_args.bound_ms,
                    reps=args.reps,
                    noisy_retries=args.noisy_retries,
                )
            else:
                await runner.run_all(name, configs, args.reps)
        records = runner.records
    _output(args, records, find_max, reference)
    if not all(r.outcome is not None and r.outcome.clean for r in records):
        return 1
    if any(r.noisy for r in records if r.counted):
        print(
            "bench: some runs were noisy (other CPU over "
            f"{args.noisy_cores:g} cores): their figures understate the servers",
            file=sys.stderr,
        )
        return EXIT_NOISY
    return 0


def _output(
    args: argparse.Namespace,
    records: list[RunRecord],
    find_max: list[dict[str, Any]] | None,
    reference: Reference | None,
) -> None:
    env = report.environment(reference)
    if args.json:
        data = report.to_json(records, _jsonable(vars(args)), find_max, env)
        text = json.dumps(_no_nan(data), indent=2, default=str, allow_nan=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        print(report.header(env) + "\n")
        print(report.markdown(records, find_max))
    if args.plot:
        for path in report.plot(records, Path(args.plot), find_max):
            print(f"bench: wrote {path}", file=sys.stderr)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = [str(v) if isinstance(v, Target) else v for v in value]
        if isinstance(value, str | int | float | bool | list) or value is None:
            out[key] = value
    return out


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
        plan_work(args, parser)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return trio.run(run, args, parser)
    except KeyboardInterrupt:
        return 130
