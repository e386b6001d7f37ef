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

    __slots__ = ("_joined", "chunks", "closed", "evicted", "seq", "size")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.chunks: list[bytes] = []
        self.size = 0
        self.closed = False
        #: Closed because a later seq took its slot (its idle writers are let go without
        #: moving the channel's next write).
        self.evicted = False
        # (index, chunks[index:] joined) for the current chunk count; see view_from.
        self._joined: tuple[int, bytes] | None = None

    def append(self, data: bytes) -> bool:
        """Append ``data``; False (and nothing changes) if the segment is closed.

        Empty ``data`` changes nothing either (True while open): a chunk is never empty.
        """
        if self.closed:
            return False
        if not data:
            return True
        self.chunks.append(data)
        self.size += len(data)
        self._joined = None
        return True

    def view_from(self, index: int) -> bytes:
        """Everything from chunk ``index`` on, as one ``bytes`` (``b""`` if nothing).

        A single chunk is handed out as it is. Several are joined once and the result is
        shared by every reader that asks at the same index before the next append: the
        readers of a fan-out are usually at the same place, so N subscribers cost one
        copy instead of N.
        """
        count = len(self.chunks) - index
        if count == 1:
            return self.chunks[index]
        if count <= 0:
            return b""
        joined = self._joined
        if joined is not None and joined[0] == index:
            return joined[1]
        data = b"".join(self.chunks[index:])
        self._joined = (index, data)
        return data

    def close(self) -> bool:
        """Close the segment; False if it was already closed."""
        if self.closed:
            return False
        self.closed = True
        return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} seq={self.seq} size={self.size} {state}>"
