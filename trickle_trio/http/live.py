"""``GET /{ch}/live``: one endless response carrying every segment's bytes, back to back.

For players and tools (``ffplay``, ``mpv``, VLC, ``curl ... | ffmpeg -i -``, the watch
page's player): they read one long HTTP response and never see seqs. The route is ours
(PROTOCOL.md, "Deliberate improvements"); ``live`` can't be a seq (seqs are integers)
and the reference's only other name there is ``next``.

Rules:
1. The stream starts at a segment boundary, byte 0 of a segment: by default the next
   one (``start=next``: the seq the publisher writes next, so an MPEG-TS stream whose
   segments start with a keyframe starts decodable), or the one being written
   (``start=current``), or a seq in the window (``start=N``, ``-N`` as on a GET).
   Outside the window: 470 with ``Lp-Trickle-Latest``, as a segment GET.
2. The head goes out at once (200, the channel's ``Content-Type``, ``Lp-Trickle-Seq``
   of the first segment), then every segment's bytes in seq order, each from byte 0 to
   its end; zero-byte segments add nothing. Bytes are never reordered or repeated.
3. A reader holds one segment at a time: the one it is sending. It is a subscriber like
   any other (a lease of ``channel.subscribers``, counted against
   ``max_subscribers_per_channel``), so a publisher never waits for it; a slow reader
   falls behind in its own segment while the window moves on.
4. When the next seq has left the window (the reader was too slow, or a restarted
   publisher went back), the reader jumps to the live edge (where ``start`` would put a
   new reader; ``next`` for a numbered start) and goes on: counted per channel
   (``/_status``: ``live_jumps``, ``live_skipped``; ``trickle_live_jumps_total``) and
   logged with the seqs. With ``on_gap=end`` the response is cut there instead
   (connection aborted, no terminating chunk), so the client sees an error, never a
   clean end that would mean "the channel is gone".
5. DELETE of the channel: the reader finishes the bytes of the segment it is in (its
   own pace; fixed, since the DELETE closed it), then the response ends cleanly. A
   reader whose lease is cancelled (cut by the server) is cut: no terminating chunk.

Imports: trio, hypercorn's ASGI types, ``core``, ``channels`` and ``responses``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

from ..channels import Channel
from ..core import wire
from ..segment import Segment
from .extensions import Abort
from .responses import Headers, header
from .subscribe import answer_missing, cutter, subscriber_lease

logger = logging.getLogger(__name__)

__all__ = [
    "LIVE",
    "LiveCounters",
    "LiveOptions",
    "LiveQueryError",
    "live_counters",
    "live_status",
    "parse_live_query",
    "serve_live",
]

#: The route's name: ``GET /{ch}/live``.
LIVE: Final = "live"
_START_NAMES: Final = {"next": wire.SEQ_NEXT, "current": wire.SEQ_CURRENT}
_ON_GAP: Final = frozenset({"jump", "end"})

#: ``await send_parts(parts, more_body)``: the fast path's ``PARTS_EXTENSION``.
SendParts = Callable[[Sequence[bytes], bool], Awaitable[None]]


class LiveQueryError(ValueError):
    """A query string the live route does not understand (answered 400)."""


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """What a live reader asked for in its query string."""

    #: Where it starts: -1 the next segment, -2 the current one, or a seq (as on a GET).
    start: int = wire.SEQ_NEXT
    #: Cut the response when the reader falls out of the window, instead of jumping.
    end_on_gap: bool = False

    @property
    def edge(self) -> int:
        """Where a jump goes: where a new reader with this ``start`` would begin."""
        return self.start if self.start in (wire.SEQ_NEXT, wire.SEQ_CURRENT) else wire.SEQ_NEXT


def parse_live_query(query: bytes) -> LiveOptions:
    """Parse ``start=next|current|N`` and ``on_gap=jump|end`` (both optional).

    Raises:
        LiveQueryError: an unknown or repeated parameter, or a value out of its set.
    """
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise LiveQueryError("Invalid query string") from None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key not in ("start", "on_gap"):
            raise LiveQueryError(f"Unknown parameter {key!r} (start, on_gap)")
        if key in seen:
            raise LiveQueryError(f"Repeated parameter {key!r}")
        seen[key] = value
    start = wire.SEQ_NEXT
    if "start" in seen:
        text = seen["start"]
        if text in _START_NAMES:
            start = _START_NAMES[text]
        else:
            try:
                start = wire.parse_seq(text)
            except wire.InvalidSeq:
                raise LiveQueryError("start must be next, current or a seq") from None
    on_gap = seen.get("on_gap", "jump")
    if on_gap not in _ON_GAP:
        raise LiveQueryError("on_gap must be jump or end")
    return LiveOptions(start=start, end_on_gap=on_gap == "end")


@dataclass
class LiveCounters:
    """Live readers of one channel, for ``/_status`` and the watch page."""

    #: Live responses attached now.
    readers: int = 0
    #: Live responses started so far.
    started: int = 0
    #: Times a reader fell out of the window and jumped to the live edge.
    jumps: int = 0
    #: Segments those jumps skipped.
    skipped: int = 0


_COUNTERS: weakref.WeakKeyDictionary[Channel, LiveCounters] = weakref.WeakKeyDictionary()


def live_counters(channel: Channel) -> LiveCounters:
    """The live counters of ``channel`` (all zero until a live reader comes)."""
    counters = _COUNTERS.get(channel)
    if counters is None:
        counters = _COUNTERS[channel] = LiveCounters()
    return counters


def live_status(channel: Channel) -> dict[str, int]:
    """``live_readers``, ``live_jumps`` and ``live_skipped`` of ``channel``, for ``/_status``."""
    counters = _COUNTERS.get(channel) or LiveCounters()
    return {
        "live_readers": counters.readers,
        "live_jumps": counters.jumps,
        "live_skipped": counters.skipped,
    }


class _Gap(Exception):
    """Internal: the reader fell out of the window and asked to end there."""


async def serve_live(
    channel: Channel,
    options: LiveOptions,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    *,
    cancel_on_close: Callable[[trio.CancelScope], None] | None = None,
    send_parts: SendParts | None = None,
    abort: Abort | None = None,
) -> None:
    """Answer ``GET /{ch}/live``: the channel's segments as one endless response.

    See the module's rules. The client leaving is noticed through ``cancel_on_close``
    when the server offers it (the fast path's ``DISCONNECT_EXTENSION``), else by a task
    reading ``receive()``; chunks leave through ``send_parts`` when offered. A reader
    cut for the bound on pinned segments is cut as a segment GET's is (``abort``).

    Cancellation: by the channel (the lease's scope) or by the client leaving: the
    response is left unfinished, so the connection closes with no terminating chunk.
    """
    lease = await subscriber_lease(send, channel)
    if lease is None:
        return
    with lease as scope:
        found = channel.segment_for_read(options.start)
        if found.segment is None:
            await answer_missing(send, channel, found.seq, found.latest)
            return
        counters = live_counters(channel)
        counters.readers += 1
        counters.started += 1
        try:
            if cancel_on_close is not None:
                with trio.CancelScope() as gone:
                    cancel_on_close(gone)
                    await _stream(
                        send,
                        channel,
                        found.segment,
                        found.latest,
                        options,
                        scope,
                        send_parts,
                        abort,
                    )
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
                await _stream(
                    send, channel, found.segment, found.latest, options, scope, send_parts, abort
                )
                nursery.cancel_scope.cancel()
        finally:
            counters.readers -= 1


async def _stream(
    send: ASGISendCallable,
    channel: Channel,
    segment: Segment,
    latest: int,
    options: LiveOptions,
    scope: trio.CancelScope,
    send_parts: SendParts | None,
    abort: Abort | None = None,
) -> None:
    """The head, then segment after segment until the channel ends (clean end), the
    reader asked to end at a gap, or ``scope`` is cancelled (both: cut)."""
    reader = _Reader(send, channel, segment, options, send_parts, cutter(scope, abort))
    try:
        await reader.send_head(latest)
        with scope:
            try:
                await reader.follow()
            except _Gap:
                return  # cut: the reader asked to end where it fell out of the window
        if scope.cancelled_caught:
            return  # cut by the channel: leave the response unfinished
    finally:
        reader.release()
    end: Any = {"type": "http.response.body", "body": b"", "more_body": False}
    # Shielded: ending the response recycles the connection inside this send.
    with trio.CancelScope(shield=True):
        await send(end)
    logger.debug("live reader ended channel=%s", channel.name)


class _Reader:
    """One live response's position: the segment it holds (and sends) now.

    The held segment is counted by the channel (``Channel.reading``) from the moment it
    is taken until the next one replaces it or the response ends, so a reader of a
    deleted channel shows in ``retained_bytes`` and never holds more than one segment.
    """

    def __init__(
        self,
        send: ASGISendCallable,
        channel: Channel,
        segment: Segment,
        options: LiveOptions,
        send_parts: SendParts | None,
        cut: Callable[[], None],
    ) -> None:
        self.send = send
        self.channel = channel
        self.options = options
        self.send_parts = send_parts
        self.segment = segment
        self._cut = cut
        self._held = channel.reading(segment, cut)

    def release(self) -> None:  # sync on purpose
        self.channel.done_reading(self.segment, self._held)

    def _take(self, segment: Segment) -> None:  # sync on purpose
        held = self.channel.reading(segment, self._cut)
        self.channel.done_reading(self.segment, self._held)
        self._held = held
        self.segment = segment

    async def send_head(self, latest: int) -> None:
        """200 with the channel's Content-Type and the first seq, on the wire now.

        Cancellation: shielded (whole or not at all, as a segment GET's head).
        """
        channel = self.channel
        headers: Headers = [
            (b"content-type", channel.mime_type.encode("latin-1", "replace")),
            header(wire.SEQ_HEADER, self.segment.seq),
            header(wire.LATEST_HEADER, latest),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        start: Any = {"type": "http.response.start", "status": 200, "headers": headers}
        # An empty body message puts the head on the wire now (the fast path holds a
        # head until the first body message): a player knows at once it is connected.
        flush: Any = {"type": "http.response.body", "body": b"", "more_body": True}
        # Until it is out this reader is a pending head of the channel: a DELETE
        # answers no publisher before that.
        channel.head_pending()
        with trio.CancelScope(shield=True):
            try:
                await self.send(start)
            finally:
                channel.head_sent()
            await self.send(flush)
        channel.metrics.responses[200] += 1
        logger.debug("live reader started channel=%s seq=%d", channel.name, self.segment.seq)

    async def follow(self) -> None:
        """Send the held segment and every following one; return when the channel has
        ended. Raises ``_Gap`` where ``on_gap=end`` asks to stop."""
        channel = self.channel
        counters = live_counters(channel)
        while True:
            await self._send_segment()
            if channel.closed:
                return  # deleted: the segment it was in is whole, nothing follows
            sent = self.segment.seq
            following = channel.segment_for_read(sent + 1).segment
            if following is None:
                edge = channel.segment_for_read(self.options.edge)
                if self.options.end_on_gap:
                    logger.warning(
                        "live reader fell out of the window channel=%s seq=%d latest=%d on_gap=end",
                        channel.name,
                        sent + 1,
                        edge.latest,
                    )
                    raise _Gap
                following = edge.segment
                if following is None or following is self.segment:
                    # ``current`` has no segment in the window (far-ahead preconnects
                    # took its slot): the next one is always there to wait on.
                    following = channel.segment_for_read(wire.SEQ_NEXT).segment
                if following is None or following is self.segment:
                    # Never send a segment twice; an open channel always has its next
                    # segment, so this is a state nobody should reach: cut, visibly.
                    logger.warning(
                        "live reader has no live edge channel=%s seq=%d", channel.name, sent
                    )
                    raise _Gap
                skipped = max(following.seq - sent - 1, 0)
                counters.jumps += 1
                counters.skipped += skipped
                channel.metrics.live_jumps += 1
                logger.warning(
                    "live reader jumped channel=%s from=%d to=%d skipped=%d",
                    channel.name,
                    sent,
                    following.seq,
                    skipped,
                )
            self._take(following)

    async def _send_segment(self) -> None:
        """Send the held segment from byte 0 until it has ended.

        Cancellation: atomic per chunk handed to the server; the caller cuts.
        """
        segment = self.segment
        metrics = self.channel.metrics
        index = 0
        while await segment.wait_readable(index):
            if self.send_parts is None:
                data = segment.view_from(index)
                index = len(segment.chunks)
                metrics.bytes_out += len(data)
                body: Any = {"type": "http.response.body", "body": data, "more_body": True}
                await self.send(body)
            else:
                pieces = segment.chunks[index:]
                index += len(pieces)
                metrics.bytes_out += sum(map(len, pieces))
                await self.send_parts(pieces, True)


async def _watch_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (hypercorn only says so via receive)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
