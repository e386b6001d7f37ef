"""The ``live`` scenario: C channels at once, each a paced publisher and M subscribers.

Each publisher sends R bit/s (default 2 Mbit/s) as one chunk every ``interval``
(default 20 ms, so 5,000 B at 2 Mbit/s) into D-second segments (default 1 s, i.e. 50
chunks), preconnecting ``POST seq+1`` as soon as a segment starts, like the reference
publisher. Channels start at random phases within one interval so that they don't all
write in the same millisecond.

Every chunk begins with a stamp (channel, seq, chunk index, write time); a subscriber
cuts the stream back into fixed-size chunks and records, per chunk, the time from the
publisher's write to the chunk's last byte arriving. Figures: p50/p99/max of that
latency over every chunk of every subscriber, and the delivered fraction (chunks
received / chunks written x M). ``--find-max`` (in the runner) searches the largest C
whose p99 stays under a bound with nothing lost.

A channel's publisher and subscribers run in the same worker; channels are dealt over
all workers. The publisher's lag behind its schedule is recorded: when it grows, the
generator could not keep up and offered less load than asked.

Imports: stdlib, trio, the bench's client and ``common``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..client import LAST_CHUNK, Conn, HttpError, chunk_prefix
from ..servers import Endpoint
from ..workers import Control
from .common import (
    C_AUX,
    C_ERRORS,
    C_LOST,
    C_UNITS,
    Outcome,
    Plan,
    Publisher,
    Subscriber,
    describe,
    percentile,
    split_evenly,
)

#: magic, channel, seq, chunk index, write time (monotonic ns).
STAMP = struct.Struct("<4sIIIq")
MAGIC = b"TRKL"
_CONNECT_CONCURRENCY = 32


@dataclass(frozen=True)
class LiveConfig:
    """One live configuration."""

    channels: int
    subscribers: int = 1
    bitrate: float = 2e6
    segment_s: float = 1.0
    interval: float = 0.02
    duration: float = 10.0
    #: After the publishers stop, how long subscribers may take to catch up.
    grace: float = 2.0
    mime: str = "video/mp2t"

    @property
    def chunk_bytes(self) -> int:
        return max(STAMP.size, round(self.bitrate / 8 * self.interval))

    @property
    def chunks_per_segment(self) -> int:
        return max(1, round(self.segment_s / self.interval))

    @property
    def label(self) -> str:
        subs = f" x {self.subscribers} sub" if self.subscribers != 1 else ""
        return f"{self.channels} ch{subs} @ {self.bitrate / 1e6:g} Mbit/s"

    def validate(self) -> None:
        if self.channels < 1 or self.subscribers < 0:
            raise ValueError("channels must be >= 1 and subscribers >= 0")
        if self.interval <= 0 or self.duration <= 0 or self.segment_s <= 0:
            raise ValueError("interval, duration and segment length must be > 0")


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
    written = received = corrupt = 0
    errors: list[str] = []
    for r in results:
        latencies.extend(r["latencies_ms"])
        lags.extend(r["lags_ms"])
        written += r["written"]
        received += r["received"]
        corrupt += r["corrupt"]
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
    }
    notes = errors[:5]
    checks = {"lost": max(0, expected - received), "corrupt": corrupt, "errors": len(errors)}
    return Outcome(metrics, checks, {"latency (ms)": latencies}, notes)


def passes(outcome: Outcome, bound_ms: float) -> bool:
    """The ``--find-max`` criterion: p99 under the bound and nothing lost."""
    return outcome.clean and outcome.metrics["p99_ms"] < bound_ms


def progress_line(config: LiveConfig, totals: list[int], elapsed: float) -> str:
    return (
        f"{min(elapsed, config.duration):.0f}/{config.duration:.0f} s, "
        f"{totals[C_UNITS]}/{totals[C_AUX] * config.subscribers} chunks"
    )


# -- worker side: shared with ``join`` -----------------------------------------------------


@dataclass
class ChannelState:
    """What a channel's publisher tells its subscribers (same process)."""

    index: int
    name: str
    written: int = 0
    done: bool = False
    finished: trio.Event = field(default_factory=trio.Event)


