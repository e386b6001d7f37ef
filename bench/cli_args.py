"""``python -m bench``'s arguments: the parser, its value types (a bad value is a usage
error, exit 2) and the help texts. The commands themselves are in ``bench/cli.py``.

Imports: stdlib, the bench's unit parsers and targets, trickle_trio's help formatter.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from trickle_trio.client.cli import HelpFormatter

from .scenarios.common import parse_rate, parse_size
from .servers import Target

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


def _pacing(parser: argparse.ArgumentParser, bitrate_help: str) -> None:
    """The options of a paced live stream (``live`` and ``join``'s busy channel)."""
    parser.add_argument("--bitrate", type=RATE, default="2M", help=bitrate_help)
    parser.add_argument(
        "--segment-seconds", type=POSITIVE_FLOAT, default=1.0, help="segment length (s)"
    )
    parser.add_argument(
        "--interval-ms", type=POSITIVE_FLOAT, default=20.0, help="write interval (ms)"
    )
    parser.add_argument("--duration", type=POSITIVE_FLOAT, default=10.0, help="seconds per run")


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
    _pacing(live, "bit/s per channel")
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
    _pacing(join, "the channel's bit/s")
    _common(join)

    everything = scenario(
        "all",
        "every scenario with its defaults",
        "Run fanout, live, small and join, each with its defaults, one after the other.",
    )
    _common(everything)
    return parser
