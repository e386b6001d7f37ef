"""The ``join`` scenario: how long a new subscriber waits for its first byte.

One busy channel: a paced publisher (as in ``live``: 2 Mbit/s, 20 ms chunks, 1 s
segments) and ``background`` subscribers following it. Meanwhile ``concurrency``
joiner tasks each repeatedly open a fresh connection, ``GET /{ch}/-2`` or ``-1``
(alternating), and record the time from sending the request to the first body byte,
then hang up (which also exercises the server's disconnect path).

- ``-2`` (the segment being written) should answer at once with what is buffered.
- ``-1`` (the next segment) waits for the publisher to start it, i.e. on average half
  a segment; its *lag* — first byte received minus the publisher's write of that byte,
  read from the stamp — is what the server adds.

Layout: publisher and background subscribers in worker 0, joiners in worker 1.

Imports: stdlib, trio, the bench's client, ``common`` and ``live``.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..client import Conn, HttpError
from ..servers import Endpoint
from ..workers import Control
from .chunks import STAMP, ChannelState, Pacing
from .common import C_ERRORS, C_UNITS, Outcome, Plan, describe, percentile
from .engine import Engine
from .live import LiveConfig, pace_of


@dataclass(frozen=True, kw_only=True)
class JoinConfig(Pacing):
    """One join configuration."""

    background: int = 10
    concurrency: int = 16
    #: Upper bound on joins, whatever the duration.
    max_joins: int = 2000

    @property
    def live(self) -> LiveConfig:
        """The busy channel, as a live configuration of one channel."""
        return LiveConfig(channels=1, subscribers=self.background, **self.pacing())

    @property
    def label(self) -> str:
        return f"{self.background} bg subs, {self.concurrency} joiners"

    def validate(self) -> None:
        if self.concurrency < 1 or self.background < 0:
            raise ValueError("concurrency >= 1, background >= 0")
        self.validate_pacing()


def plan(config: JoinConfig, endpoint: Endpoint, workers: int, run_id: str) -> Plan:
    jobs: list[tuple[int, str, Any]] = [
        (0, "channel", None),
        (min(1, workers - 1), "joiners", None),
    ]
    if jobs[1][0] == 0:
        raise ValueError("join needs at least 2 worker processes")
    return Plan(
        jobs=jobs,
        channels=[(f"{run_id}-0", config.live.mime)],
        setup_timeout=30,
        run_timeout=config.duration + config.live.grace + 30,
    )


METRICS = [
    ("cur_p50_ms", "-2 p50 ms", "{:.2f}"),
    ("cur_p99_ms", "-2 p99 ms", "{:.2f}"),
    ("next_p50_ms", "-1 p50 ms", "{:.0f}"),
    ("next_lag_p99_ms", "-1 lag p99 ms", "{:.2f}"),
    ("joins", "joins", "{:.0f}"),
]


def summarize(config: JoinConfig, results: list[dict[str, Any]]) -> Outcome:
    channel, joiners = results
    cur = sorted(joiners["ttfb_ms"]["-2"])
    nxt = sorted(joiners["ttfb_ms"]["-1"])
    lag = sorted(joiners["lag_ms"])
    bg = sorted(channel["latencies_ms"])
    expected = channel["written"] * config.background
    metrics = {
        "cur_p50_ms": percentile(cur, 50),
        "cur_p99_ms": percentile(cur, 99),
        "next_p50_ms": percentile(nxt, 50),
        "next_p99_ms": percentile(nxt, 99),
        "next_lag_p50_ms": percentile(lag, 50),
        "next_lag_p99_ms": percentile(lag, 99),
        "joins": len(cur) + len(nxt),
        "background_p99_ms": percentile(bg, 99),
    }
    errors = joiners["errors"] + channel["errors"]
    checks = {
        "errors": len(errors),
        "lost": max(0, expected - channel["received"]),
        "corrupt": channel["corrupt"],
    }
    samples = {"ttfb -2 (ms)": cur, "ttfb -1 (ms)": nxt, "lag -1 (ms)": lag}
    return Outcome(metrics, checks, samples, errors[:5])


def progress_line(config: JoinConfig, totals: list[int], elapsed: float) -> str:
    return f"{min(elapsed, config.duration):.0f}/{config.duration:.0f} s, {totals[C_UNITS]} joins"


async def run_worker(ctl: Control) -> dict[str, Any]:
    if ctl.job.role == "channel":
        return await _channel(ctl)
    return await _joiners(ctl)


async def _channel(ctl: Control) -> dict[str, Any]:
    """The busy channel: a live publisher and its background subscribers."""
    config: JoinConfig = ctl.job.config
    live = config.live
    endpoint: Endpoint = ctl.job.endpoint
    engine = Engine(endpoint.host, endpoint.port, endpoint.base_path, pace_of(live), ctl.counters)
    try:
        engine.add_channel(ChannelState(0, f"{ctl.job.run_id}-0"), config.background, 0.0)
        await engine.set_up()
        t0 = await ctl.ready()
        for pub in engine.publishers:
            pub.start = pub.due = t0
        await ctl.run_until_stopped(partial(engine.run, t0, t0 + live.duration, live.grace))
    except Exception as exc:
        ctl.counters[C_ERRORS] += 1
        engine.errors.append(describe(exc))
    return engine.results()


class _FirstBytes(Exception):
    """Raised by the joiner's sink once it has what it came for."""


