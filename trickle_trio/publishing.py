"""Publishing into a segment: the rules every publish follows, HTTP or in-process.

``SegmentWriter`` keeps a channel's bookkeeping while one POST body (or an in-process
source) streams into a segment: the first byte makes its seq the live edge, an empty
body is a segment that advances the next seq (go-livepeer PR #3824), a broken
connection closes the segment with the bytes written, the byte limit closes it at the
limit, and an idle preconnect is let go when its segment is closed from elsewhere.

Imports: trio and ``trickle_trio.channels``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable

import trio

from .channels import Channel
from .segment import Segment

logger = logging.getLogger(__name__)

__all__ = ["PublishOutcome", "PublisherGone", "SegmentWriter", "TakeBody", "write_whole"]


class PublishOutcome(enum.Enum):
    """How a segment's publish ended."""

    #: The body ended normally after at least one byte.
    COMPLETE = "complete"
    #: The body ended with zero bytes (an empty write, or a preconnect let go).
    EMPTY = "empty"
    #: The segment was closed from elsewhere before the first byte (DELETE of the seq,
    #: eviction, reset): the idle preconnect is released.
    RELEASED = "released"
    #: The publisher's connection broke: the segment is closed with the bytes written.
    ABORTED = "aborted"
    #: The channel was deleted while the POST was open.
    CHANNEL_CLOSED = "channel_closed"
    #: The segment reached ``max_segment_bytes``: it is closed at the limit (413).
    TOO_LARGE = "too_large"
    #: A preconnect sent nothing for ``preconnect_timeout``: the POST is let go (408)
    #: and the segment is left as it was (open, for a retry of the same seq).
    TIMED_OUT = "timed_out"


class PublisherGone(Exception):
    """Raised by a chunk source when the publisher's connection broke mid-body."""


class _TooLarge(Exception):
    """Internal: the segment hit its byte limit."""


class SegmentWriter:
    """Writes one publish into a segment and keeps the channel's bookkeeping.

    Shared by the HTTP POST handler and the in-process publisher so that both follow
    exactly the same rules (first-byte advance, zero-byte advance, abort on a broken
    connection).
    """

    __slots__ = ("bytes_written", "channel", "metrics", "segment", "started_at")

    #: Raised by :meth:`write` when the segment hits ``max_segment_bytes``.
    TooLarge = _TooLarge

    def __init__(self, channel: Channel, segment: Segment) -> None:
        self.channel = channel
        self.segment = segment
        self.metrics = channel.metrics
        self.bytes_written = 0
        self.started_at: float | None = None

    @property
    def seq(self) -> int:
        return self.segment.seq

    def write(self, data: bytes) -> None:  # sync on purpose
        """Append a chunk; the first byte makes this seq the channel's live edge.

        Bytes for a segment that was closed from elsewhere are discarded.
        """
        if self.bytes_written == 0:
            self.started_at = trio.current_time()
            if not self.segment.closed:
                self.channel.note_first_byte(self.segment.seq)
        room = self.channel.limits.max_segment_bytes - self.segment.size
        if len(data) > room and not self.segment.closed:
            data = data[: max(room, 0)]
            self._append(data)
            raise _TooLarge
        self._append(data)

    def _append(self, data: bytes) -> None:
        self.bytes_written += len(data)
        self.metrics.bytes_in += len(data)
        self.channel.bytes_in += len(data)
        self.segment.append(data)

    async def pump(
        self,
        read_chunk: Callable[[], Awaitable[bytes | None]],
        take_body: TakeBody | None = None,
    ) -> PublishOutcome:
        """Copy chunks from ``read_chunk`` (None = end of body) into the segment.

        With ``take_body`` (offered by the server's fast path), once the body has come
        in more than one piece, the server is asked to write the rest itself, as its reader
        parses it (:meth:`write` is synchronous): no queue and no wake-up of this task
        per chunk; ``read_chunk`` then only reports the end or a broken connection.
        Until the server accepts (it refuses while chunks wait in ``read_chunk``'s
        queue, so that none overtakes another), chunks come through ``read_chunk``.

        While no byte has arrived, closing the segment from elsewhere releases the wait
        (``RELEASED``), and so does ``preconnect_timeout`` (``TIMED_OUT``).
        ``PublisherGone`` from the source ends it as ``ABORTED``; reaching
        ``max_segment_bytes`` as ``TOO_LARGE``. The segment is closed (except after
        ``TIMED_OUT``) and the channel updated before this returns.

        Cancellation: the segment is closed with the bytes written so far (the channel
        is being deleted); Cancelled propagates.
        """
        outcome: PublishOutcome | None = None
        first: bytes | None = b""
        try:
            with self.segment.idle_writer() as idle, idle:
                if timeout := self.channel.limits.preconnect_timeout:
                    idle.relative_deadline = timeout
                first = await read_chunk()
                while first is not None and not first:
                    first = await read_chunk()
            if idle.cancelled_caught:
                outcome = (
                    PublishOutcome.RELEASED if self.segment.closed else PublishOutcome.TIMED_OUT
                )
                return outcome
            if first is None:
                outcome = PublishOutcome.EMPTY
                return outcome
            self.write(first)
            # A body sent in one piece (a small segment) ends here, without the takeover.
            chunk = await read_chunk()
            while chunk is not None and not chunk:
                chunk = await read_chunk()
            if chunk is not None:
                self.write(chunk)
                await self._write_rest(read_chunk, take_body)
            outcome = PublishOutcome.COMPLETE
            return outcome
        except PublisherGone:
            outcome = PublishOutcome.ABORTED
            return outcome
        except _TooLarge:
            outcome = PublishOutcome.TOO_LARGE
            logger.warning(
                "limit hit limit=max_segment_bytes channel=%s seq=%d value=%d",
                self.channel.name,
                self.segment.seq,
                self.channel.limits.max_segment_bytes,
            )
            return outcome
        finally:
            self.finish(outcome if outcome is not None else PublishOutcome.CHANNEL_CLOSED)

    async def _write_rest(
        self,
        read_chunk: Callable[[], Awaitable[bytes | None]],
        take_body: TakeBody | None,
    ) -> None:
        """Write chunks until the body ends; offer the rest to the server's reader first.

        Raises what :meth:`write` raises, also for chunks the server's reader wrote.
        """
        sink = _Sink(self) if take_body is not None else None
        try:
            with trio.CancelScope() as stop:
                if sink is not None:
                    sink.stop = stop
                while True:
                    if sink is not None and take_body is not None and not sink.taken:
                        sink.taken = take_body(sink)
                    chunk = await read_chunk()
                    if chunk is None:
                        break
                    if chunk:
                        self.write(chunk)
        finally:
            if sink is not None:
                sink.close()
        if sink is not None and sink.error is not None:
            raise sink.error

    def finish(self, outcome: PublishOutcome) -> None:  # sync on purpose
        """Close the segment and apply the outcome's rule to ``next_write``."""
        channel, seq = self.channel, self.segment.seq
        if outcome is PublishOutcome.EMPTY:
            channel.state.ended_empty(seq, trio.current_time())
        elif outcome is PublishOutcome.RELEASED:
            channel.state.released(self.segment, trio.current_time())
        if outcome is not PublishOutcome.TIMED_OUT:
            self.segment.close()
        metrics = self.metrics
        metrics.segments[outcome.value] += 1
        duration = 0.0
        if self.started_at is not None:
            duration = trio.current_time() - self.started_at
            metrics.segment_duration.observe(duration)
        # Per-segment lines are DEBUG (one per segment per channel); so is the idle
        # preconnect a closing channel lets go (every publisher's normal close).
        ordinary = outcome in _ORDINARY or (
            outcome is PublishOutcome.CHANNEL_CLOSED and not self.bytes_written
        )
        logger.log(
            logging.DEBUG if ordinary else logging.WARNING,
            "segment %s channel=%s seq=%d bytes=%d duration=%.3f",
            outcome.value,
            channel.name,
            seq,
            self.bytes_written,
            duration,
        )