class ChunkSink:
    """Cuts one subscriber's stream back into chunks; records each chunk's latency.

    Chunks have a fixed size, so a chunk ends every ``size`` bytes of a segment; the
    stamp at its start says where it came from and when it was written.
    """

    __slots__ = ("buf", "channel", "corrupt", "count", "latencies", "seq", "size")

    def __init__(self, channel: int, size: int, latencies: list[float]) -> None:
        self.channel = channel
        self.size = size
        self.latencies = latencies
        self.buf = bytearray()
        self.seq = 0
        self.count = 0
        self.corrupt = 0

    def start_segment(self, seq: int) -> None:
        if self.buf:
            self.corrupt += 1  # the previous segment ended inside a chunk
            self.buf.clear()
        self.seq = seq

    def __call__(self, view: memoryview) -> None:
        size = self.size
        buf = self.buf
        if not buf and len(view) == size:
            self._chunk(view, time.monotonic_ns())
            return
        buf += view
        if len(buf) < size:
            return
        now = time.monotonic_ns()
        while len(buf) >= size:
            self._chunk(buf, now)
            del buf[:size]

    def _chunk(self, data: memoryview | bytearray, now: int) -> None:
        magic, channel, seq, _index, t_ns = STAMP.unpack_from(data)
        if magic != MAGIC or channel != self.channel or seq != self.seq:
            self.corrupt += 1
            return
        self.count += 1
        self.latencies.append((now - t_ns) / 1e6)


class Pacer:
    """Wakes many tasks at their due times with a single timer.

    ``trio.sleep_until`` per chunk costs a cancel scope and a raised-and-caught
    ``Cancelled`` each time, a fifth of a publisher's CPU. Here a task parks in a heap
    (``wait_until``) and one loop (``run``) reschedules every task that is due, waking
    once per ``resolution`` at most; the stamp in the payload records when the write
    really happened, so the coarser schedule does not bias the latency.
    """

    def __init__(self, resolution: float = 0.0005) -> None:
        self.resolution = resolution
        self._heap: list[list[Any]] = []
        self._count = itertools.count()
        self._offset = trio.current_time() - time.monotonic()
        self._wakeup = trio.Event()

    async def wait_until(self, when: float) -> None:
        """Return at ``when`` (``time.monotonic`` seconds), or a little after.

        Cancellation: the wait is abandoned and the entry dropped.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        entry = [when + self._offset, next(self._count), trio.lowlevel.current_task()]
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wakeup.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Wake due tasks, forever."""
        heap = self._heap
        while True:
            self._wakeup = trio.Event()
            if not heap:
                await self._wakeup.wait()
                continue
            if heap[0][0] > trio.current_time():
                with trio.move_on_at(heap[0][0]):
                    await self._wakeup.wait()
                continue
            limit = trio.current_time() + self.resolution
            while heap and heap[0][0] <= limit:
                task = heapq.heappop(heap)[2]
                if task is not None:
                    trio.lowlevel.reschedule(task)
            await trio.lowlevel.checkpoint()


async def run_publisher(
    config: LiveConfig,
    publisher: Publisher,
    state: ChannelState,
    first: Conn,
    start: float,
    end: float,
    pacer: Pacer,
    lags: list[float],
    counters: memoryview,
) -> None:
    """Publish paced chunks from ``start`` to ``end`` (``time.monotonic`` seconds)."""
    prefix = chunk_prefix(config.chunk_bytes)
    # One reused buffer per chunk: size line, stamp (packed in place), filler, CRLF.
    template = bytearray(prefix + bytes(config.chunk_bytes) + b"\r\n")
    stamp_at = len(prefix)
    per_segment = config.chunks_per_segment
    interval = config.interval
    conn = first
    seq = 0
    due = start
    async with trio.open_nursery() as background:
        while due < end:
            following: list[Conn] = []
            preconnected = trio.Event()

            async def preconnect(seq: int, into: list[Conn], done: trio.Event) -> None:
                try:
                    into.append(await publisher.preconnect(seq))
                except (OSError, HttpError) as exc:
                    publisher.errors.append(f"preconnect {state.name}/{seq}: {exc}")
                finally:
                    done.set()

            for index in range(per_segment):
                if due >= end:
                    break
                await pacer.wait_until(due)
                now = time.monotonic_ns()
                lags.append(now / 1e6 - due * 1e3)
                STAMP.pack_into(template, stamp_at, MAGIC, state.index, seq, index, now)
                await conn.send(template)
                state.written += 1
                counters[C_AUX] += 1
                if index == 0:
                    background.start_soon(preconnect, seq + 1, following, preconnected)
                due = start + (state.written * interval)
            await conn.send(LAST_CHUNK)
            background.start_soon(publisher.read_answer, conn, seq)
            await preconnected.wait()
            if not following:
                break
            conn = following[0]
            seq += 1
        state.done = True
        state.finished.set()
        # Release the idle preconnect (an empty segment), as a publisher that stops does.
        await conn.send(LAST_CHUNK)
        background.start_soon(publisher.read_answer, conn, seq + 1)