async def _joiners(ctl: Control) -> dict[str, Any]:
    config: JoinConfig = ctl.job.config
    endpoint: Endpoint = ctl.job.endpoint
    path = {mode: endpoint.path(f"{ctl.job.run_id}-0", mode) for mode in ("-2", "-1")}
    ttfb: dict[str, list[float]] = {"-2": [], "-1": []}
    lags: list[float] = []
    errors: list[str] = []
    joins = 0
    t0 = await ctl.ready()
    # Let the channel get going (first segment started) before the first join.
    start = t0 + config.interval * 5
    # No join in the last segment: a -1 there would meet the publisher's final release.
    end = t0 + config.duration - config.segment_s - 0.1
    offset = trio.current_time() - time.monotonic()

    async def join_once(mode: str) -> None:
        conn = await Conn.open(endpoint.host, endpoint.port)
        try:
            got = bytearray()
            first_at = 0

            def sink(view: memoryview) -> None:
                nonlocal first_at
                if not first_at:
                    first_at = time.monotonic_ns()
                got.extend(view[: STAMP.size - len(got)])
                if len(got) >= STAMP.size:
                    raise _FirstBytes

            sent = time.monotonic_ns()
            await conn.request("GET", path[mode])
            head = await conn.read_head()
            if head.status != 200:
                await conn.read_body_bytes(head)
                errors.append(f"GET {mode}: status {head.status}")
                return
            with contextlib.suppress(_FirstBytes):
                await conn.read_body(head, sink)
            if not first_at:
                errors.append(f"GET {mode}: empty segment")
                return
            ttfb[mode].append((first_at - sent) / 1e6)
            if mode == "-1":
                _magic, _ch, _seq, _index, t_write = STAMP.unpack_from(got)
                lags.append((first_at - t_write) / 1e6)
        finally:
            conn.close()

    async def joiner(k: int) -> None:
        nonlocal joins
        rng = random.Random(k)
        mode = "-2" if k % 2 == 0 else "-1"
        await trio.sleep_until(start + offset + rng.uniform(0, 0.1))
        while time.monotonic() < end and joins < config.max_joins:
            joins += 1
            try:
                await join_once(mode)
            except (OSError, HttpError) as exc:
                errors.append(f"GET {mode}: {exc}")
            ctl.counters[C_UNITS] += 1
            mode = "-1" if mode == "-2" else "-2"
            # A random phase within a segment: joins must not lock onto segment starts.
            await trio.sleep(rng.uniform(0.02, config.segment_s))

    async def all_joiners() -> None:
        with trio.move_on_at(end + config.segment_s + 5 + offset):
            async with trio.open_nursery() as nursery:
                for k in range(config.concurrency):
                    nursery.start_soon(joiner, k)

    await ctl.run_until_stopped(all_joiners)
    return {"ttfb_ms": ttfb, "lag_ms": lags, "errors": errors[:20]}
