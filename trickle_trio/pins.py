"""PinnedSegments: the server-wide bound on bytes that slow readers hold past the window.

A segment leaves its channel's window when newer segments push it out, or when its
channel is deleted. Its buffers stay for as long as a subscriber still streams it: a
reader that stopped reading pins them (the window and ``max_segment_bytes`` bound
everything else). Without a bound, enough stuck readers hold any amount of memory.

Rules:
1. A segment is *pinned* from the moment a channel finds it out of its window with a
   reader on it (:meth:`PinnedSegments.update`, called after every change of a window)
   until its last reader is done (:meth:`PinnedSegments.release`). Its size is fixed by
   then: a segment leaves the window closed.
2. While pinned bytes exceed the bound, the readers of the segment pinned longest are
   cut, oldest first: each reader's connection is reset (never a clean end), so its
   client sees an error and can ask again; the bytes go as those readers finish.
3. A bound of 0 means none: nothing is ever cut (the default).

Nothing here blocks: every method is sync.

Imports: the stdlib only (segments and channels are duck-typed: :class:`Holder`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .segment import Segment

logger = logging.getLogger(__name__)

__all__ = ["Holder", "PinnedSegments"]


class Holder(Protocol):
    """What a channel offers: its name, and cutting the readers of one segment."""

    name: str

    def cut_readers(self, segment: Segment) -> int: ...


class PinnedSegments:
    """Pinned segments across one server, and the bound on their bytes."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        #: Pinned segments in pinning order (oldest first) and who holds each.
        self._pinned: dict[Segment, Holder] = {}
        #: Bytes pinned now.
        self.bytes = 0
        #: Readers cut to keep under the bound, since start.
        self.readers_cut = 0

    def __len__(self) -> int:
        return len(self._pinned)

    def pin(self, segment: Segment, holder: Holder) -> None:  # sync on purpose
        """``segment`` (out of its window, with readers) is pinned from now; enforce."""
        if segment in self._pinned:
            return
        self._pinned[segment] = holder
        self.bytes += segment.size
        self._enforce()

    def release(self, segment: Segment) -> None:  # sync on purpose
        """``segment``'s last reader is done (or it was cut): no longer pinned."""
        if self._pinned.pop(segment, None) is not None:
            self.bytes -= segment.size

    def _enforce(self) -> None:
        if not self.limit:
            return
        while self.bytes > self.limit and self._pinned:
            segment, holder = next(iter(self._pinned.items()))
            self.release(segment)
            cut = holder.cut_readers(segment)
            self.readers_cut += cut
            logger.warning(
                "limit hit limit=max_pinned_bytes channel=%s seq=%d bytes=%d readers_cut=%d",
                holder.name,
                segment.seq,
                segment.size,
                cut,
            )
