"""The ``fanout`` and ``small`` scenarios: one publisher, N subscribers, S segments.

**fanout**: the publisher writes S segments of B bytes in K-byte chunks as fast as it
can; N subscribers read every segment from seq 0, each preconnecting ``GET seq+1``
when ``seq``'s headers arrive. Every subscriber checksums every segment (xxh3-64, or
CRC-32 without the ``bench`` extra) and the coordinator compares them with the
publisher's. Figures: delivered MB/s (10^6 bytes/s, summed over subscribers) and
segments/s, from the publisher's first byte to the last subscriber's last byte.

**small**: the same machinery with tiny JSON segments (default 200 B, one chunk each,
one preconnected POST per segment) and one subscriber; figures: segments/s and the
per-segment latency (publisher's first byte -> subscriber's last byte, timestamp in the
payload).

Flow control: the publisher never runs more than ``ahead`` (default 3) segments ahead
of its slowest subscriber. The server keeps 5 segments and a preconnected POST for
``seq+1`` already evicts ``seq-4``, so 3 is the most that can never evict a segment a
subscriber still needs: the run measures the server's fan-out, never a lost segment.

Process layout: the publisher has worker 0 to itself; subscribers are dealt over the
other workers.

Imports: stdlib, trio, the bench's client and ``common``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import time
from dataclasses import dataclass
from typing import Any

import trio

from .. import checksum
from ..client import LAST_CHUNK, Conn, HttpError, chunk_prefix
from ..servers import Endpoint
from ..workers import Control
from .common import (
    C_BYTES,
    C_ERRORS,
    C_LOST,
    C_UNITS,
    CreditGate,
    CreditSignal,
    Outcome,
    Plan,
    Publisher,
    Subscriber,
    describe,
    format_size,
    percentile,
    split_evenly,
)

_STAMP = struct.Struct("<qq")  # seq, write time (monotonic ns)
_PREFIX = 1024  # bytes of each segment a subscriber keeps (to read the stamp)
_POOL_SLACK = 4096


@dataclass(frozen=True)
class StreamConfig:
    """One fanout/small configuration."""

    kind: str  # "fanout" or "small"
    subscribers: int
    segments: int
    segment_bytes: int
    chunk_bytes: int
    ahead: int = 3
    mime: str = "application/octet-stream"

    @property
    def label(self) -> str:
        if self.kind == "small":
            return f"{self.segments} x {self.segment_bytes} B"
        return f"1->{self.subscribers} x {format_size(self.segment_bytes)}"

    def validate(self) -> None:
        if self.subscribers < 1 or self.segments < 1:
            raise ValueError("subscribers and segments must be >= 1")
        if not 1 <= self.ahead <= 3:
            raise ValueError("--ahead must be 1..3 (the server keeps 5 segments)")
        if self.segment_bytes < (64 if self.kind == "small" else _STAMP.size):
            raise ValueError("segments are too small to carry their timestamp")
        if self.chunk_bytes < 1:
            raise ValueError("chunk size must be >= 1")


# -- coordinator side ----------------------------------------------------------------------


def plan(config: StreamConfig, endpoint: Endpoint, workers: int, run_id: str) -> Plan:
    sub_workers = max(1, min(workers - 1, config.subscribers))
    shares = split_evenly(list(range(config.subscribers)), sub_workers)
    jobs: list[tuple[int, str, Any]] = [(0, "publisher", None)]
    jobs += [(1 + i, "subscribers", share) for i, share in enumerate(shares) if share]
    total = config.subscribers * config.segments * config.segment_bytes
    # Generous bounds: 20 MB/s or 100 segments/s is far below any server worth measuring.
    run_timeout = 30 + total / 20e6 + config.segments / 100
    return Plan(
        jobs=jobs,
        channels=[(f"{run_id}-0", config.mime)],
        progress_slots=config.subscribers + 1,
        setup_timeout=30 + config.subscribers * 0.05,
        run_timeout=run_timeout,
    )


METRICS = {
    "fanout": [("mb_s", "MB/s", "{:.0f}"), ("segments_s", "seg/s", "{:.1f}")],
    "small": [
        ("segments_s", "seg/s", "{:.0f}"),
        ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"),
    ],
}


def summarize(config: StreamConfig, results: list[dict[str, Any]]) -> Outcome:
    pub = results[0]
    subs = [sub for r in results[1:] for sub in r["subscribers"]]
    expected: list[int] = pub["digests"]
    delivered = corrupt = lost = short = 0
    latencies: list[float] = []
    ends: list[float] = []
    for sub in subs:
        for seq, (digest, size) in enumerate(zip(sub["digests"], sub["sizes"], strict=True)):
            if digest is None:
                lost += 1
            elif seq >= len(expected) or digest != expected[seq]:
                corrupt += 1
            elif size != config.segment_bytes:
                short += 1
            else:
                delivered += size
        lost += config.segments - len(sub["digests"])
        latencies.extend(sub["latencies_ms"])
        if sub["t_end"] is not None:
            ends.append(sub["t_end"])
    # No subscriber got to its end: there is no rate to give (not a near-zero duration).
    duration = max(max(ends) - pub["t_start"], 1e-9) if ends else float("nan")
    latencies.sort()
    metrics = {
        "mb_s": delivered / duration / 1e6,
        "segments_s": len(expected) / duration,
        "duration_s": duration,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "publisher_waits": pub["waits"],
    }
    checks = {
        "corrupt": corrupt,
        "lost": lost,
        "short": short,
        "missing": config.segments - len(expected),
        "errors": len(pub["errors"]) + sum(len(s["errors"]) for s in subs),
    }
    notes = (pub["errors"] + [e for s in subs for e in s["errors"]])[:5]
    samples = {"latency (ms)": latencies} if config.kind == "small" else {}
    return Outcome(metrics, checks, samples, notes)


def progress_line(config: StreamConfig, totals: list[int], elapsed: float) -> str:
    done = totals[C_UNITS]
    target = config.subscribers * config.segments
    rate = totals[C_BYTES] / max(elapsed, 1e-9) / 1e6
    return f"{done}/{target} segment reads, {rate:.0f} MB/s"


# -- worker side ---------------------------------------------------------------------------


def _gate_address(run_id: str) -> str:
    return f"\0trickle-bench-{run_id}"


async def run_worker(ctl: Control) -> dict[str, Any]:
    if ctl.job.role == "publisher":
        return await _publish(ctl)
    return await _subscribe(ctl)


class _Payload:
    """Deterministic segment bodies: a random pool sliced at a seq-dependent offset,
    behind a stamp (seq, write time); or, for ``small``, padded JSON."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        size = config.segment_bytes
        self.pool = memoryview(random.Random(4).randbytes(size + _POOL_SLACK))

    def parts(self, seq: int, t_ns: int) -> list[bytes | memoryview]:
        """The segment's bytes, as pieces that add up to ``segment_bytes``."""
        size = self.config.segment_bytes
        if self.config.kind == "small":
            head = b'{"seq":%d,"t":%d,"pad":"' % (seq, t_ns)
            return [head + b"x" * (size - len(head) - 2) + b'"}']
        offset = (seq * 257) % _POOL_SLACK
        return [_STAMP.pack(seq, t_ns), self.pool[offset : offset + size - _STAMP.size]]


