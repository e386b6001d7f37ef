"""Channels on trio, without HTTP: Channel, its limits, its task and teardown.

Ownership:
- ``registry.ChannelRegistry`` owns a nursery (lent by ``run_server``, or by a test).
  Every channel is a task in it (``Channel.run``) that lives until it is deleted.
- Request handlers live in hypercorn's nursery, not ours. A channel lends them cancel
  scopes (``TaskScopes.lease``): ``subscribers`` for GETs, ``publishers`` for POSTs.
- DELETE is final at once (``request_delete``, sync: the registry forgets the name in
  the same step) and then torn down by the channel's task, in a fixed order written
  once in ``Channel.run``: every subscriber attached at the DELETE starts its terminal
  response (its head handed to the connection, the rest of its segment fixed) before
  any publisher (an idle preconnect included) is answered. Nobody waits for a slow
  reader: it goes on reading the bytes its segment held, at its own pace, and the
  channel's task lives (owning those buffers, counted as retained) until the last such
  reader has finished or left.
- A segment that has left the window while a subscriber still streams it is *pinned*;
  the server's bound on pinned bytes (``pins.PinnedSegments``) cuts the readers of the
  oldest pinned segments past it (``Channel.cut_readers``).

Nothing here blocks while holding state: ``append``/``close`` and the window decisions
are sync, so a decision and the state change it makes are never separated by a
checkpoint.

Imports: trio, ``core``, ``segment``, ``leases``, ``pins`` and ``metrics`` (plain counters).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .core.channel_state import ChannelState, Read
from .core.errors import ChannelClosedError
from .leases import TaskScopes
from .metrics import ServerMetrics
from .pins import PinnedSegments
from .segment import Segment

logger = logging.getLogger(__name__)

__all__ = ["Channel", "ChannelLimits", "ReadResult", "Reader"]


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """The per-channel and per-registry limits (see ``Settings`` for their meaning)."""

    max_channels: int = 10_000
    max_segment_bytes: int = 64 * 1024 * 1024
    max_subscribers: int = 1_000
    max_publishers: int = 64
    #: 0 = a preconnect may idle forever.
    preconnect_timeout: float = 0.0


#: What a subscriber's request resolved to (``seq``, ``latest`` = the channel's next write
#: when asked, ``segment`` or None: missing).
ReadResult = Read[Segment]


@dataclass(eq=False, slots=True)
class Reader:
    """One subscriber streaming a segment (:meth:`Channel.reading`), and how to cut it
    (None once cut, or for a reader that can't be)."""

    cut: Callable[[], None] | None


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
        on_delete: Callable[[Channel], None] | None = None,
        pins: PinnedSegments | None = None,
    ) -> None:
        self.name = name
        #: The server's pinned segments (the bound on what slow readers hold), if any.
        self._pins = pins
        #: Called (sync) the moment the channel is deleted: the registry forgets the name.
        self._on_delete = on_delete
        self.limits = limits if limits is not None else ChannelLimits()
        self.metrics = metrics if metrics is not None else _unshared_metrics()
        self.mime_type = mime_type
        #: Bytes published to this channel so far (``/_status``; the watch page's rate).
        self.bytes_in = 0
        self.created_at = trio.current_time()
        #: The protocol's state and decisions (window, next write, write time).
        self.state: ChannelState[Segment] = ChannelState(
            Segment, self.created_at, on_evict=self._evicted
        )
        self.window = self.state.window
        self.subscribers = TaskScopes(
            name, self.limits.max_subscribers, "max_subscribers_per_channel"
        )
        self.publishers = TaskScopes(name, self.limits.max_publishers, "max_publishers_per_channel")
        self._teardown_grace = teardown_grace
        self._delete_requested = trio.Event()
        self._tearing_down = False
        #: Subscribers whose response head has not been handed to their connection yet.
        self._heads_pending = 0
        self._heads_changed: trio.Event | None = None
        self._settled = trio.Event()
        self._released = trio.Event()
        self._deleted = trio.Event()
        #: Segments being streamed to subscribers now, and their readers: what readers
        #: of a deleted channel still hold (``retained_bytes``), and whom to cut.
        self._reading: dict[Segment, list[Reader]] = {}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Channel {self.name!r} next_write={self.next_write} {state}>"

    @property
    def next_write(self) -> int:
        """The seq expected next (``ChannelState.next_write``; changed only there)."""
        return self.state.next_write

    @property
    def write_time(self) -> float:
        """trio time of the last write (creation, a first byte, an empty segment)."""
        return self.state.write_time

    @property
    def closed(self) -> bool:
        return self.state.closed

    # -- decisions: ChannelState's, with the trio clock (sync on purpose) ----------------

    def _evicted(self, segment: Segment) -> None:
        self.metrics.segments["evicted"] += 1
        logger.debug(
            "segment evicted channel=%s seq=%d bytes=%d", self.name, segment.seq, segment.size
        )

    def segment_for_write(self, seq: int, *, reset: bool = False) -> Segment:
        """Find or make the segment a POST for ``seq`` (``-1`` = next write) appends to
        (``ChannelState.segment_for_write``: an open segment with that seq is reused, a
        closed one replaced by a fresh one; ``reset`` first closes every smaller seq).

        Raises:
            ChannelClosedError: the channel is closed.
        """
        if self.closed:
            raise ChannelClosedError(self.name)
        segment = self.state.segment_for_write(seq, reset=reset)
        if self._reading:
            self._pin_unheld()
        return segment

    def segment_for_read(self, seq: int) -> ReadResult:
        """Resolve a GET for ``seq`` (``-1``/``-2``/``-N`` allowed), precreating the
        segment when the reader is just ahead of the writer (``ChannelState``)."""
        found = self.state.segment_for_read(seq)
        if found.precreated:
            logger.debug("segment precreated channel=%s seq=%d", self.name, found.seq)
            if self._reading:
                self._pin_unheld()
        return found

    def segment_in_window(self, seq: int) -> Segment | None:
        """The segment a ``DELETE /{ch}/{seq}`` means (``-N`` resolved), if present."""
        return self.state.segment_in_window(seq)

    def drop_segment(self, segment: Segment) -> None:  # sync on purpose
        """``DELETE /{ch}/{seq}``: close the segment; one with no bytes at or past the
        live edge moves ``next_write`` past it before its readers wake, so that a reader
        looping on ``-1`` is never handed the same empty segment again."""
        self.state.drop(segment, trio.current_time())

    def note_first_byte(self, seq: int) -> None:
        """The first byte of segment ``seq`` arrived: it is the live edge now (even if
        that moves ``next_write`` backwards: a restarted publisher wins)."""
        self.state.first_byte(seq, trio.current_time())

    # -- readers ---------------------------------------------------------------------------

    def reading(self, segment: Segment, cut: Callable[[], None] | None = None) -> Reader:
        """A subscriber starts streaming ``segment`` (pair with :meth:`done_reading`).

        ``cut`` (sync) ends that subscriber visibly (its connection reset): it is called
        if the segment stays pinned past the server's bound (:mod:`trickle_trio.pins`).
        Sync on purpose.
        """
        reader = Reader(cut)
        readers = self._reading.get(segment)
        if readers is None:
            self._reading[segment] = [reader]
        else:
            readers.append(reader)
        return reader

    def done_reading(self, segment: Segment, reader: Reader) -> None:  # sync on purpose
        readers = self._reading.get(segment)
        if readers is None:
            return
        with contextlib.suppress(ValueError):
            readers.remove(reader)
        if not readers:
            del self._reading[segment]
            if self._pins is not None:
                self._pins.release(segment)

    def _pin_unheld(self) -> None:  # sync on purpose
        """Pin every segment being read that is no longer in the window."""
        pins = self._pins
        if pins is None:
            return
        window = self.state.window
        for segment in list(self._reading):
            if window.get(segment.seq) is not segment:
                pins.pin(segment, self)

    def cut_readers(self, segment: Segment) -> int:  # sync on purpose
        """Cut every reader of ``segment`` that can be cut; how many were."""
        cut = 0
        for reader in list(self._reading.get(segment, ())):
            if reader.cut is not None:
                reader.cut()
                reader.cut = None
                cut += 1
        return cut

    @property
    def retained_bytes(self) -> int:
        """Bytes of the segments that subscribers are streaming now."""
        return sum(segment.size for segment in self._reading)

    def head_pending(self) -> None:  # sync on purpose
        """A subscriber has a segment but has not handed its response head over yet.

        Pair with :meth:`head_sent`. The teardown waits for these before it answers any
        publisher: that is what "every subscriber's terminal response starts before any
        preconnect is released" means.
        """
        self._heads_pending += 1

    def head_sent(self) -> None:  # sync on purpose
        self._heads_pending -= 1
        if not self._heads_pending and self._heads_changed is not None:
            self._heads_changed.set()
            self._heads_changed = None

    async def _wait_heads_sent(self) -> None:
        while self._heads_pending:
            if self._heads_changed is None:
                self._heads_changed = trio.Event()
            await self._heads_changed.wait()

    # -- lifecycle ------------------------------------------------------------------------

    def request_delete(self) -> None:  # sync on purpose
        """Close the channel for good and ask its task to tear it down (idempotent).

        From here on no lease is lent and no segment grows, and the registry has
        forgotten the name (``on_delete``). Every segment is closed for its readers
        (each reaches the end of the bytes it holds), but idle preconnects stay until
        the subscribers' terminal responses have started (see :meth:`run`).
        """
        if not self.closed:
            segments = self.state.close()
            self.subscribers.close()
            self.publishers.close()
            for segment in segments:
                segment.close(release_writers=False)
            if self._on_delete is not None:
                self._on_delete(self)
        self._delete_requested.set()

    async def wait_settled(self) -> None:
        """Wait until every subscriber attached at the DELETE has started its terminal
        response (at once if the channel is open or has no task tearing it down).

        Cancellation: only the wait ends.
        """
        if self.closed and self._tearing_down and not self._settled.is_set():
            await self._settled.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def wait_released(self) -> None:
        """Wait until the teardown proper has finished: every subscriber's terminal
        response has started and every publisher has been answered (each bounded by
        ``teardown_grace``). Readers may still be reading what their segments held.

        Cancellation: only the wait ends.
        """
        await self._released.wait()

    async def wait_deleted(self) -> None:
        """Wait until nothing of the channel is left: torn down, and the last reader of
        its segments has finished or left.

        Cancellation: only the wait ends.
        """
        await self._deleted.wait()

    @property
    def deleted(self) -> bool:
        return self._deleted.is_set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The channel's task: wait for deletion (or cancellation), tear down, then
        keep the segments' buffers until their last reader is done.

        Teardown, shielded, each phase bounded by ``teardown_grace`` (only a client that
        can't take even a response head can hold a phase up; it is logged):

        1. :meth:`request_delete` (already done by a DELETE): closed; every segment
           closed for its readers, idle preconnects held.
        2. Wait until every subscriber has handed its response head to its connection:
           a subscriber waiting for a first byte sends an empty 200 +
           ``Lp-Trickle-Closed``; one whose head is out only has bytes left to send,
           which are fixed now (the segment is closed).
        3. Only then answer the publishers: idle preconnects and writers still sending
           get 200 + ``Lp-Trickle-Closed``. The window is emptied.
        4. Wait (not shielded) until every subscriber has left: a slow reader gets every
           byte its segment held, at its own pace, and nobody waits for it but this task.

        Cancellation: phases 1-3 run to their end (shielded, bounded); the wait of
        phase 4 ends at once (the registry's nursery is going away).
        """
        try:
            try:
                task_status.started()
                await self._delete_requested.wait()
            finally:
                self.request_delete()
                self._tearing_down = True
                with trio.CancelScope(shield=True):
                    await self._tear_down()
            await self.subscribers.wait_drained()
        finally:
            if self._pins is not None:
                for segment in self._reading:
                    self._pins.release(segment)
            self._reading.clear()
            self._deleted.set()

    async def _tear_down(self) -> None:
        with trio.move_on_after(self._teardown_grace) as grace:
            await self._wait_heads_sent()
        if grace.cancelled_caught:
            self._overran("subscribers")
        self._settled.set()
        with trio.move_on_after(self._teardown_grace) as grace:
            await self.publishers.cancel_and_drain()
        if grace.cancelled_caught:
            self._overran("publishers")
        for segment in self.window.clear():
            segment.release_idle_writers()
        self._pin_unheld()
        self._released.set()

    def _overran(self, phase: str) -> None:
        logger.warning(
            "channel teardown overran channel=%s phase=%s heads_pending=%d publishers=%d",
            self.name,
            phase,
            self._heads_pending,
            len(self.publishers),
        )


_UNSHARED: ServerMetrics | None = None


def _unshared_metrics() -> ServerMetrics:
    """Counters for a Channel made outside a registry (tests, embedding): one shared sink."""
    global _UNSHARED
    if _UNSHARED is None:
        _UNSHARED = ServerMetrics()
    return _UNSHARED