#: ``take_body(sink)``: the server calls ``sink(chunk)`` for the rest of the body, from
#: its connection's reader, instead of queueing the chunks (True); or not yet (False).
TakeBody = Callable[[Callable[[bytes], None]], bool]


class _Sink:
    """Body chunks written by the server's reader; a limit hit stops the pump.

    Closed when the pump ends (any way): later chunks are dropped, as a queue nobody
    reads would drop them.
    """

    __slots__ = ("error", "stop", "taken", "writer")

    def __init__(self, writer: SegmentWriter) -> None:
        self.writer: SegmentWriter | None = writer
        self.taken = False
        self.error: _TooLarge | None = None
        self.stop: trio.CancelScope | None = None

    def __call__(self, data: bytes) -> None:  # sync: runs in the connection's reader
        writer = self.writer
        if writer is None or not data:
            return
        try:
            writer.write(data)
        except _TooLarge as exc:
            self.error = exc
            self.writer = None  # the rest of the body is dropped
            if self.stop is not None:
                self.stop.cancel()

    def close(self) -> None:
        self.writer = None
        self.stop = None


_ORDINARY = frozenset({PublishOutcome.COMPLETE, PublishOutcome.EMPTY, PublishOutcome.RELEASED})


def write_whole(channel: Channel, data: bytes, *, seq: int = -1, reset: bool = False) -> int:
    """Write one whole segment from ``data`` at once (sync); return its seq.

    Raises:
        ChannelClosedError: the channel is closed.
        SegmentWriter.TooLarge: ``data`` is over ``max_segment_bytes`` (the segment is
            closed at the limit).
    """
    writer = SegmentWriter(channel, channel.segment_for_write(seq, reset=reset))
    try:
        if data:
            writer.write(data)
    except _TooLarge:
        writer.finish(PublishOutcome.TOO_LARGE)
        raise
    writer.finish(PublishOutcome.COMPLETE if data else PublishOutcome.EMPTY)
    return writer.seq