def _chunks(parts: list[bytes | memoryview], chunk: int) -> list[list[bytes | memoryview]]:
    """Regroup ``parts`` into lists of pieces of ``chunk`` bytes (the last may be short)."""
    out: list[list[bytes | memoryview]] = [[]]
    room = chunk
    for part in parts:
        view = memoryview(part)
        while len(view):
            if not room:
                out.append([])
                room = chunk
            take = view[:room]
            out[-1].append(take)
            room -= len(take)
            view = view[len(take) :]
    return out


async def _send_segment(conn: Conn, config: StreamConfig, parts: list[bytes | memoryview]) -> None:
    if config.kind == "small" and config.segment_bytes <= config.chunk_bytes:
        # One sendmsg per segment: size line, body, CRLF, last chunk.
        await conn.send(chunk_prefix(config.segment_bytes), *parts, b"\r\n", LAST_CHUNK)
        return
    for pieces in _chunks(parts, config.chunk_bytes):
        size = sum(len(p) for p in pieces)
        await conn.send(chunk_prefix(size), *pieces, b"\r\n")
    await conn.send(LAST_CHUNK)


async def _publish(ctl: Control) -> dict[str, Any]:
    config: StreamConfig = ctl.job.config
    endpoint: Endpoint = ctl.job.endpoint
    channel = f"{ctl.job.run_id}-0"
    payload = _Payload(config)
    publisher = Publisher(endpoint, channel, config.mime)
    gate = CreditGate(_gate_address(ctl.job.run_id), ctl.progress, config.subscribers)
    digests: list[int] = []
    counters = ctl.counters
    try:
        conn = await publisher.preconnect(0)
        await ctl.ready()
        t_start = time.monotonic()

        async def publish_all() -> None:
            nonlocal conn
            async with trio.open_nursery() as answers:
                for seq in range(config.segments):
                    await gate.wait_for(seq - config.ahead)
                    current = conn
                    if seq + 1 < config.segments:
                        conn = await publisher.preconnect(seq + 1)
                    parts = payload.parts(seq, time.monotonic_ns())
                    digest = checksum.new()
                    for part in parts:
                        digest.update(part)
                    digests.append(digest.intdigest())
                    try:
                        await _send_segment(current, config, parts)
                    except HttpError as exc:
                        raise HttpError(f"POST {channel}/{seq}: {exc}") from exc
                    counters[C_UNITS] += 1
                    counters[C_BYTES] += config.segment_bytes
                    answers.start_soon(publisher.read_answer, current, seq)

        await ctl.run_until_stopped(publish_all)
        return {
            "t_start": t_start,
            "digests": digests,
            "waits": gate.waits,
            "errors": publisher.errors[:20],
        }
    finally:
        gate.close()
        publisher.close()


