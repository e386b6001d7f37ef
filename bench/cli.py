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
error, exit 2). Exit status: see :data:`EXIT_HELP`.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trickle_trio.client.cli import HelpFormatter

from . import report
from .runner import Progress, Runner, RunRecord
from .scenarios.common import parse_rate, parse_size
from .scenarios.join import JoinConfig
from .scenarios.live import LiveConfig
from .scenarios.stream import StreamConfig
from .servers import Reference, Target, resolve_reference

SCENARIO_NAMES = ("fanout", "live", "small", "join")

#: Exit status when every run was clean but some were disturbed by other load.
EXIT_NOISY = 3
EXIT_HELP = """\
exit status:
  0  every run completed and every check was clean, on a quiet machine
  1  a run failed or a check did not pass (lost, corrupt, cut, errors)
  2  bad arguments
  3  every check clean, but some runs were noisy (other processes or the hypervisor
     took CPU: the "other CPU" column); their figures understate the servers
"""

DESCRIPTION = """\
Measure trickle servers under load to size a deployment: fan-out throughput (fanout),
live channels at a bit rate and the latency of each chunk (live, and with --find-max the
most channels a process carries within a latency bound), tiny segments back to back
(small), and how fast new subscribers get their first bytes (join). Servers started
here get a fresh process per run; several --url targets take turns under the same load
and the tables get a ratio column against --url reference (go-livepeer's own server).

Units: sizes take KiB/MiB/GiB (1024s) or kB/MB/GB (1000s), bit rates k/M/G (1000s);
figures in MB/s are 10^6 bytes per second.
"""