async def run_subscriber(
    config: LiveConfig,
    subscriber: Subscriber,
    state: ChannelState,
    first: Conn,
    sink: ChunkSink,
    errors: list[str],
    counters: memoryview,
) -> None:
    """Follow the channel from seq 0 until everything written has arrived."""
    conn = first
    seq = 0
    while True:
        head = await conn.read_head()
        if head.headers.get("lp-trickle-closed"):
            return
        following = await subscriber.request(seq + 1)
        if head.status == 200 and head.headers.get("lp-trickle-seq") == str(seq):
            sink.start_segment(seq)
            before = sink.count
            await conn.read_body(head, sink)
            counters[C_UNITS] += sink.count - before
        else:
            await conn.read_body_bytes(head)
            errors.append(f"GET {state.name}/{seq}: status {head.status}")
            counters[C_LOST] += 1
        subscriber.release(conn)
        conn = following
        seq += 1
        if state.done and sink.count >= state.written:
            return


async def run_worker(ctl: Control) -> dict[str, Any]:
    config: LiveConfig = ctl.job.config
    endpoint: Endpoint = ctl.job.endpoint
    indices: list[int] = ctl.job.share
    counters = ctl.counters
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    states = [ChannelState(c, f"{ctl.job.run_id}-{c}") for c in indices]
    publishers = [Publisher(endpoint, s.name, config.mime) for s in states]
    subscribers = [
        [Subscriber(endpoint, s.name) for _ in range(config.subscribers)] for s in states
    ]
    sinks = [
        [ChunkSink(s.index, config.chunk_bytes, latencies) for _ in range(config.subscribers)]
        for s in states
    ]
    first_gets: list[list[Conn]] = [[] for _ in states]
    first_posts: list[Conn | None] = [None] * len(states)
    limiter = trio.CapacityLimiter(_CONNECT_CONCURRENCY)
    try:

        async def set_up(k: int) -> None:
            async with limiter:
                for sub in subscribers[k]:
                    first_gets[k].append(await sub.request(0))
                first_posts[k] = await publishers[k].preconnect(0)

        async with trio.open_nursery() as nursery:
            for k in range(len(states)):
                nursery.start_soon(set_up, k)
        pacer = Pacer()
        t0 = await ctl.ready()
        end = t0 + config.duration

        async def channel(k: int) -> None:
            phase = random.Random(states[k].index).uniform(0, config.interval)
            post = first_posts[k]
            assert post is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    run_publisher,
                    config,
                    publishers[k],
                    states[k],
                    post,
                    t0 + phase,
                    end,
                    pacer,
                    lags,
                    counters,
                )
                for m, sub in enumerate(subscribers[k]):
                    nursery.start_soon(
                        run_subscriber,
                        config,
                        sub,
                        states[k],
                        first_gets[k][m],
                        sinks[k][m],
                        errors,
                        counters,
                    )

        async def everything() -> None:
            # Publishers stop at ``end``; subscribers get ``grace`` to catch up.
            with trio.move_on_at(end + config.grace + trio.current_time() - time.monotonic()):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pacer.run)
                    async with trio.open_nursery() as channels:
                        for k in range(len(states)):
                            channels.start_soon(channel, k)
                    nursery.cancel_scope.cancel()

        await ctl.run_until_stopped(everything)
    except Exception as exc:
        counters[C_ERRORS] += 1
        errors.append(describe(exc))
    finally:
        for pub in publishers:
            errors.extend(pub.errors[:5])
            pub.close()
        for subs in subscribers:
            for sub in subs:
                sub.close()
    return {
        "latencies_ms": latencies,
        "lags_ms": lags,
        "written": sum(s.written for s in states),
        "received": sum(sink.count for row in sinks for sink in row),
        "corrupt": sum(sink.corrupt for row in sinks for sink in row),
        "errors": errors[:20],
    }
