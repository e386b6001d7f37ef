"""Soak: publish/subscribe/delete churn against trickle-trio for a set time, sampling the
server's resident memory and live trio task count at intervals. Not run in CI.

    .venv/bin/python bench/soak.py --duration 600 --interval 30 \\
        --csv bench/results/soak.csv > soak.md

The server runs in a child process (``python -m bench.soak_server``): ``run_server``
with the settings ``trickle-trio serve`` would use (autocreate on, loopback, port 0),
plus a sampler task that prints one JSON line per interval with its own RSS (from
psutil), ``trio.lowlevel.current_statistics().tasks_living``, the
number of objects the garbage collector tracks (the server ``gc.freeze()``s what it
imported at start-up, so this counts what it made since) and the registry's gauges.
Why a child and not ``trickle-trio serve``: the CLI exposes no task count, and an
in-process server would share its RSS and its one core with the load generator. The
child is the same server code with a sampler beside it, in a process of its own.

The load (this process; real loopback sockets through httpx) runs ``--lanes`` lanes.
Each lane, until the time is up, plays one channel's life and starts the next one:

- a publisher writes 3-15 segments the way the reference clients do (preconnect
  ``POST seq+1``, stream the data in chunks, end the body); one segment in 8 is
  abandoned mid-body (the connection dropped) and one in 10 dropped with
  ``DELETE /{ch}/{seq}``; one channel in 6 sends its first segment with
  ``Lp-Trickle-Reset``;
- 1-3 subscribers follow it from ``-1`` (470 -> jump to ``Lp-Trickle-Latest``); one in 5
  hangs up mid-segment and starts again at ``-2``; every byte received is checked
  against what the publisher sent (a prefix of the segment's content);
- a stray reader asks for old and far-ahead seqs (470s) and ``/next``;
- the channel ends with ``DELETE /{ch}`` then the release of the idle preconnect (the
  PR #3824 order), or, one channel in 8, is left idle for the server's idle sweep.

The channel is created with ``POST /{ch}`` first; a channel's life takes a few seconds,
so over ten minutes a few thousand channels come and go. The server runs with
``idle_timeout`` 3 s and a sweep every second, so that the sweep takes part.

At the end the load stops, every channel is left to drain, and a last sample is taken
after a full GC: the task count must be back to its idle value (which counts the
sampler's own two tasks). Output: a Markdown table on stdout
(and ``--csv``), progress on stderr. Exit status 1 if any byte was wrong or the final
sample still holds channels or tasks beyond the idle baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

IDLE_TIMEOUT = 3.0
SWEEP_INTERVAL = 1.0
REQUEST_LIMIT = 30.0  # no single request of the load may take longer than this


# -- the load -------------------------------------------------------------------------------------


def segment_content(channel: str, seq: int) -> bytes:
    """What the publisher writes as ``seq`` of ``channel`` (the subscribers know it too)."""
    rng = random.Random(f"{channel}/{seq}")
    return rng.randbytes(rng.randint(1, 48 * 1024))


@dataclass
class Totals:
    channels: int = 0
    segments: int = 0
    aborted: int = 0
    dropped: int = 0
    bytes_published: int = 0
    reads: int = 0
    bytes_read: int = 0
    wrong_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Lane:
    """One lane of churn: channel after channel until the deadline."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, lane: int, totals: Totals, seed: int
    ) -> None:
        self.client = client
        self.url = url
        self.lane = lane
        self.totals = totals
        self.rng = random.Random(seed * 1000 + lane)

    async def run(self, deadline: float) -> None:
        serial = 0
        while trio.current_time() < deadline:
            serial += 1
            name = f"soak-{self.lane}-{serial}"
            try:
                await self.channel_life(name)
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                self.totals.errors[type(exc).__name__] += 1

    async def channel_life(self, name: str) -> None:
        self.totals.channels += 1
        segments = self.rng.randint(3, 15)
        done = trio.Event()
        await self.request(
            "POST", f"{self.url}/{name}", headers={"Expect-Content": "application/octet-stream"}
        )
        async with trio.open_nursery() as nursery:
            for _ in range(self.rng.randint(1, 3)):
                nursery.start_soon(self.subscriber, name, done)
            nursery.start_soon(self.stray_reader, name, done)
            await self.publisher(name, segments, done)

    # -- publisher ------------------------------------------------------------------------------

    async def publisher(self, name: str, segments: int, done: trio.Event) -> None:
        base = f"{self.url}/{name}"
        swept = self.rng.random() < 1 / 8
        reset = self.rng.random() < 1 / 6
        try:
            async with trio.open_nursery() as posts:
                preconnect = await posts.start(self.post, base, 0, reset)
                for seq in range(segments):
                    current, preconnect = preconnect, await posts.start(self.post, base, seq + 1)
                    data = segment_content(name, seq)
                    if self.rng.random() < 1 / 10:  # drop it: close the body, DELETE the seq
                        current.release()
                        await self.request("DELETE", f"{base}/{seq}")
                        self.totals.dropped += 1
                        continue
                    abort_at = len(data) // 2 if self.rng.random() < 1 / 8 else None
                    await current.write(data, self.rng, abort_at)
                    self.totals.segments += 1
                    self.totals.bytes_published += len(data) if abort_at is None else abort_at
                    if abort_at is not None:
                        self.totals.aborted += 1
                if swept:
                    # Walk away: the idle preconnect stays until the sweep deletes the channel.
                    await trio.sleep(IDLE_TIMEOUT + 2 * SWEEP_INTERVAL + 1)
                else:
                    await self.request("DELETE", base)
                preconnect.release()
        finally:
            done.set()

    async def post(
        self,
        base: str,
        seq: int,
        reset: bool = False,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """A POST whose body is fed through a memory channel: idle until written."""
        send_chan, recv_chan = trio.open_memory_channel[bytes | None](16)
        body = PostBody(send_chan)
        headers = {"Content-Type": "application/octet-stream"}
        if reset:
            headers["Lp-Trickle-Reset"] = "1"

        async def content() -> AsyncIterator[bytes]:
            async for chunk in recv_chan:  # ends when the writer closes its side
                if chunk is None:
                    raise _Abort
                yield chunk

        with trio.move_on_after(REQUEST_LIMIT * 4):
            task_status.started(body)
            try:
                response = await self.client.post(
                    f"{base}/{seq}", content=content(), headers=headers
                )
                self.totals.statuses[response.status_code] += 1
            except _Abort:
                pass  # deliberate: counted as an abandoned segment
            except httpx.HTTPError as exc:
                self.totals.errors[type(exc).__name__] += 1

    # -- subscribers ----------------------------------------------------------------------------

    async def subscriber(self, name: str, done: trio.Event) -> None:
        seq = -1
        leave_once = self.rng.random() < 1 / 5
        for _ in range(200):  # bounded: a channel has at most 16 segments
            try:
                with trio.fail_after(REQUEST_LIMIT):
                    async with self.client.stream("GET", f"{self.url}/{name}/{seq}") as resp:
                        self.totals.statuses[resp.status_code] += 1
                        if resp.status_code == 404 or "lp-trickle-closed" in resp.headers:
                            return
                        if resp.status_code == 470:
                            seq = int(resp.headers["lp-trickle-latest"])
                            continue
                        got = int(resp.headers["lp-trickle-seq"])
                        expected = segment_content(name, got)
                        received = bytearray()
                        async for chunk in resp.aiter_raw():
                            received += chunk
                            if leave_once and len(received) > 1000:
                                break
                        self.check(expected, received)
                        if leave_once and len(received) > 1000:
                            leave_once = False
                            seq = -2  # come back to the segment being written
                            continue
                        seq = got + 1
            except trio.TooSlowError:
                self.totals.errors["subscriber timeout"] += 1
                return
            except httpx.HTTPError as exc:
                self.totals.errors[type(exc).__name__] += 1
                if done.is_set():
                    return
                await trio.sleep(0.1)

    def check(self, expected: bytes, received: bytearray) -> None:
        self.totals.reads += 1
        self.totals.bytes_read += len(received)
        # A complete segment equals its content; an abandoned one is a prefix of it.
        if not expected.startswith(received):
            self.totals.wrong_bytes += 1

    async def stray_reader(self, name: str, done: trio.Event) -> None:
        base = f"{self.url}/{name}"
        while not done.is_set():
            await trio.sleep(self.rng.uniform(0.2, 1.0))
            seq = self.rng.choice([0, 1, 40, 1000, -6, -3])
            try:
                with trio.fail_after(REQUEST_LIMIT), trio.move_on_after(0.5):
                    async with self.client.stream("GET", f"{base}/{seq}") as resp:
                        self.totals.statuses[resp.status_code] += 1
                        async for _ in resp.aiter_raw():
                            pass
                await self.request("GET", f"{base}/next")
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                self.totals.errors[type(exc).__name__] += 1

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> None:
        with trio.fail_after(REQUEST_LIMIT):
            response = await self.client.request(method, url, headers=headers)
        self.totals.statuses[response.status_code] += 1


class _Abort(Exception):
    """Raised inside a request body: the publisher's connection breaks mid-segment."""


class PostBody:
    """The publisher's side of one POST: write a segment, or let the preconnect go."""

    def __init__(self, send_chan: trio.MemorySendChannel[bytes | None]) -> None:
        self.send_chan = send_chan

    async def write(self, data: bytes, rng: random.Random, abort_at: int | None) -> None:
        async with self.send_chan:
            position = 0
            while position < len(data):
                size = rng.randint(1024, 16 * 1024)
                if abort_at is not None and position + size >= abort_at:
                    await self.send_chan.send(data[position:abort_at])
                    await self.send_chan.send(None)  # the connection breaks
                    return
                await self.send_chan.send(data[position : position + size])
                position += size
                await trio.sleep(rng.uniform(0.002, 0.02))

    def release(self) -> None:
        self.send_chan.close()  # the body ends: zero bytes if nothing was written


# -- the parent: start the child, run the load, sample --------------------------------------------


@dataclass
class Sample:
    task_names: list[str]
    elapsed: float
    rss_kib: int
    tasks: int
    py_objects: int
    channels: int
    subscribers: int
    publishers: int
    preconnects: int
    segments: int
    reads: int
    types: dict[str, int]
    rss_trimmed_kib: int | None
    deadline_heap: int | None
    gc_runs: list[int]
    note: str = ""


async def soak(args: argparse.Namespace, command: list[str], cwd: str, server_log: Any) -> int:
    process = await trio.lowlevel.open_process(
        command, stdin=-1, stdout=-1, stderr=server_log, cwd=cwd
    )
    assert process.stdout is not None
    assert process.stdin is not None
    lines = LineReader(process.stdout)
    url = json.loads(await lines.next())["url"]
    totals = Totals()
    samples: list[Sample] = []
    first = json.loads(await lines.next())
    start = first["t"]

    def record(raw: dict[str, Any], note: str = "") -> Sample:
        sample = Sample(
            task_names=raw["task_names"],
            elapsed=raw["t"] - start,
            rss_kib=raw["rss_kib"],
            tasks=raw["tasks"],
            py_objects=raw["py_objects"],
            channels=raw["channels_open"],
            subscribers=raw["subscribers_attached"],
            publishers=raw["publishers_attached"],
            preconnects=raw["preconnects_idle"],
            segments=totals.segments,
            reads=totals.reads,
            types=raw["types"],
            rss_trimmed_kib=raw["rss_trimmed_kib"],
            deadline_heap=raw.get("deadline_heap"),
            gc_runs=raw["gc_runs"],
            note=note,
        )
        samples.append(sample)
        if args.types_log:
            with open(args.types_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"elapsed": round(sample.elapsed), "types": sample.types}))
                f.write("\n")
        print(
            f"[{sample.elapsed:7.1f}s] rss={sample.rss_kib / 1024:.1f}MiB tasks={sample.tasks} "
            f"channels={sample.channels} segments={sample.segments} reads={sample.reads} "
            f"wrong={totals.wrong_bytes} errors={sum(totals.errors.values())} {note}",
            file=sys.stderr,
            flush=True,
        )
        return sample

    idle = record(first, "idle, before load")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with trio.open_nursery() as nursery:

        async def read_samples() -> None:
            while True:
                record(json.loads(await lines.next()))

        nursery.start_soon(read_samples)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None)) as client:
            deadline = trio.current_time() + args.duration
            async with trio.open_nursery() as lanes:
                for lane in range(args.lanes):
                    lanes.start_soon(Lane(client, url, lane, totals, args.seed).run, deadline)
        # Load over and every client connection closed: give the idle sweep and
        # hypercorn's keep-alive timeout their time.
        await trio.sleep(IDLE_TIMEOUT + 3 * SWEEP_INTERVAL)
        nursery.cancel_scope.cancel()
    # Then ask for samples (each after a full GC) until the server is idle again, or 30 s.
    final = samples[-1]
    for _ in range(30):
        await process.stdin.send_all(b"sample\n")
        final = record(json.loads(await lines.next()), "after load, drained, full GC")
        if final.channels == 0 and final.tasks <= idle.tasks:
            break
        samples.pop()
        await trio.sleep(1)
    await process.stdin.aclose()
    with trio.move_on_after(10):
        await process.wait()
    if process.returncode is None:
        process.terminate()
        await process.wait()

    report(samples, totals, args)
    extra = Counter(final.task_names) - Counter(idle.task_names)
    if extra:
        print(f"tasks left beyond the idle ones: {dict(extra)}")
    grown = Counter(final.types)
    grown.subtract(idle.types)
    print(f"objects by type, after minus before (top 12 of each): {dict(+grown)}")
    print(f"trio deadline heap entries: {idle.deadline_heap} before, {final.deadline_heap} after")
    for sample in (idle, final):
        if sample.rss_trimmed_kib is not None:
            print(
                f"{sample.note}: RSS {sample.rss_kib / 1024:.1f} MiB, "
                f"{sample.rss_trimmed_kib / 1024:.1f} MiB after malloc_trim(0)"
            )
    clean = totals.wrong_bytes == 0 and final.channels == 0 and final.tasks <= idle.tasks
    return 0 if clean else 1


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError("the server child exited")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def report(samples: list[Sample], totals: Totals, args: argparse.Namespace) -> None:
    columns = [
        "elapsed s",
        "RSS MiB",
        "trio tasks",
        "py objects (unfrozen)",
        "channels",
        "subscribers",
        "publishers",
        "idle preconnects",
        "segments published",
        "segments read",
        "full GCs",
        "note",
    ]
    rows = [
        [
            f"{s.elapsed:.0f}",
            f"{s.rss_kib / 1024:.1f}",
            str(s.tasks),
            str(s.py_objects),
            str(s.channels),
            str(s.subscribers),
            str(s.publishers),
            str(s.preconnects),
            str(s.segments),
            str(s.reads),
            str(s.gc_runs[2]),
            s.note,
        ]
        for s in samples
    ]
    gc_note = f", gc thresholds {args.gc_thresholds}" if args.gc_thresholds else ""
    print(f"Soak: {args.duration:.0f} s, {args.lanes} lanes, seed {args.seed}{gc_note}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        f"channels {totals.channels}, segments {totals.segments} "
        f"({totals.bytes_published / 1e6:.1f} MB; {totals.aborted} abandoned mid-body, "
        f"{totals.dropped} dropped with DELETE), segment reads {totals.reads} "
        f"({totals.bytes_read / 1e6:.1f} MB), wrong bytes {totals.wrong_bytes}"
    )
    print(f"statuses {dict(sorted(totals.statuses.items()))}")
    print(f"client-side errors {dict(totals.errors)}")
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--lanes", type=int, default=8, help="channels churning at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--csv", help="also write the samples here")
    parser.add_argument("--server-log", default=os.devnull, help="the server child's stderr")
    parser.add_argument("--types-log", help="append each sample's top object types (JSON lines)")
    parser.add_argument(
        "--gc-thresholds",
        help="diagnostic: gc.set_threshold(...) in the server after it started, e.g. 700,10,10",
    )
    args = parser.parse_args()
    command = [sys.executable, "-m", "bench.soak_server", "--interval", str(args.interval)]
    command += ["--idle-timeout", str(IDLE_TIMEOUT), "--sweep-interval", str(SWEEP_INTERVAL)]
    if args.gc_thresholds:
        command += ["--gc-thresholds", args.gc_thresholds]
    # The child runs from the checkout this file is in (``-m`` puts the directory first).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(args.server_log, "wb") as server_log:
        return trio.run(soak, args, command, root, server_log)


if __name__ == "__main__":
    sys.exit(main())
