"""Channels on trio, without HTTP: Segment, TaskScopes, Channel, ChannelRegistry.

Ownership:
- ``ChannelRegistry`` owns a nursery (lent by ``run_server``, or by a test). Every
  channel is a task in it (``Channel.run``) that lives until the channel is deleted.
- Request handlers live in hypercorn's nursery, not ours. A channel lends them cancel
  scopes (``TaskScopes.lease``): ``subscribers`` for GETs, ``publishers`` for POSTs.
- DELETE cancels the channel as one unit, in a fixed order written once in
  ``Channel.run``: subscribers are cancelled and drained (each has sent its terminal
  response) before any publisher (an idle preconnect included) is released, and the
  DELETE returns only when both groups are gone.

Nothing here blocks while holding state: ``append``/``close``/``create`` are sync, so a
decision and the state change it makes are never separated by a checkpoint.

Imports: trio, ``trickle_trio.core`` and ``trickle_trio.metrics`` (plain counters).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import trio

from .config import Settings
from .core import wire
from .core.errors import ChannelClosedError, ChannelNotFoundError, LimitExceededError
from .core.segment import SegmentState
from .core.window import Window
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)

__all__ = [
    "Channel",
    "ChannelRegistry",
    "PublishOutcome",
    "PublisherGone",
    "ReadResult",
    "Segment",
    "SegmentWriter",
    "TaskScopes",
]


class Segment(SegmentState):
    """A segment's bytes plus the wake-ups: readers waiting for bytes, idle writers.

    Readers park in :meth:`wait_chunks`. A preconnected publisher that has not sent a byte
    registers a cancel scope (:meth:`idle_writer`); closing the segment cancels it, which
    is how an idle POST is released when its segment is closed from elsewhere.
    """

    __slots__ = ("_changed", "_idle_writers", "evicted")

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        #: Closed because a later seq took its slot.
        self.evicted = False
        # Created only when a reader waits: an append with nobody waiting costs nothing.
        self._changed: trio.Event | None = None
        self._idle_writers: set[trio.CancelScope] = set()

    def append(self, data: bytes) -> bool:  # sync on purpose: never a checkpoint
        """Append a chunk and wake readers; False if closed (the bytes are discarded)."""
        if not super().append(data):
            return False
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        return True

    def close(self, *, release_writers: bool = True) -> bool:  # sync on purpose
        """Close: readers reach the end and, unless told otherwise, idle writers are
        released. False if it was closed already."""
        if not super().close():
            if release_writers:
                self.release_idle_writers()
            return False
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        if release_writers:
            self.release_idle_writers()
        return True

    def release_idle_writers(self) -> None:  # sync on purpose
        """Let go of every preconnected publisher waiting on this segment."""
        for scope in self._idle_writers:
            scope.cancel()
        self._idle_writers.clear()

    @property
    def idle_writers(self) -> int:
        """Preconnected publishers waiting on this segment without having sent a byte."""
        return len(self._idle_writers)

    async def wait_readable(self, index: int) -> bool:
        """Wait until there are chunks from ``index`` on (True) or the segment ended
        with none left there (False).

        Cancellation: atomic; raises Cancelled and leaves the segment unchanged.
        """
        if index < len(self.chunks) or self.closed:
            await trio.lowlevel.checkpoint()
        while index >= len(self.chunks) and not self.closed:
            changed = self._changed
            if changed is None:
                changed = self._changed = trio.Event()
            await changed.wait()
        return index < len(self.chunks)

    async def wait_chunks(self, index: int) -> list[bytes]:
        """The chunks from ``index`` on, waiting for at least one; ``[]`` = ended.

        Cancellation: atomic; raises Cancelled and leaves the segment unchanged.
        """
        if index < len(self.chunks) or self.closed:
            await trio.lowlevel.checkpoint()
        while index >= len(self.chunks) and not self.closed:
            changed = self._changed
            if changed is None:
                changed = self._changed = trio.Event()
            await changed.wait()
        return self.chunks[index:]

    @contextmanager
    def idle_writer(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that closing this segment cancels (enter it yourself)."""
        scope = trio.CancelScope()
        if self.closed:
            scope.cancel()
        else:
            self._idle_writers.add(scope)
        try:
            yield scope
        finally:
            self._idle_writers.discard(scope)


