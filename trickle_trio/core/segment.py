"""SegmentState: one segment's bytes as an append-only list of chunks.

Rules:
1. Chunks are only ever appended; a reader is an index into ``chunks`` and every reader
   shares the same ``bytes`` objects (no per-reader copies).
2. Once ``closed`` is set it never clears, and nothing is appended after it: bytes that
   arrive for a closed segment are discarded, so every reader, early or late, sees the
   same bytes.

Sans-IO: the trio wake-ups live in ``trickle_trio.channels.Segment``, a subclass.
"""

from __future__ import annotations


class SegmentState:
    """The bytes of segment ``seq`` and whether it has ended."""

    __slots__ = ("chunks", "closed", "seq", "size")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False

    def append(self, data: bytes) -> bool:
        """Append ``data``; False (and nothing changes) if the segment is closed."""
        if self.closed:
            return False
        self.chunks.append(data)
        self.size += len(data)
        return True

    def close(self) -> bool:
        """Close the segment; False if it was already closed."""
        if self.closed:
            return False
        self.closed = True
        return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} seq={self.seq} size={self.size} {state}>"
