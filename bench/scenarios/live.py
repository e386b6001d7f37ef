"""The ``live`` scenario: C channels at once, each a paced publisher and M subscribers.

Each publisher sends R bit/s (default 2 Mbit/s) as one chunk every ``interval``
(default 20 ms, so 5,000 B at 2 Mbit/s) into D-second segments (default 1 s, i.e. 50
chunks), preconnecting ``POST seq+1`` as soon as a segment starts, like the reference
publisher. Channels start at random phases within one interval so that they don't all
write in the same millisecond, and (unless ``--aligned-segments``) their first segment
has a random length, so that segment boundaries are spread over the segment duration as
those of independent streams are. With aligned segments every channel ends a segment and
opens the next requests in the same instant, once per segment: a burst of 2 x C requests
that sets the p99 of a Python server (see bench/README.md).

Every chunk begins with a stamp (channel, seq, chunk index, write time); a subscriber
cuts the stream back into fixed-size chunks and records, per chunk, the time from the
publisher's write to the chunk's last byte arriving. Figures: p50/p99/max of that
latency over every chunk of every subscriber, and the delivered fraction (chunks
received / chunks written x M). ``--find-max`` (in the runner) searches the largest C
whose p99 stays under a bound with nothing lost.

A channel's publisher and subscribers run in the same worker (in ``engine.Engine``);
channels are dealt over all workers. The publisher's lag behind its schedule is
recorded: when it grows, the generator could not keep up and offered less load than
asked.

Imports: stdlib, the bench's ``common`` and ``engine``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..servers import Endpoint
from ..workers import Control
from .chunks import STAMP, ChannelState, Pace, Pacing
from .common import C_AUX, C_ERRORS, C_UNITS, Outcome, Plan, describe, percentile, split_evenly
from .engine import Engine


@dataclass(frozen=True, kw_only=True)
class LiveConfig(Pacing):
    """One live configuration."""

    channels: int
    subscribers: int = 1
    #: After the publishers stop, how long subscribers may take to catch up.
    grace: float = 2.0
    #: Chunks written in the first seconds (every channel starting at once) count for
    #: ``delivered`` but not for the latency figures.
    warmup: float = 1.0
    mime: str = "video/mp2t"
    #: Every channel's segments start at the same instant (worst case); else spread.
    aligned_segments: bool = False

    @property
    def chunk_bytes(self) -> int:
        return max(STAMP.size, round(self.bitrate / 8 * self.interval))

    @property
    def chunks_per_segment(self) -> int:
        return max(1, round(self.segment_s / self.interval))

    @property
    def label(self) -> str:
        subs = f" x {self.subscribers} sub" if self.subscribers != 1 else ""
        aligned = ", aligned segments" if self.aligned_segments else ""
        return f"{self.channels} ch{subs} @ {self.bitrate / 1e6:g} Mbit/s{aligned}"

    def validate(self) -> None:
        if self.channels < 1 or self.subscribers < 0:
            raise ValueError("channels must be >= 1 and subscribers >= 0")
        self.validate_pacing()


# -- coordinator side ----------------------------------------------------------------------


def plan(config: LiveConfig, endpoint: Endpoint, workers: int, run_id: str) -> Plan:
    shares = split_evenly(list(range(config.channels)), min(workers, config.channels))
    conns = config.channels * (2 + 2 * config.subscribers)
    return Plan(
        jobs=[(w, "live", share) for w, share in enumerate(shares) if share],
        channels=[(f"{run_id}-{c}", config.mime) for c in range(config.channels)],
        setup_timeout=30 + conns * 0.01,
        run_timeout=config.duration + config.grace + 30,
    )


METRICS = [
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.0f}"),
    ("delivered", "delivered", "{:.4f}"),
    ("rss_per_channel_kib", "KiB/ch", "{:.0f}"),
]


def summarize(config: LiveConfig, results: list[dict[str, Any]]) -> Outcome:
    latencies: list[float] = []
    lags: list[float] = []
    written = received = corrupt = cut = 0
    errors: list[str] = []
    for r in results:
        latencies.extend(r["latencies_ms"])
        lags.extend(r["lags_ms"])
        written += r["written"]
        received += r["received"]
        corrupt += r["corrupt"]
        cut += r.get("cut", 0)
        errors.extend(r["errors"])
    latencies.sort()
    lags.sort()
    expected = written * config.subscribers
    delivered = received / expected if expected else float("nan")
    metrics = {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "delivered": delivered,
        "chunks_written": written,
        "lag_p99_ms": percentile(lags, 99),
        "offered_mbit_s": written * config.chunk_bytes * 8 / config.duration / 1e6,
        "connects": sum(r.get("connects", 0) for r in results),
        "publisher_stalls": sum(r.get("stalls", 0) for r in results),
        "setup_s": max(r.get("setup_s", 0.0) for r in results),
    }
    notes = errors[:5]
    checks = {
        "lost": max(0, expected - received),
        "corrupt": corrupt,
        "cut": cut,
        "errors": len(errors),
    }
    return Outcome(metrics, checks, {"latency (ms)": latencies}, notes)


def passes(outcome: Outcome, bound_ms: float) -> bool:
    """The ``--find-max`` criterion: p99 under the bound and nothing lost."""
    return outcome.clean and outcome.metrics["p99_ms"] < bound_ms


def progress_line(config: LiveConfig, totals: list[int], elapsed: float) -> str:
    return (
        f"{min(elapsed, config.duration):.0f}/{config.duration:.0f} s, "
        f"{totals[C_UNITS]}/{totals[C_AUX] * config.subscribers} chunks"
    )


# -- worker side -------------------------------------------------------------------------


def first_segment_chunks(config: LiveConfig, channel: int) -> int | None:
    """Chunks in channel ``channel``'s first segment: random (fixed per channel) so that
    the channels' segment boundaries spread over one segment; None (a full segment)
    with ``aligned_segments``."""
    if config.aligned_segments:
        return None
    return random.Random(-1 - channel).randint(1, config.chunks_per_segment)


def pace_of(config: LiveConfig) -> Pace:
    return Pace(config.chunk_bytes, config.chunks_per_segment, config.interval, config.mime)


async def run_worker(ctl: Control) -> dict[str, Any]:
    config: LiveConfig = ctl.job.config
    endpoint: Endpoint = ctl.job.endpoint
    engine = Engine(endpoint.host, endpoint.port, endpoint.base_path, pace_of(config), ctl.counters)
    try:
        for c in ctl.job.share:
            state = ChannelState(c, f"{ctl.job.run_id}-{c}")
            # Random phases within one interval: channels don't all write in the same ms.
            phase = random.Random(c).uniform(0, config.interval)
            engine.add_channel(state, config.subscribers, phase, first_segment_chunks(config, c))
        await engine.set_up()
        t0 = await ctl.ready()
        for pub in engine.publishers:
            pub.start += t0
            pub.due = pub.start
        warmup = min(config.warmup, config.duration / 2)  # a short run keeps half its samples
        run = partial(engine.run, t0, t0 + config.duration, config.grace, warmup)
        await ctl.run_until_stopped(run)
    except Exception as exc:
        ctl.counters[C_ERRORS] += 1
        engine.errors.append(describe(exc))
    return engine.results()
