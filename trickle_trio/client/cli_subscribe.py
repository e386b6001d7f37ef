"""``trickle-trio subscribe``: a channel's segments to stdout, or one file per segment.

    trickle-trio subscribe http://127.0.0.1:2939/cam | ffplay -

The segments' bytes go out unchanged and in order until the channel ends (exit 0). A
server that goes away (unreachable, connection lost, shutting down) ends it with exit 3,
unless ``--reconnect S`` is given: then it tries again for up to S seconds (waiting for
the channel to come back, too) and goes on where it was: at the next segment on stdout,
at the interrupted one with ``--out-dir`` (its file is written again, whole). Registered
by :mod:`.cli`.

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
from pathlib import Path
from typing import IO, Any, Final

import trio

from ..core import wire
from ..core.errors import ChannelNotFoundError
from .cli_common import (
    ServerGone,
    StdIO,
    add_command,
    describe_error,
    non_negative_float,
    positive_int,
    seq_arg,
    server_draining,
    server_gone,
)
from .cli_stats import Meter
from .subscriber import OnGap, SubscriberSegment, open_subscriber
from .transport import Transport

__all__ = ["COMMANDS", "add_parsers", "output"]

#: How often ``--wait`` (and a reconnect) asks whether the channel exists yet.
WAIT_POLL: Final = 0.25
#: Pauses between reconnect attempts: doubling from the first to the last.
BACKOFF: Final = (0.25, 5.0)
_TS_TYPES: Final = frozenset({"video/mp2t", "video/mpegts"})


def add_parsers(sub: Any) -> dict[str, argparse.ArgumentParser]:
    subscribe = add_command(
        sub,
        "subscribe",
        summary="write a channel's segments to stdout (or files)",
        description="Write a channel's segments to stdout, unchanged and in order, or one "
        "file per segment (--out-dir), until the channel ends.\n\n"
        "  trickle-trio subscribe http://127.0.0.1:2939/cam | ffplay -\n"
        "  trickle-trio subscribe --start 0 --out-dir ./segments http://127.0.0.1:2939/cam",
    )
    subscribe.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    subscribe.add_argument(
        "--start",
        type=seq_arg,
        default=-1,
        metavar="SEQ",
        help="first segment: -1 the next one to start, -2 the one being written, or a seq",
    )
    subscribe.add_argument(
        "--out-dir",
        metavar="DIR",
        help="write one file per segment there, named by seq (0000000042.ts), each written "
        "as .part and renamed once complete",
    )
    subscribe.add_argument(
        "--wait", action="store_true", help="wait for the channel to exist (else: exit 1)"
    )
    subscribe.add_argument("--count", type=positive_int, metavar="N", help="stop after N segments")
    subscribe.add_argument(
        "--on-gap",
        choices=["jump", "fail"],
        default="jump",
        help="when the reader fell out of the window of the last 5 segments: jump to the "
        "live edge (and say so on stderr) or fail",
    )
    subscribe.add_argument(
        "--reconnect",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="when the server goes away, keep trying for S seconds and go on where it "
        "was (0 = off: exit 3 at once)",
    )
    subscribe.add_argument(
        "--stats",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="every S seconds, a line of statistics on stderr: segments, bytes, bitrate, "
        "seq, lag behind the live edge (0 = off)",
    )
    return {"subscribe": subscribe}


def _extension(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _TS_TYPES:
        return ".ts"
    if base in ("application/jsonl", "application/x-ndjson", "application/json"):
        return ".json" if base == "application/json" else ".jsonl"
    return mimetypes.guess_extension(base) or ".bin"


def _write(out: IO[bytes], data: bytes) -> None:
    """Write all of ``data``: with ``os.write`` to a real file descriptor (no ``io``
    lock held if the thread is abandoned at Ctrl-C), else through ``out``."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        out.write(data)
        out.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def output(out: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``out`` in a thread (a pipe may block).

    Cancellation: the thread is abandoned and may still write ``data`` afterwards (a
    pipe's write cannot be interrupted); the caller stops at once.
    """
    await trio.to_thread.run_sync(_write, out, data, abandon_on_cancel=True)


class _Follow:
    """One ``subscribe`` run: the segments, and the reconnects when the server goes."""

    def __init__(
        self,
        args: argparse.Namespace,
        transport: Transport,
        stdout: IO[bytes],
        stderr: IO[str],
        meter: Meter,
    ) -> None:
        self.args = args
        self.url = args.url.rstrip("/")
        self.transport = transport
        self.stdout = stdout
        self.stderr = stderr
        self.meter = meter
        self.out_dir = Path(args.out_dir) if args.out_dir else None
        self.on_gap: OnGap = "jump" if args.on_gap == "jump" else "raise"
        self.count = 0
        #: Where to go on after a reconnect (None: the start seq).
        self.resume: int | None = None
        #: The server went away: the channel, when it is back, is a new one.
        self.restarted = False
        #: Server restarts seen; files of a later one are named ``{seq}-r{n}{ext}``.
        self.generation = 0

    async def run(self) -> int:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        start, wait = self.args.start, self.args.wait
        lost_at: float | None = None  # when the server went, for the --reconnect budget
        count_then = 0
        backoff = BACKOFF[0]
        while True:
            try:
                if wait:
                    await self._wait_for_channel(lost_at)
                if lost_at is not None:
                    start = await self._resume_seq()
                if await self._read_from(start):
                    return 0
                # The stream ended: the channel was deleted, or the server is going.
                why = await server_draining(self.transport, self.url)
                if why is None:
                    return 0
                raise ServerGone(why)
            except Exception as exc:
                if not server_gone(exc) or self.args.reconnect <= 0:
                    raise
                now = trio.current_time()
                if lost_at is None or self.count > count_then:  # it had come back
                    lost_at, count_then, backoff = now, self.count, BACKOFF[0]
                    # A cut connection alone may leave the channel as it was...
                    self.restarted = isinstance(exc, ServerGone)
                else:
                    self.restarted = True  # ...but not a server that stays away
                if now - lost_at >= self.args.reconnect:
                    raise ServerGone(
                        f"{describe_error(exc, self.url)}; gave up reconnecting after "
                        f"{self.args.reconnect:g} s"
                    ) from exc
                print(
                    f"trickle-trio: server lost ({describe_error(exc, self.url)}); "
                    f"reconnecting in {backoff:g} s",
                    file=self.stderr,
                )
                self.meter.reconnects += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
                wait = True

    async def _read_from(self, start: int) -> bool:
        """Read segments from ``start``; True when ``--count`` was reached or the reader
        went away, False when the stream ended."""
        async with open_subscriber(
            self.url, start, on_gap=self.on_gap, transport=self.transport
        ) as sub:
            gaps = 0
            async for segment in sub:
                if sub.stats().seq_gap_events > gaps:
                    gaps = sub.stats().seq_gap_events
                    print(f"trickle-trio: gap: continuing at seq {segment.seq}", file=self.stderr)
                self.resume = segment.seq if self.out_dir is not None else segment.seq + 1
                try:
                    await self._deliver(segment)
                except BrokenPipeError:
                    return True  # the reader went away (`| head`, a closed player)
                self.resume = segment.seq + 1
                self.meter.segment_done(segment.seq, max(0, segment.latest - 1 - segment.seq))
                self.count += 1
                if self.args.count is not None and self.count >= self.args.count:
                    return True
        return False

    async def _deliver(self, segment: SubscriberSegment) -> None:
        if self.out_dir is None:
            async for chunk in segment:
                await output(self.stdout, chunk)
                self.meter.bytes += len(chunk)
            return
        restart = f"-r{self.generation}" if self.generation else ""
        name = f"{segment.seq:010d}{restart}{_extension(segment.content_type)}"
        part = self.out_dir / (name + ".part")
        file = await trio.open_file(part, "wb")
        try:
            async for chunk in segment:
                await file.write(chunk)
                self.meter.bytes += len(chunk)
        except BaseException:
            with trio.CancelScope(shield=True):
                await file.aclose()
                await trio.Path(part).unlink(missing_ok=True)  # never leave half a segment
            raise
        await file.aclose()
        await trio.Path(part).rename(self.out_dir / name)

    async def _wait_for_channel(self, lost_at: float | None) -> None:
        """Poll ``GET {url}/next`` until the channel exists (bounded by the reconnect
        budget when reconnecting)."""
        deadline = lost_at + self.args.reconnect if lost_at is not None else None
        with trio.move_on_at(deadline if deadline is not None else float("inf")) as scope:
            while (await self.transport.request("GET", f"{self.url}/next")).status == 404:
                self.restarted = lost_at is not None  # gone: when it is back, it is new
                await trio.sleep(WAIT_POLL)
        if scope.cancelled_caught:
            raise ChannelNotFoundError(self.url)

    async def _resume_seq(self) -> int:
        """Where to go on after a reconnect.

        If the server had gone (drained, unreachable, or the channel missing), the
        channel that is back is a new one whose seqs start again: read it from its
        start (seq 0; the live edge if 0 has left the window). After a cut connection to
        a server that kept the channel: the seq we were at, if it is still to come.
        """
        if self.restarted:
            self.restarted = False
            self.generation += 1
            return 0
        if self.resume is None:
            return int(self.args.start)
        response = await self.transport.request("GET", f"{self.url}/next")
        latest = response.headers.get(wire.LATEST_HEADER)
        ok = response.status == 200 and latest is not None and latest.strip().isdigit()
        if ok and latest is not None and self.resume <= int(latest):
            return self.resume
        return wire.SEQ_NEXT


async def _subscribe(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    meter = Meter("subscribe", io.stderr)
    follow = _Follow(args, transport, io.stdout, io.stderr, meter)
    async with trio.open_nursery() as nursery:
        if args.stats > 0:
            nursery.start_soon(meter.run, args.stats)
        code = await follow.run()
        nursery.cancel_scope.cancel()
    return code


COMMANDS: Final = {"subscribe": _subscribe}