def _arg(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert``, with its ValueError as a usage error."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"not {what}: {text!r}") from None

    parse.__name__ = what
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be >= 1: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not value > 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def _channel_counts(text: str) -> list[int]:
    counts = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not counts:
        raise ValueError(f"no channel count in {text!r}")
    return counts


def _fanout_config(text: str) -> tuple[int, int]:
    cut = text.lower().find("x")
    count, sep, size = text[:cut], "x" if cut >= 0 else "", text[cut + 1 :]
    if not sep:
        raise ValueError(f"not SUBSCRIBERSxSIZE (e.g. 10x1MiB): {text!r}")
    return _positive_int(count), parse_size(size)


POSITIVE_INT = _arg(_positive_int, "a whole number >= 1")
POSITIVE_FLOAT = _arg(_positive_float, "a number > 0")
SIZE = _arg(parse_size, "a size")
RATE = _arg(parse_rate, "a bit rate")
CHANNELS = _arg(_channel_counts, "channel counts")
FANOUT_CONFIG = _arg(_fanout_config, "SUBSCRIBERSxSIZE")
TARGET = _arg(Target.parse, "a target")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--url",
        action="append",
        type=TARGET,
        metavar="SPEC",
        help="server to measure, repeatable: 'trickle-trio' (default; started here), "
        "'reference' (go-livepeer's server, started here from --reference), 'baseline' "
        "(a bare relay, started here), or '[label=]http://host:port/base/' (a running "
        "server with autocreate on; label it 'reference' to compare against it)",
    )
    group.add_argument(
        "--reference",
        metavar="PATH",
        help="the reference server's binary (default: TRICKLE_BENCH_REFERENCE, else "
        "../shared/reference/goref-server beside the repository)",
    )
    group.add_argument("--reps", type=POSITIVE_INT, default=1, help="repetitions (median, min-max)")
    group.add_argument(
        "--workers",
        type=POSITIVE_INT,
        default=2,
        help="load-generator worker processes (plus one for a fan-out publisher)",
    )
    group.add_argument(
        "--noisy-cores",
        type=POSITIVE_FLOAT,
        default=0.25,
        metavar="C",
        help="a run is noisy when other processes (or the hypervisor: steal) used more "
        "than C cores meanwhile",
    )
    group.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        metavar="N",
        help="run a noisy --find-max probe again, up to N times",
    )
    group.add_argument("--json", metavar="PATH", help="write results as JSON ('-' = stdout)")
    group.add_argument(
        "--plot", metavar="DIR", help="write PNG plots there (needs the [bench] extra)"
    )
    group.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    group.add_argument("--server-logs", metavar="DIR", help="keep started servers' logs there")
    group.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other processes to go quiet "
        "(< 0.25 busy cores): useful on a shared machine (0 = don't wait)",
    )
    group.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="niceness of the servers started here and of the load generator, e.g. -10 "
        "to favour them over other jobs on a shared machine (negative needs root; "
        "default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=DESCRIPTION,
        epilog=EXIT_HELP,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def scenario(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(  # type: ignore[no-any-return]
            name,
            help=summary,
            description=description,
            epilog=EXIT_HELP,
            formatter_class=HelpFormatter,
        )

    fanout = scenario(
        "fanout",
        "1 publisher -> N subscribers, as fast as possible",
        "One publisher writes segments as fast as the slowest of N subscribers lets it; "
        "every subscriber checksums every segment. Figures: delivered MB/s (verified "
        "bytes, summed over subscribers) and segments/s. What it sizes: bulk fan-out, "
        "e.g. one stream to many viewers.",
    )
    fanout.add_argument(
        "--config",
        action="append",
        type=FANOUT_CONFIG,
        metavar="NxSIZE",
        help="subscribers x segment size, repeatable, e.g. 10x1MiB (default: 10x1MiB and "
        "50x256KiB)",
    )
    fanout.add_argument("--segments", type=POSITIVE_INT, default=100, help="segments per run")
    fanout.add_argument("--chunk", type=SIZE, default="64KiB", help="publisher write size")
    fanout.add_argument(
        "--ahead", type=POSITIVE_INT, default=3, help="max segments ahead of the slowest"
    )
    _common(fanout)

    live = scenario(
        "live",
        "C paced channels; per-chunk latency",
        "C channels at once, each a publisher sending a paced stream (one chunk every "
        "--interval-ms at --bitrate) with M subscribers. Figures: per-chunk latency from "
        "the publisher's write to the subscriber's read (p50/p99/max), the delivered "
        "fraction, server memory per channel. With --find-max: the most channels one "
        "server carries with p99 under --bound-ms and nothing lost, the capacity figure "
        "for sizing.",
    )
    live.add_argument(
        "--channels",
        type=CHANNELS,
        default="100",
        metavar="C[,C...]",
        help="channel count(s), comma-separated: one run per count",
    )
    live.add_argument("--subscribers", type=POSITIVE_INT, default=1, help="subscribers per channel")
    live.add_argument("--bitrate", type=RATE, default="2M", help="bit/s per channel")
    live.add_argument(
        "--segment-seconds", type=POSITIVE_FLOAT, default=1.0, help="segment length (s)"
    )
    live.add_argument(
        "--interval-ms", type=POSITIVE_FLOAT, default=20.0, help="write interval (ms)"
    )
    live.add_argument("--duration", type=POSITIVE_FLOAT, default=10.0, help="seconds per run")
    live.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds at the start whose chunks count for delivery but not latency",
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
    live.add_argument("--bound-ms", type=POSITIVE_FLOAT, default=100.0, help="p99 bound (ms)")
    live.add_argument("--start", type=POSITIVE_INT, default=50, help="first channel count probed")
    live.add_argument("--max-channels", type=POSITIVE_INT, default=1000, help="search limit")
    _common(live)

    small = scenario(
        "small",
        "tiny JSON segments back to back",
        "One channel, thousands of tiny segments back to back, each its own preconnected "
        "POST and GET. Figures: segments/s and per-segment latency. What it sizes: the "
        "cost per request (event streams, JSON messages).",
    )
    small.add_argument("--segments", type=POSITIVE_INT, default=5000, help="segments per run")
    small.add_argument("--size", type=SIZE, default="200", help="segment size")
    small.add_argument("--subscribers", type=POSITIVE_INT, default=1, help="subscribers")
    small.add_argument(
        "--ahead", type=POSITIVE_INT, default=3, help="max segments ahead of the subscriber"
    )
    _common(small)

    join = scenario(
        "join",
        "time to first byte of new subscribers (-2 / -1)",
        "A busy channel (a live publisher and some subscribers) while new subscribers "
        "keep joining at -2 (the segment being written) and -1 (the next). Figures: time "
        "to the first byte at -2 and -1, and the -1 lag. What it sizes: viewers zapping "
        "in.",
    )
    join.add_argument(
        "--background", type=POSITIVE_INT, default=10, help="subscribers already there"
    )
    join.add_argument("--concurrency", type=POSITIVE_INT, default=16, help="joiner tasks")
    join.add_argument("--duration", type=POSITIVE_FLOAT, default=10.0, help="seconds per run")
    join.add_argument("--bitrate", type=RATE, default="2M", help="the channel's bit/s")
    join.add_argument(
        "--segment-seconds", type=POSITIVE_FLOAT, default=1.0, help="segment length (s)"
    )
    join.add_argument(
        "--interval-ms", type=POSITIVE_FLOAT, default=20.0, help="write interval (ms)"
    )
    _common(join)

    everything = scenario(
        "all",
        "every scenario with its defaults",
        "Run fanout, live, small and join, each with its defaults, one after the other.",
    )
    _common(everything)
    return parser


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
            JoinConfig(
                background=args.background,
                concurrency=args.concurrency,
                duration=args.duration,
                bitrate=args.bitrate,
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
        bitrate=args.bitrate,
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
