"""The window: the last few segments of a channel, one slot per ``seq mod size``.

Rules (the reference server's, plus ours where marked):
1. Slot ``seq % size`` holds at most one segment. Putting seq ``s + size`` there evicts
   seq ``s``; the caller closes the evicted segment (ours: always, so that nothing that
   left the window can still grow).
2. A seq is "in the window" only if its slot holds a segment with exactly that seq.

Generic over the segment type so that the trio layer can store its own ``Segment``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .segment import SegmentState

S = TypeVar("S", bound=SegmentState)


class Window(Generic[S]):
    """A ring of ``size`` segment slots."""

    __slots__ = ("_slots",)

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self._slots: list[S | None] = [None] * size

    def get(self, seq: int) -> S | None:
        """The segment for ``seq`` if it is in the window, else None."""
        if seq < 0:
            return None
        segment = self._slots[seq % len(self._slots)]
        if segment is not None and segment.seq == seq:
            return segment
        return None

    def holder(self, seq: int) -> S | None:
        """The segment in ``seq``'s slot, whatever its seq (what putting ``seq`` evicts)."""
        return self._slots[seq % len(self._slots)] if seq >= 0 else None

    def put(self, segment: S) -> S | None:
        """Store ``segment`` in its slot; return the segment it replaced, if any."""
        slot = segment.seq % len(self._slots)
        previous = self._slots[slot]
        self._slots[slot] = segment
        return previous

    def __iter__(self) -> Iterator[S]:
        """Segments in the window, in slot order."""
        return (segment for segment in self._slots if segment is not None)

    def clear(self) -> list[S]:
        """Empty the window and return what it held."""
        held = list(self)
        self._slots = [None] * len(self._slots)
        return held