class TaskScopes:
    """Cancel scopes lent to request handlers, so that a channel can cancel them all.

    A handler takes a lease for as long as it serves the channel, *including* its final
    response; the channel cancels the scope (the handler enters it around its waiting)
    and waits until every lease has been returned.
    """

    def __init__(self, channel_name: str, limit: int = 0, limit_name: str = "") -> None:
        self._channel_name = channel_name
        self._limit = limit
        self._limit_name = limit_name
        self._scopes: set[trio.CancelScope] = set()
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._scopes)

    def lease(self) -> AbstractContextManager[trio.CancelScope]:
        """Lend a cancel scope (not entered) for the duration of a ``with``.

        Raises:
            ChannelClosedError: (at the call, not at ``with``) the channel is being, or
                has been, torn down.
            LimitExceededError: (429) ``limit`` leases are out already.
        """
        if self._closed:
            raise ChannelClosedError(self._channel_name)
        if self._limit and len(self._scopes) >= self._limit:
            logger.warning(
                "limit hit limit=%s channel=%s value=%d",
                self._limit_name,
                self._channel_name,
                self._limit,
            )
            raise LimitExceededError(429, self._limit_name, f"Too many {self._limit_name[4:]}")
        return self._lease()

    @contextmanager
    def _lease(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        if not self._scopes:
            self._drained = trio.Event()
        self._scopes.add(scope)
        try:
            yield scope
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._drained.set()

    def close(self) -> None:  # sync on purpose
        """Refuse new leases from now on."""
        self._closed = True

    def cancel(self) -> None:  # sync on purpose
        """Refuse new leases and cancel every lent scope."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()

    async def wait_drained(self) -> None:
        """Wait until every lease has been returned."""
        await self._drained.wait()

    async def cancel_and_drain(self) -> None:
        """Refuse new leases, cancel every lent scope and wait until all are returned.

        Cancellation: the scopes stay cancelled; the wait is abandoned.
        """
        self.cancel()
        await self.wait_drained()


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


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """The per-channel and per-registry limits (see ``Settings`` for their meaning)."""

    max_channels: int = 10_000
    max_segment_bytes: int = 64 * 1024 * 1024
    max_subscribers: int = 1_000
    max_publishers: int = 64
    #: 0 = a preconnect may idle forever.
    preconnect_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What a subscriber asked for resolved to: the segment (or None) and the metadata.

    ``latest`` is the channel's next write seq at the time of the request.
    """

    seq: int
    latest: int
    segment: Segment | None


class Channel:
    """A named stream: its window of segments, ``next_write`` and the lent scopes.

    Created by :meth:`ChannelRegistry.create`; runs as a task until deleted.
    """

    def __init__(
        self,
        name: str,
        mime_type: str,
        *,
        teardown_grace: float = 5.0,
        metrics: ServerMetrics | None = None,
        limits: ChannelLimits | None = None,
    ) -> None:
        self.name = name
        self.limits = limits if limits is not None else ChannelLimits()
        self.metrics = metrics if metrics is not None else _unshared_metrics()
        self.mime_type = mime_type
        self.next_write = 0
        self.created_at = trio.current_time()
        #: trio time of the last write (first byte of a segment, creation, empty segment).
        self.write_time = self.created_at
        self.closed = False
        self.window: Window[Segment] = Window(wire.WINDOW)
        self.subscribers = TaskScopes(
            name, self.limits.max_subscribers, "max_subscribers_per_channel"
        )
        self.publishers = TaskScopes(name, self.limits.max_publishers, "max_publishers_per_channel")
        self._teardown_grace = teardown_grace
        self._delete_requested = trio.Event()
        self._deleted = trio.Event()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Channel {self.name!r} next_write={self.next_write} {state}>"

    # -- decisions (sync on purpose) ---------------------------------------------------

    def _put(self, segment: Segment) -> Segment:
        evicted = self.window.put(segment)
        if evicted is not None and evicted is not segment and not evicted.closed:
            evicted.evicted = True  # its idle preconnects are let go without advancing
            evicted.close()
            self.metrics.segments["evicted"] += 1
            logger.info(
                "segment evicted channel=%s seq=%d bytes=%d", self.name, evicted.seq, evicted.size
            )
        return segment

    def segment_for_write(self, seq: int, *, reset: bool = False) -> Segment:
        """Find or make the segment a POST for ``seq`` (``-1`` = next write) appends to.

        An open segment with that seq is reused (two POSTs to one open seq append, as in
        the reference); a closed one is replaced by a fresh segment (a retry starts the
        seq afresh; readers of the old one keep what they had). With ``reset``, every
        segment in the window with a smaller seq is closed first.

        Raises:
            ChannelClosedError: the channel is closed.
        """
        if self.closed:
            raise ChannelClosedError(self.name)
        if seq == wire.SEQ_NEXT:
            seq = self.next_write
        if seq < 0:
            raise ValueError(f"cannot write seq {seq}")
        if reset:
            for segment in list(self.window):
                if segment.seq < seq:
                    segment.close()
        existing = self.window.get(seq)
        if existing is not None and not existing.closed:
            return existing
        return self._put(Segment(seq))

    def segment_for_read(self, seq: int) -> ReadResult:
        """Resolve a GET for ``seq`` (``-1``/``-2``/``-N`` allowed).

        The segment is precreated when the reader is just ahead of the writer (``seq ==
        next_write``, or nothing written yet and ``seq == 1``) and the channel is open.
        """
        latest = self.next_write
        seq = wire.resolve_read_seq(seq, latest)
        segment = self.window.get(seq)
        if segment is None and not self.closed and (seq == latest or (latest == 0 and seq == 1)):
            segment = self._put(Segment(seq))
            logger.debug("segment precreated channel=%s seq=%d", self.name, seq)
        return ReadResult(seq, latest, segment)

    def segment_in_window(self, seq: int) -> Segment | None:
        """The segment a ``DELETE /{ch}/{seq}`` means (``-N`` resolved), if present."""
        return self.window.get(wire.resolve_read_seq(seq, self.next_write))

    def drop_segment(self, segment: Segment) -> None:  # sync on purpose
        """``DELETE /{ch}/{seq}``: a publisher drops the segment; close it.

        A dropped segment with no bytes at or past the live edge is an empty segment,
        so, as for a zero-byte POST, ``next_write`` moves past it *before* its readers
        wake: they see the fresh ``Lp-Trickle-Latest`` and a reader looping on ``-1``
        is never handed the same empty segment again.
        """
        if not segment.closed and segment.size == 0 and segment.seq >= self.next_write:
            self.next_write = segment.seq + 1
            self.write_time = trio.current_time()
        segment.close()

    def note_first_byte(self, seq: int) -> None:
        """The first byte of segment ``seq`` arrived: it is the live edge now (even if
        that moves ``next_write`` backwards: a restarted publisher wins)."""
        self.next_write = seq + 1
        self.write_time = trio.current_time()

    # -- lifecycle ------------------------------------------------------------------------

    def request_delete(self) -> None:  # sync on purpose
        """Ask the channel's task to tear the channel down (idempotent)."""
        self.closed = True
        self.subscribers.close()
        self.publishers.close()
        self._delete_requested.set()

    async def wait_deleted(self) -> None:
        """Wait until the teardown has finished: no lease of this channel is left."""
        await self._deleted.wait()

    @property
    def deleted(self) -> bool:
        return self._deleted.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The channel's task: wait for deletion (or cancellation), then tear down.

        Teardown, shielded, each phase bounded by ``teardown_grace``:

        1. Mark the channel closed (new requests are refused) and close every segment
           for its readers, *without* letting go of idle preconnects yet.
        2. Wait for the subscribers to finish: each sends what its segment holds (bytes
           completed before the DELETE are never taken away) and ends its response, an
           empty 200 + ``Lp-Trickle-Closed`` if it had nothing. Only a client that
           stopped reading can hold this up; past the grace its scope is cancelled.
        3. Only then cancel the publishers: idle preconnects and writers still sending
           are answered 200 + ``Lp-Trickle-Closed``.
        4. Empty the window. Nothing of the channel is left when ``wait_deleted`` returns.
        """
        try:
            task_status.started()
            await self._delete_requested.wait()
        finally:
            self.closed = True
            self.subscribers.close()
            self.publishers.close()
            for segment in self.window:
                segment.close(release_writers=False)
            with trio.move_on_after(self._teardown_grace, shield=True) as grace:
                await self.subscribers.wait_drained()
            if grace.cancelled_caught:
                self._overran("subscribers")
                self.subscribers.cancel()
            with trio.move_on_after(self._teardown_grace, shield=True) as grace:
                await self.publishers.cancel_and_drain()
            if grace.cancelled_caught:
                self._overran("publishers")
            for segment in self.window.clear():
                segment.release_idle_writers()
            self._deleted.set()

    def _overran(self, phase: str) -> None:
        logger.warning(
            "channel teardown overran channel=%s phase=%s subscribers=%d publishers=%d",
            self.name,
            phase,
            len(self.subscribers),
            len(self.publishers),
        )


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
        self.segment.append(data)

    async def pump(self, read_chunk: Callable[[], Awaitable[bytes | None]]) -> PublishOutcome:
        """Copy chunks from ``read_chunk`` (None = end of body) into the segment.

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
            while (chunk := await read_chunk()) is not None:
                if chunk:
                    self.write(chunk)
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

    def finish(self, outcome: PublishOutcome) -> None:  # sync on purpose
        """Close the segment and apply the outcome's rule to ``next_write``."""
        channel, seq = self.channel, self.segment.seq
        if not channel.closed:
            if outcome is PublishOutcome.EMPTY:
                # go-livepeer PR #3824: an empty segment is a segment; the next one is next.
                channel.next_write = seq + 1
                channel.write_time = trio.current_time()
            elif (
                outcome is PublishOutcome.RELEASED
                and seq >= channel.next_write
                and not self.segment.evicted
            ):
                # A publisher dropped its segment (DELETE of the seq): the next is next.
                # Never backwards (an old preconnect released by a reset must not drag
                # subscribers back), and not for an eviction (a flood of far-ahead
                # preconnects must not move the live edge).
                channel.next_write = seq + 1
                channel.write_time = trio.current_time()
        if outcome is not PublishOutcome.TIMED_OUT:
            self.segment.close()
        metrics = self.metrics
        metrics.segments[outcome.value] += 1
        duration = 0.0
        if self.started_at is not None:
            duration = trio.current_time() - self.started_at
            metrics.segment_duration.observe(duration)
        logger.log(
            logging.INFO if outcome in _ORDINARY else logging.WARNING,
            "segment %s channel=%s seq=%d bytes=%d duration=%.3f",
            outcome.value,
            channel.name,
            seq,
            self.bytes_written,
            duration,
        )


_ORDINARY = frozenset({PublishOutcome.COMPLETE, PublishOutcome.EMPTY, PublishOutcome.RELEASED})


class ChannelRegistry:
    """All channels of one server, each a task in the nursery this registry was lent.

    Args:
        nursery: owns the channel tasks; cancelling it deletes every channel.
        teardown_grace: see ``Settings.teardown_grace``.
        changefeed: keep the ``_changes`` channel (created at once, its first event).
        limits: channel counts, segment sizes, attached requests, preconnect timeout.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        teardown_grace: float = 5.0,
        changefeed: bool = False,
        limits: ChannelLimits | None = None,
    ) -> None:
        self._nursery = nursery
        self._teardown_grace = teardown_grace
        self.limits = limits if limits is not None else ChannelLimits()
        self._channels: dict[str, Channel] = {}
        self.metrics = ServerMetrics()
        self.metrics.bind(self.gauges)
        self._changefeed = changefeed
        if changefeed:
            self.create(wire.CHANGEFEED_CHANNEL, "application/json")

    @classmethod
    def from_settings(cls, nursery: trio.Nursery, settings: Settings) -> ChannelRegistry:
        """A registry with the teardown grace, changefeed and limits of ``settings``."""
        return cls(
            nursery,
            teardown_grace=settings.teardown_grace,
            changefeed=settings.changefeed,
            limits=ChannelLimits(
                max_channels=settings.max_channels,
                max_segment_bytes=settings.max_segment_bytes,
                max_subscribers=settings.max_subscribers_per_channel,
                max_publishers=settings.max_publishers_per_channel,
                preconnect_timeout=settings.preconnect_timeout,
            ),
        )

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def get(self, name: str) -> Channel | None:
        """The channel called ``name``, or None."""
        return self._channels.get(name)

    def channels(self) -> list[Channel]:
        """A snapshot of every channel."""
        return list(self._channels.values())

    def gauges(self) -> dict[str, float]:
        """What is attached now (computed on demand, for ``/metrics`` and the status view)."""
        channels = list(self._channels.values())
        return {
            "channels_open": len(channels),
            "subscribers_attached": sum(len(channel.subscribers) for channel in channels),
            "publishers_attached": sum(len(channel.publishers) for channel in channels),
            "preconnects_idle": sum(
                segment.idle_writers for channel in channels for segment in channel.window
            ),
        }

    def create(self, name: str, mime_type: str = "") -> Channel:  # sync on purpose
        """Create channel ``name`` or return the existing one (creation is idempotent).

        Raises:
            LimitExceededError: (429) ``max_channels`` channels exist already.
        """
        channel = self._channels.get(name)
        if channel is not None:
            return channel
        if len(self._channels) >= self.limits.max_channels:
            logger.warning(
                "limit hit limit=max_channels channel=%s value=%d", name, self.limits.max_channels
            )
            raise LimitExceededError(429, "max_channels", "Too many channels")
        channel = Channel(
            name,
            mime_type,
            teardown_grace=self._teardown_grace,
            metrics=self.metrics,
            limits=self.limits,
        )
        self._channels[name] = channel
        self._nursery.start_soon(self._run_channel, channel, name=f"trickle channel {name}")
        logger.info("channel created channel=%s mime=%s", name, mime_type)
        self._post_change("added", name)
        return channel

    async def _run_channel(self, channel: Channel) -> None:
        try:
            await channel.run()
        finally:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]

    async def delete(self, name: str) -> None:
        """Delete channel ``name``: returns once every subscriber and publisher has left.

        Raises:
            ChannelNotFoundError: no such channel (or it is already being deleted).

        Cancellation: the deletion goes on in the channel's task; only the wait ends.
        """
        channel = self._channels.get(name)
        if channel is None or channel.closed:
            raise ChannelNotFoundError(name)
        channel.request_delete()
        await channel.wait_deleted()
        logger.info("channel deleted channel=%s", name)
        self._post_change("removed", name)

    async def close_all(self) -> None:
        """Delete every channel at once (shutdown drain); returns when all are gone."""
        channels = list(self._channels.values())
        for channel in channels:
            channel.request_delete()
        for channel in channels:
            await channel.wait_deleted()

    async def sweep(self, idle_timeout: float) -> list[str]:
        """Delete channels whose last write is older than ``idle_timeout`` seconds.

        Channels whose name starts with ``_`` (the changefeed) are never swept.
        """
        now = trio.current_time()
        swept = [
            channel.name
            for channel in self._channels.values()
            if not channel.name.startswith("_")
            and not channel.closed
            and now - channel.write_time > idle_timeout
        ]
        for name in swept:
            if name in self._channels and not self._channels[name].closed:
                logger.info("channel swept channel=%s idle_timeout=%s", name, idle_timeout)
                await self.delete(name)
        return swept

    async def run_sweeper(
        self,
        *,
        idle_timeout: float,
        sweep_interval: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep idle channels every ``sweep_interval`` seconds, forever."""
        task_status.started()
        while True:
            await trio.sleep(sweep_interval)
            await self.sweep(idle_timeout)

    def _post_change(self, kind: str, name: str) -> None:
        """Write ``{"added": [name]}`` / ``{"removed": [name]}`` to the changefeed."""
        feed = self._channels.get(wire.CHANGEFEED_CHANNEL)
        if not self._changefeed or feed is None or feed.closed:
            return
        from .local import LocalPublisher  # local builds on this module

        event = json.dumps({kind: [name]}, separators=(",", ":")).encode()
        LocalPublisher(self, feed.name).write_nowait(event)


_UNSHARED: ServerMetrics | None = None


def _unshared_metrics() -> ServerMetrics:
    """Counters for a Channel made outside a registry (tests, embedding): one shared sink."""
    global _UNSHARED
    if _UNSHARED is None:
        _UNSHARED = ServerMetrics()
    return _UNSHARED
