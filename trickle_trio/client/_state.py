"""The bookkeeping every client keeps, whatever carries its bytes (HTTP or in-process).

``counts`` is the live counters (the parts of a client add to them); ``stats()`` is a
frozen snapshot.

``Publisher``/``InProcessPublisher`` and ``Subscriber``/``InProcessSubscriber`` have one
API (checked by the protocols in ``api.py``); its read-only part and the state behind it
live here once. Imports: trio, ``core`` and ``stats``.
"""

from __future__ import annotations

import trio

from ..core import wire
from ..core.errors import TrickleError
from .stats import PublisherCounts, PublisherStats, SubscriberCounts, SubscriberStats


class PublisherState:
    """A publisher's next seq, its terminal failure, whether it is closing, its counters."""

    def __init__(self, start: int) -> None:
        if start < wire.SEQ_NEXT:
            raise ValueError(f"start must be >= 0 or -1, not {start}")
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

    def stats(self) -> PublisherStats:
        """A snapshot of the counters."""
        return PublisherStats.of(
            self.counts,
            seq=self._seq,
            elapsed_s=trio.current_time() - self._opened_at,
            terminal_error=None if self._failure is None else repr(self._failure),
        )


class SubscriberState:
    """A subscriber's next seq, what it expects and has seen, its end, its counters."""

    def __init__(self, start: int) -> None:
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
