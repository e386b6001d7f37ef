"""ChannelState: a channel's protocol state and every decision the protocol makes on it.

The window of segments, ``next_write`` and the write time live here and change only
here; callers pass the time in (sans-IO). The trio layer (``trickle_trio.channels``)
wraps this with wake-ups and leases; every request, HTTP or in-process, goes through
these methods.

Rules (PROTOCOL.md; the reference's unless marked ours):
1. ``next_write`` starts at 0. It becomes ``seq + 1`` when the first byte of segment
   ``seq`` arrives, even backwards (a late first byte on an older seq, a restarted
   publisher, wins), and when a body for ``seq`` ends with zero bytes (go-livepeer PR
   #3824: an empty segment is a segment).
2. Ours: a preconnect released before its first byte because its segment was closed
   from elsewhere (DELETE of the seq, a reset) moves ``next_write`` past it, forwards
   only; an eviction never moves it (a flood of far-ahead preconnects must not move
   the live edge). Dropping a segment with no bytes at or past ``next_write`` moves it
   past too, before the segment's readers wake.
3. A write for ``seq`` (``-1`` = ``next_write``) reuses the open segment with that seq,
   else puts a fresh one in its slot, closing (evicting) what was there; a reset first
   closes every segment in the window with a smaller seq.
4. A read resolves ``-1``/``-2``/``-N`` against ``next_write``; a seq not in the window
   is precreated when the reader is just ahead of the writer (``seq == next_write``, or
   nothing written yet and ``seq == 1``) on an open channel; otherwise it is missing
   (470).
5. Ours: a write more than one seq past ``next_write`` whose slot holds another segment
   gets no segment until its first byte (:meth:`parks`).
6. A closed channel makes no segment, and its state never changes again.

Imports: the stdlib and the sibling ``wire``, ``segment`` and ``window`` modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import wire
from .segment import SegmentState
from .window import Window

__all__ = ["ChannelState", "Read"]

S = TypeVar("S", bound=SegmentState)


@dataclass(frozen=True, slots=True)
class Read(Generic[S]):
    """What a read resolved to: the seq, ``next_write`` when asked, the segment (or
    None: missing) and whether it was precreated by this read."""

    seq: int
    latest: int
    segment: S | None
    precreated: bool = False


class ChannelState(Generic[S]):
    """One channel's window, ``next_write``, write time and closed flag.

    Args:
        make_segment: builds the segment object for a seq (the trio layer's ``Segment``).
        now: the creation time (the first write time).
        on_evict: called with each open segment that a write or a precreate pushed out
            of its slot (after it was closed).
    """

    __slots__ = ("_make", "_next_write", "_on_evict", "_write_time", "closed", "window")

    def __init__(
        self,
        make_segment: Callable[[int], S],
        now: float,
        *,
        on_evict: Callable[[S], None] | None = None,
        size: int = wire.WINDOW,
    ) -> None:
        self._make = make_segment
        self._on_evict = on_evict
        self._next_write = 0
        self._write_time = now
        self.closed = False
        self.window: Window[S] = Window(size)

    @property
    def next_write(self) -> int:
        """The seq the server expects to be written next (Rules 1-2)."""
        return self._next_write

    @property
    def write_time(self) -> float:
        """When the channel was last written to (creation, a first byte, an empty
        segment, a drop): what the idle sweep looks at."""
        return self._write_time

    # -- writes ------------------------------------------------------------------------

    def parks(self, seq: int) -> bool:
        """Rule 5: True if a write for ``seq`` must wait for its first byte before it
        gets a segment."""
        if seq <= self._next_write + 1:
            return False
        holder = self.window.holder(seq)
        return holder is not None and holder.seq != seq

    def segment_for_write(self, seq: int, *, reset: bool = False) -> S:
        """Rule 3: the segment a write for ``seq`` (``-1`` = next write) appends to.

        Raises:
            ValueError: ``seq`` is below -1, or the channel is closed (callers check
                ``closed`` first and answer as for a deleted channel).
        """
        if self.closed:
            raise ValueError("closed channel")
        if seq == wire.SEQ_NEXT:
            seq = self._next_write
        if seq < 0:
            raise ValueError(f"cannot write seq {seq}")
        if reset:
            for segment in list(self.window):
                if segment.seq < seq:
                    segment.close()
        existing = self.window.get(seq)
        if existing is not None and not existing.closed:
            return existing
        return self._put(self._make(seq))

    def first_byte(self, seq: int, now: float) -> None:
        """Rule 1: the first byte of segment ``seq`` arrived."""
        if not self.closed:
            self._next_write = seq + 1
            self._write_time = now

    def ended_empty(self, seq: int, now: float) -> None:
        """Rule 1: a body for ``seq`` ended with zero bytes (PR #3824)."""
        if not self.closed:
            self._next_write = seq + 1
            self._write_time = now

    def released(self, segment: S, now: float) -> None:
        """Rule 2: an idle preconnect on ``segment`` was let go because the segment was
        closed from elsewhere."""
        if not self.closed and segment.seq >= self._next_write and not segment.evicted:
            self._next_write = segment.seq + 1
            self._write_time = now

    def drop(self, segment: S, now: float) -> None:
        """Rule 2: ``DELETE /{ch}/{seq}``: close ``segment``, moving ``next_write`` past
        it first when it holds no bytes at or past the live edge."""
        if (
            not self.closed
            and not segment.closed
            and segment.size == 0
            and segment.seq >= self._next_write
        ):
            self._next_write = segment.seq + 1
            self._write_time = now
        segment.close()

    # -- reads -------------------------------------------------------------------------

    def segment_for_read(self, seq: int) -> Read[S]:
        """Rule 4: what a read for ``seq`` (``-1``/``-2``/``-N`` allowed) gets."""
        latest = self._next_write
        seq = wire.resolve_read_seq(seq, latest)
        segment = self.window.get(seq)
        if segment is None and not self.closed and (seq == latest or (latest == 0 and seq == 1)):
            return Read(seq, latest, self._put(self._make(seq)), precreated=True)
        return Read(seq, latest, segment)

    def segment_in_window(self, seq: int) -> S | None:
        """The segment ``seq`` means (``-N`` resolved), if it is in the window."""
        return self.window.get(wire.resolve_read_seq(seq, self._next_write))

    # -- the end -----------------------------------------------------------------------

    def close(self) -> list[S]:
        """Rule 6: close the channel; returns the window's segments (still in it)."""
        self.closed = True
        return list(self.window)

    def _put(self, segment: S) -> S:
        evicted = self.window.put(segment)
        if evicted is not None and evicted is not segment and not evicted.closed:
            evicted.evicted = True  # its idle preconnects are let go without advancing
            evicted.close()
            if self._on_evict is not None:
                self._on_evict(evicted)
        return segment
