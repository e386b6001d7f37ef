"""``trickle-trio publish``: stdin to a channel, cut into segments.

    ffmpeg -re -i in.mp4 -c copy -f mpegts - | trickle-trio publish http://127.0.0.1:2939/cam

Where segments end is :mod:`.cutter`'s business (MPEG-TS at keyframes by default, or on
time, by size, by line). A segment starts with its first byte and each chunk is sent as
soon as it is read. If the channel does not exist, ``publish`` creates it and deletes it
at the end (end of input, Ctrl-C, SIGTERM); a channel it found is left open, and
publishing goes on at its live edge (``Lp-Trickle-Reset``).

A server that goes away ends the command with exit 3, unless ``--reconnect S``: then it
tries again for up to S seconds (reading no input meanwhile, so a pipe's writer waits),
creates the channel again if it had created it, and publishes the interrupted segment
again, whole, at the live edge (a segment is delivered at least once). Registered by
:mod:`.cli`.

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import os
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import IO, Any, Final

import trio

from ..core import wire
from ..core.errors import ChannelClosedError
from ._util import answer_error
from .cli_common import (
    ServerGone,
    StdIO,
    add_command,
    describe_error,
    non_negative_float,
    positive_float,
    positive_int,
    seq_arg,
    server_draining,
    server_gone,
)
from .cli_stats import Meter
from .cutter import CUT, Action, ByteCutter, Cutter, IntervalCutter, LineCutter, TSCutter
from .publisher import Publisher, PublisherSegment, open_publisher
from .transport import Transport

__all__ = ["COMMANDS", "add_parsers", "make_cutter"]

_READ_SIZE: Final = 65536
_TS_TYPES: Final = frozenset({"video/mp2t", "video/mpegts"})
#: A segment under way is kept (to publish again after a reconnect) up to this size.
REPLAY_MAX: Final = 64 * 1024 * 1024
BACKOFF: Final = (0.25, 5.0)


def add_parsers(sub: Any) -> dict[str, argparse.ArgumentParser]:
    publish = add_command(
        sub,
        "publish",
        summary="publish stdin to a channel, cut into segments",
        description="Publish stdin to a channel, cut into segments, each sent as it is read."
        "\n\nMPEG-TS (the default MIME type) is cut at keyframes: a segment ends at the "
        "first keyframe after --interval seconds of media and starts with the stream's "
        "PAT and PMT, so every segment plays on its own and a subscriber joining at -1 "
        "starts on a keyframe. Streams without keyframes are cut on time at 188-byte "
        "packets. Other data is cut every --interval seconds, every --segment-bytes, or "
        "per line (--lines).\n\n"
        "A channel that does not exist is created and deleted at the end (end of input, "
        "Ctrl-C, SIGTERM); one that exists is left open and published at its live edge.\n\n"
        "  ffmpeg -re -i in.mp4 -c copy -f mpegts - | trickle-trio publish URL\n"
        "  tail -f events.jsonl | trickle-trio publish --lines URL",
    )
    publish.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    publish.add_argument(
        "--mime-type",
        default=None,
        help="the channel's MIME type (default video/mp2t; application/jsonl with --lines)",
    )
    cut = publish.add_mutually_exclusive_group()
    cut.add_argument(
        "--interval",
        type=positive_float,
        metavar="S",
        help="segment length in seconds: MPEG-TS ends a segment at the first keyframe "
        "after S seconds of media, other data after S seconds of wall clock (default 1)",
    )
    cut.add_argument(
        "--segment-bytes", type=positive_int, metavar="N", help="a new segment every N bytes"
    )
    cut.add_argument("--lines", action="store_true", help="one segment per line (JSON lines)")
    publish.add_argument(
        "--align",
        type=positive_int,
        metavar="N",
        help="cut on time at a multiple of N bytes instead (MPEG-TS: --align 188 cuts "
        "packets on time, ignoring keyframes; default 1 for other data)",
    )
    publish.add_argument(
        "--start",
        type=seq_arg,
        metavar="SEQ",
        help="first seq: N, or -1 for the live edge with a reset (default: 0 for a new "
        "channel, -1 for one that exists)",
    )
    publish.add_argument(
        "--create",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the channel if it does not exist",
    )
    publish.add_argument(
        "--delete",
        choices=["auto", "always", "never"],
        default="auto",
        help="delete the channel at the end: auto = only if this command created it",
    )
    publish.add_argument(
        "--reconnect",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="when the server goes away, keep trying for S seconds and publish the "
        "interrupted segment again (0 = off: exit 3 at once)",
    )
    publish.add_argument(
        "--stats",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="every S seconds, a line of statistics on stderr: segments, bytes, bitrate, "
        "seq, lag (the longest a chunk of input waited) (0 = off)",
    )
    return {"publish": publish}


def make_cutter(args: argparse.Namespace, mime_type: str) -> Cutter:
    """The cutter the options ask for."""
    if args.segment_bytes is not None:
        return ByteCutter(args.segment_bytes)
    if args.lines:
        return LineCutter()
    interval = args.interval or 1.0
    if args.align is None and mime_type.lower() in _TS_TYPES:
        return TSCutter(interval)
    return IntervalCutter(interval, args.align or 1)


async def _read_input(
    stdin: IO[bytes], send_chan: trio.MemorySendChannel[tuple[float, bytes]]
) -> None:
    """Read stdin in a thread, chunk by chunk, as soon as bytes are there; each chunk
    goes with the time it was read.

    A real file descriptor is read with ``os.read``: a thread abandoned in it (Ctrl-C
    while stdin is idle) holds no lock of the ``io`` module, which would abort the
    interpreter at exit.
    """
    read: Callable[[int], bytes]
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):  # io.BytesIO and friends
        read = getattr(stdin, "read1", stdin.read)
    else:
        read = partial(os.read, fd)
    async with send_chan:
        while data := await trio.to_thread.run_sync(read, _READ_SIZE, abandon_on_cancel=True):
            await send_chan.send((trio.current_time(), data))


class _Feed:
    """The input, cut into actions, and the segment under way (kept for a replay)."""

    def __init__(
        self,
        cutter: Cutter,
        recv_chan: trio.MemoryReceiveChannel[tuple[float, bytes]],
        meter: Meter,
    ) -> None:
        self.cutter = cutter
        self.recv_chan = recv_chan
        self.meter = meter
        self.actions: deque[Action] = deque()
        self.ended = False
        #: The bytes of the segment under way, sent or being sent; None past REPLAY_MAX.
        self.held: list[bytes] | None = []
        self.held_size = 0

    async def publish(self, pub: Publisher) -> None:
        """Publish until the input ends; every segment acknowledged.

        Cancellation (or an error): nothing is lost from the feed; :meth:`replay` puts
        the segment under way back in front of it.
        """
        segment: PublisherSegment | None = None
        while True:
            if not self.actions:
                if self.ended:
                    break
                await self._more()
                continue
            action = self.actions[0]
            if action is CUT:
                if segment is not None:
                    await segment.aclose()
                    self.meter.segment_done(segment.seq)
                    segment = None
                self.actions.popleft()
                self.held, self.held_size = [], 0
                continue
            if segment is None:
                segment = await pub.next()
            await segment.send(action)
            self.actions.popleft()
            self.meter.bytes += len(action)
            if self.held is not None:
                self.held.append(action)
                self.held_size += len(action)
                if self.held_size > REPLAY_MAX:
                    self.held = None
        if segment is not None:
            await segment.aclose()
            self.meter.segment_done(segment.seq)
        self.held, self.held_size = [], 0

    def replay(self) -> bool:
        """Put the segment under way back in front; False if it was too large to keep."""
        if self.held is None:
            self.held, self.held_size = [], 0
            return False
        self.actions.extendleft(reversed(self.held))
        self.held, self.held_size = [], 0
        return True

    async def _more(self) -> None:
        """Wait for input (or for the cutter's clock) and cut it into actions."""
        with trio.move_on_at(self.cutter.wake_at()) as scope:
            try:
                read_at, data = await self.recv_chan.receive()
            except trio.EndOfChannel:
                self.actions.extend(self.cutter.finish())
                self.ended = True
                return
        now = trio.current_time()
        if scope.cancelled_caught:
            self.actions.extend(self.cutter.poll(now))
            return
        self.meter.note_lag(now - read_at)
        self.actions.extend(self.cutter.feed(data, now))


async def _ensure_channel(transport: Transport, url: str, mime_type: str, create: bool) -> bool:
    """True if this command created the channel."""
    response = await transport.request("GET", f"{url}/next")
    if response.status != 404:
        error = answer_error(url, response.status, response.headers, response.body)
        if error is not None:
            raise error
        return False
    if not create:
        return False  # a server with autocreate makes it on the first POST
    response = await transport.request(
        "POST", url, [(wire.EXPECT_CONTENT_HEADER, mime_type), ("Content-Type", mime_type)]
    )
    error = answer_error(url, response.status, response.headers, response.body)
    if error is not None:
        raise error
    return True


async def _publish(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    url = args.url.rstrip("/")
    mime_type = args.mime_type or ("application/jsonl" if args.lines else "video/mp2t")
    meter = Meter("publish", io.stderr)
    send_chan, recv_chan = trio.open_memory_channel[tuple[float, bytes]](4)
    feed = _Feed(make_cutter(args, mime_type), recv_chan, meter)
    created: bool | None = None
    lost_at: float | None = None
    segments_then = 0
    backoff = BACKOFF[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_input, io.stdin, send_chan)
        if args.stats > 0:
            nursery.start_soon(meter.run, args.stats)
        while True:
            try:
                made = await _ensure_channel(transport, url, mime_type, args.create)
                if created is None:
                    created = made
                    start = args.start if args.start is not None else (0 if made else -1)
                else:
                    start = wire.SEQ_NEXT  # again after a reconnect: at the live edge
                delete = args.delete == "always" or (args.delete == "auto" and created)
                async with open_publisher(
                    url, mime_type, start=start, delete_on_close=delete, transport=transport
                ) as pub:
                    await feed.publish(pub)
                break
            except Exception as exc:
                if isinstance(exc, ChannelClosedError):
                    why = await server_draining(transport, url)
                    if why is not None:
                        exc = ServerGone(why)
                if not server_gone(exc):
                    raise
                if args.reconnect <= 0:
                    raise exc from None
                now = trio.current_time()
                if lost_at is None or meter.segments > segments_then:
                    lost_at, segments_then, backoff = now, meter.segments, BACKOFF[0]
                if now - lost_at >= args.reconnect:
                    raise ServerGone(
                        f"{describe_error(exc, url)}; gave up reconnecting after "
                        f"{args.reconnect:g} s"
                    ) from exc
                kept = feed.replay()
                print(
                    f"trickle-trio: server lost ({describe_error(exc, url)}); reconnecting "
                    f"in {backoff:g} s"
                    + ("" if kept else "; the segment under way was too large to keep"),
                    file=io.stderr,
                )
                meter.reconnects += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
        nursery.cancel_scope.cancel()
    return 0


COMMANDS: Final = {"publish": _publish}
