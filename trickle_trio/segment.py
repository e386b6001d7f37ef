"""Segment: one segment's bytes (``core.segment.SegmentState``) plus its trio wake-ups.

Readers wait for bytes (:meth:`Segment.wait_readable`) or hand a callback that the
appending task calls with each new chunk (:meth:`Segment.push_while`); an idle
preconnected publisher registers a cancel scope that closing the segment cancels.
Appending and closing are sync: never a checkpoint.

Imports: trio and ``trickle_trio.core``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from .core.segment import SegmentState

__all__ = ["Segment"]

#: A reader parked in ``Segment.push_while``: its callback and its task.
_Pusher = tuple[Callable[[bytes], bool], trio.lowlevel.Task]


class Segment(SegmentState):
    """A segment's bytes plus the wake-ups: readers waiting for bytes, idle writers.

    Readers park in :meth:`wait_chunks`, or hand a callback to :meth:`push_while` that
    gets each new chunk from the appending task itself. A preconnected publisher that has
    not sent a byte registers a cancel scope (:meth:`idle_writer`); closing the segment
    cancels it, which is how an idle POST is released when its segment is closed from
    elsewhere.
    """

    __slots__ = ("_changed", "_idle_writers", "_pushers")

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        # Created only when a reader waits: an append with nobody waiting costs nothing.
        self._changed: trio.Event | None = None
        self._idle_writers: set[trio.CancelScope] = set()
        # (push, task) of the readers parked in push_while, in arrival order.
        self._pushers: list[_Pusher] = []

    def append(self, data: bytes) -> bool:  # sync on purpose: never a checkpoint
        """Append a chunk and wake readers; False if closed (the bytes are discarded)."""
        if not super().append(data):
            return False
        if not data:
            return True  # nothing new to read
        if self._pushers:
            self._push(data)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        return True

    def _push(self, data: bytes) -> None:
        pushers = self._pushers
        kept: list[_Pusher] | None = None  # built only once a reader stops (rare)
        for i, entry in enumerate(pushers):
            if not entry[0](data):
                trio.lowlevel.reschedule(entry[1])
                if kept is None:
                    kept = pushers[:i]
            elif kept is not None:
                kept.append(entry)
        if kept is not None:
            self._pushers = kept

    def close(self, *, release_writers: bool = True) -> bool:  # sync on purpose
        """Close: readers reach the end and, unless told otherwise, idle writers are
        released. False if it was closed already."""
        if not super().close():
            if release_writers:
                self.release_idle_writers()
            return False
        pushers, self._pushers = self._pushers, []
        for _, task in pushers:
            trio.lowlevel.reschedule(task)
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

    async def push_while(self, index: int, push: Callable[[bytes], bool]) -> None:
        """Call ``push(chunk)`` for every chunk appended from now on, until it returns
        False or the segment closes; then return.

        ``index`` is the caller's position: if chunks from ``index`` on exist already
        (or the segment is closed) this returns at once. ``push`` runs synchronously in
        the appending task, inside :meth:`append`; it must not raise, and the caller
        keeps its own count of what it took. This is how a subscriber writes each chunk
        to its socket without being woken: one task switch less per chunk.

        Cancellation: atomic; ``push`` is not called after Cancelled is raised.
        """
        if index < len(self.chunks) or self.closed:
            await trio.lowlevel.checkpoint()
            return
        entry = (push, trio.lowlevel.current_task())
        self._pushers.append(entry)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._pushers = [other for other in self._pushers if other is not entry]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def wait_chunks(self, index: int) -> list[bytes]:
        """The chunks from ``index`` on, waiting for at least one; ``[]`` = ended.

        Cancellation: atomic; raises Cancelled and leaves the segment unchanged.
        """
        await self.wait_readable(index)
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