@dataclasses.dataclass
class _SubRecord:
    """What one subscriber saw: per seq, the checksum (None = not received) and size."""

    digests: list[int | None] = dataclasses.field(default_factory=list)
    sizes: list[int] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    t_end: float | None = None
    errors: list[str] = dataclasses.field(default_factory=list)


class _Sink:
    """Receives one segment's body: its checksum, size, and first bytes."""

    __slots__ = ("digest", "prefix", "size")

    def __init__(self) -> None:
        self.digest = checksum.new()
        self.size = 0
        self.prefix = b""

    def __call__(self, view: memoryview) -> None:
        self.digest.update(view)
        if self.size < _PREFIX:
            self.prefix += bytes(view[: _PREFIX - self.size])
        self.size += len(view)


def _stamp(kind: str, prefix: bytes) -> tuple[int, int] | None:
    """(seq, write time ns) from a segment's first bytes, or None if unreadable."""
    try:
        if kind == "small":
            doc = json.loads(prefix)
            return int(doc["seq"]), int(doc["t"])
        seq, t_ns = _STAMP.unpack_from(prefix)
        return seq, t_ns
    except (ValueError, KeyError, TypeError, struct.error):
        return None


async def _subscribe(ctl: Control) -> dict[str, Any]:
    config: StreamConfig = ctl.job.config
    endpoint: Endpoint = ctl.job.endpoint
    channel = f"{ctl.job.run_id}-0"
    indices: list[int] = ctl.job.share
    signal = CreditSignal(_gate_address(ctl.job.run_id), ctl.progress, config.subscribers)
    subscribers = [Subscriber(endpoint, channel) for _ in indices]
    records = [_SubRecord() for _ in indices]
    counters = ctl.counters
    try:
        first = [await sub.request(0) for sub in subscribers]
        await ctl.ready()

        async def follow(k: int) -> None:
            index, sub, record = indices[k], subscribers[k], records[k]
            conn = first[k]
            for seq in range(config.segments):
                head = await conn.read_head()
                following = await sub.request(seq + 1) if seq + 1 < config.segments else None
                got = head.headers.get("lp-trickle-seq")
                if head.status != 200 or got != str(seq):
                    await conn.read_body_bytes(head)
                    record.errors.append(f"GET {seq}: status {head.status} seq {got}")
                    record.digests.append(None)
                    record.sizes.append(0)
                    counters[C_LOST] += 1
                else:
                    sink = _Sink()
                    await conn.read_body(head, sink)
                    t_end_ns = time.monotonic_ns()
                    stamp = _stamp(config.kind, sink.prefix)
                    if stamp is not None and stamp[0] == seq:
                        record.latencies_ms.append((t_end_ns - stamp[1]) / 1e6)
                    record.digests.append(sink.digest.intdigest())
                    record.sizes.append(sink.size)
                    counters[C_BYTES] += sink.size
                sub.release(conn)
                counters[C_UNITS] += 1
                signal.finished(index, seq + 1)
                if following is None:
                    break
                conn = following
            record.t_end = time.monotonic()

        async def follow_or_fail(k: int) -> None:
            try:
                await follow(k)
            except (HttpError, OSError) as exc:
                # This subscriber is out; the others and the publisher go on without it
                # (its missing segments count as lost).
                counters[C_ERRORS] += 1
                records[k].errors.append(describe(exc))
                signal.finished(indices[k], 1 << 62)

        async def follow_all() -> None:
            async with trio.open_nursery() as nursery:
                for k in range(len(indices)):
                    nursery.start_soon(follow_or_fail, k)

        await ctl.run_until_stopped(follow_all)
    except Exception as exc:
        counters[C_ERRORS] += 1
        records[0].errors.append(describe(exc))
    finally:
        signal.close()
        for sub in subscribers:
            sub.close()
    return {"subscribers": [dataclasses.asdict(r) for r in records]}
