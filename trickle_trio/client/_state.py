"""The bookkeeping every client keeps, whatever carries its bytes (HTTP or in-process).

``counts`` is the live counters (the parts of a client add to them); ``stats()`` is a
frozen snapshot.

``Publisher``/``LocalClientPublisher`` and ``Subscriber``/``LocalClientSubscriber`` have one
API (checked by the protocols in ``api.py``); its read-only part and the state behind it
live here once. Imports: trio, ``core`` and ``stats``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, Literal, Self, TypeVar

import trio

from ..core import wire
from ..core.errors import TrickleError
from .stats import PublisherCounts, PublisherStats, SubscriberCounts, SubscriberStats

#: What a subscriber does when its seq has left the window (470).
OnGap = Literal["raise", "jump"]


class PublisherState:
    """A publisher's next seq, its terminal failure, whether it is closing, its counters.

    ``name`` (the channel URL, or the channel's name in-process) names it in errors.
    """

    def __init__(self, start: int, *, name: str) -> None:
        if start < wire.SEQ_NEXT:
            raise ValueError(f"start must be >= 0 or -1, not {start}")
        self._name = name
        self._seq = max(start, 0)
        self._failure: TrickleError | None = None
        self._closing = False
        self.counts = PublisherCounts()
        self._opened_at = trio.current_time()

    @property
    def next_seq(self) -> int:
        """The seq the next segment will get (the preconnect's)."""
        return self._seq

    @property
    def closed(self) -> bool:
        """:meth:`aclose` has begun."""
        return self._closing

    @property
    def failure(self) -> TrickleError | None:
        """The error that ended the publisher, if any."""
        return self._failure

    def fail(self, error: TrickleError) -> None:  # sync on purpose
        """Record ``error`` as what ended the publisher (the first one stays)."""
        if self._failure is None:
            self._failure = error

    async def create(self) -> None:
        """Create the channel (each transport's; cancellation as documented there)."""
        raise NotImplementedError  # pragma: no cover

    async def _start(self) -> None:
        raise NotImplementedError  # pragma: no cover

    async def aclose(self) -> None:
        """Close the publisher (each transport's; cancellation: shielded there)."""
        raise NotImplementedError  # pragma: no cover

    @asynccontextmanager
    async def _running(self, nursery: trio.Nursery, *, create: bool) -> AsyncIterator[Self]:
        """The body of ``open_*publisher``: create the channel if asked, start, and close
        when the block ends, then stop the publisher's tasks in ``nursery``."""
        try:
            if create:
                await self.create()
            await self._start()
            yield self
        finally:
            await self.aclose()
            nursery.cancel_scope.cancel()

    def check_usable(self) -> None:  # sync on purpose
        """Raise what ended the publisher, or RuntimeError once it is closing."""
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise RuntimeError(f"publisher {self._name} is closed")

    def stats(self) -> PublisherStats:
        """A snapshot of the counters."""
        return PublisherStats.of(
            self.counts,
            seq=self._seq,
            elapsed_s=trio.current_time() - self._opened_at,
            terminal_error=None if self._failure is None else repr(self._failure),
        )


_Segment = TypeVar("_Segment")


class SubscriberState(Generic[_Segment]):
    """A subscriber's next seq, what it expects and has seen, its end, its counters, and
    the rules both transports follow when a seq has left the window (:meth:`_gap`) and
    when a segment arrives (:meth:`_delivered`)."""

    def __init__(
        self, start: int, on_gap: OnGap, max_consecutive_errors: int, retry_delay: float
    ) -> None:
        if on_gap not in ("raise", "jump"):
            raise ValueError(f"on_gap must be 'raise' or 'jump', not {on_gap!r}")
        self._on_gap = on_gap
        self._max_errors = max_consecutive_errors
        self._retry_delay = retry_delay
        self._seq = start
        self._expected: int | None = None
        self._latest = -1
        self._ended = False
        self._closed = False
        self.counts = SubscriberCounts()
        self._opened_at = trio.current_time()

    @property
    def seq(self) -> int:
        """The seq the next segment will be read from (-1/-2 until the first answer)."""
        return self._seq

    @property
    def ended(self) -> bool:
        """The channel was closed (``Lp-Trickle-Closed``): the iteration is over."""
        return self._ended

    def stats(self) -> SubscriberStats:
        """A snapshot of the counters."""
        return SubscriberStats.of(
            self.counts,
            latest_seq=self._latest,
            seq=self._seq,
            elapsed_s=trio.current_time() - self._opened_at,
        )

    def set_seq(self, seq: int) -> None:  # sync on purpose
        """Read ``seq`` next (``-1`` next, ``-2`` current, ``-N``, or a seq).

        A subscription that had ended goes on.
        """
        self._seq = seq
        self._expected = None
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _Segment:
        """The next segment (:meth:`next`); cancellation as there."""
        segment = await self.next()
        if segment is None:
            raise StopAsyncIteration
        return segment

    async def next(self) -> _Segment | None:
        """The next segment, ``None`` at the end (each transport's; cancellation: safe,
        nothing is consumed, as documented there)."""
        raise NotImplementedError  # pragma: no cover

    async def aclose(self) -> None:
        """Close the subscriber (each transport's; cancellation as documented there)."""
        raise NotImplementedError  # pragma: no cover

    @asynccontextmanager
    async def _running(self, nursery: trio.Nursery | None = None) -> AsyncIterator[Self]:
        """The body of ``open_*subscriber``: close when the block ends, then stop the
        subscriber's tasks in ``nursery``."""
        try:
            yield self
        finally:
            await self.aclose()
            if nursery is not None:
                nursery.cancel_scope.cancel()

    def _gap(self, seq: int, latest: int, behind: int) -> Literal["raise", "jump", "wait"]:
        """What to do about a 470 for ``seq`` (``latest``: the channel's next write), the
        ``behind``-th in a row: raise it, jump to the live edge (done here, counted), or
        wait ``retry_delay`` for a writer that is behind the seq asked for."""
        if self._on_gap == "raise" or latest < 0:
            return "raise"
        if latest >= seq:
            self.counts.get_470_reset += 1
            self.counts.seq_gap_events += 1
            self._seq, self._expected = latest, None
            return "jump"
        return "raise" if behind > self._max_errors else "wait"

    def _delivered(self, seq: int, latest: int) -> None:  # sync on purpose
        """Segment ``seq`` was handed out: count a gap, move the next seq past it."""
        if self._expected is not None and seq != self._expected:
            self.counts.seq_gap_events += 1
        self._seq = self._expected = seq + 1
        self._latest = max(self._latest, latest, seq)
        self.counts.segments_delivered += 1


class SegmentReadState:
    """What both subscribers' segments share: the bytes read so far, iteration, ``read``.

    A subclass sets ``_bytes`` to 0 and implements ``__anext__``.
    """

    _bytes: int

    @property
    def bytes_read(self) -> int:
        """Body bytes handed to the caller so far."""
        return self._bytes

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        """The next chunk (each transport's; cancellation: no chunk is lost)."""
        raise NotImplementedError  # pragma: no cover

    async def read(self) -> bytes:
        """The rest of the body (waits for the segment's end).

        Cancellation: what was read by this call is lost to the caller (iterate the
        segment to keep each chunk); reading can go on from where it stopped.
        """
        return b"".join([chunk async for chunk in self])
