"""The life of one segment being published, whatever carries its bytes (HTTP or in-process).

:class:`SegmentState` is the state machine both publishers' segments run: open, then done
(acknowledged), failed (an error, raised again on every use until the segment is written
again) or dropped (given up). It decides what each call may do, counts what happened,
and leaves the carrying to a subclass's five hooks (``_send``, ``_finish``, ``_abandon``,
``_written``, ``_rewrite``): :class:`~.publisher_segment.PublisherSegment` carries a POST,
:class:`~.local.LocalClientPublisherSegment` the server's in-process writer.

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling ``stats`` module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable
from types import TracebackType
from typing import Final, Self

import trio

from ..core.errors import TrickleError
from .stats import PublisherCounts

__all__ = ["SegmentState"]

OPEN: Final = "open"
DONE: Final = "done"
FAILED: Final = "failed"
DROPPED: Final = "dropped"


class SegmentState(ABC):
    """One segment being published: write it chunk by chunk (:meth:`send`, then
    :meth:`aclose`) or whole (:meth:`write`).

    As an async context manager: a normal exit ends the body and waits for the
    acknowledgement; an exception drops the segment (:meth:`drop`) and propagates.

    Attributes:
        seq: the segment's seq, known before any byte is written.
    """

    def __init__(self, seq: int, counts: PublisherCounts, *, drop_timeout: float) -> None:
        self.seq = seq
        self._counts = counts
        #: Bound on the shielded drop after an exception (a publisher's close_timeout).
        self._drop_timeout = drop_timeout
        self._state = OPEN
        self._error: TrickleError | None = None

    @property
    @abstractmethod
    def bytes_sent(self) -> int:
        """Body bytes handed on by the current attempt at this segment."""

    @property
    def settled(self) -> bool:
        """Done, failed or dropped: nothing more will be written by this attempt."""
        return self._state != OPEN

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`aclose` after a normal exit; after an exception (a cancellation too),
        :meth:`drop`, shielded and bounded by the publisher's ``close_timeout``."""
        if exc is None:
            await self.aclose()
            return
        with trio.move_on_after(self._drop_timeout, shield=True):
            await self.drop()

    async def send(self, data: bytes) -> None:
        """Stream one chunk into the segment; subscribers can read it at once.

        Raises:
            ChannelNotFoundError, ChannelClosedError, HTTPError: the server's answer
                (over HTTP even one that came while the POST was idle).
            SegmentWriteError: (HTTP) the connection broke or the server closed this
                segment; :meth:`write` re-POSTs it.
            RuntimeError: the segment was dropped or is already complete.

        Cancellation: the chunk may be half-sent. Over HTTP the segment then fails on its
        next use (its connection is not reused: drop it, or write it again); in-process
        the chunk was either handed over whole or not at all.
        """
        self._check_open()
        await self._send(data)

    async def aclose(self) -> None:
        """End the body and wait for the acknowledgement (a segment of zero bytes is a
        valid empty segment). Returns at once if already acknowledged or dropped.

        Raises: as :meth:`send`.

        Cancellation: the end of the body is written before the cancellation is
        delivered (over HTTP bounded by the ``write`` deadline; in-process at once), so
        subscribers see a whole segment; only the wait for the acknowledgement is cut
        short, and the publisher's close still waits for it before it deletes the
        channel. The segment stays open (not counted as completed).
        """
        if self._state in (DONE, DROPPED):
            await trio.lowlevel.checkpoint()
            return
        self._check_open()
        await self._finish()
        self._state = DONE
        self._counts.segments_completed += 1
        if self.bytes_sent == 0:
            self._counts.empty_segments_completed += 1

    async def write(self, data: bytes | AsyncIterable[bytes]) -> None:
        """Write the whole segment from ``data`` and wait for the acknowledgement.

        Calling it on a segment already (partly) written, typically after a failure,
        writes it again from the start (over HTTP: a fresh POST of the same seq, the
        reference publisher's rule). A source that raises drops the segment and the
        error propagates.

        Raises: as :meth:`send`.

        Cancellation: as :meth:`send` while the body is written, as :meth:`aclose`
        once it has ended; a cancelled source drops the segment (shielded, bounded by
        the publisher's ``close_timeout``), so subscribers reach its end.
        """
        if self._state == DROPPED:
            raise RuntimeError(f"segment {self.seq} was dropped")
        if self._written() or self._state != OPEN:
            await self._rewrite()
            self._state, self._error = OPEN, None
        if isinstance(data, bytes | bytearray | memoryview):
            await self.send(bytes(data))
        else:
            source = aiter(data)
            while True:
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                except BaseException:
                    with trio.move_on_after(self._drop_timeout, shield=True):
                        await self.drop()
                    raise
                await self.send(chunk)
        await self.aclose()

    async def drop(self) -> None:
        """Give the segment up: its subscribers reach its end with the bytes written so
        far (over HTTP: the body is ended, or its connection cut if a chunk was cut
        short, and ``DELETE {url}/{seq}`` is sent).

        Network errors are logged, not raised. Safe to call twice.

        Cancellation: the segment is dropped at once; what is left of the letting go
        (the DELETE) may be skipped, and the publisher's close ends what remains.
        """
        if self._state in (DONE, DROPPED):
            await trio.lowlevel.checkpoint()
            return
        error = self._error
        self._state = DROPPED
        self._counts.segments_dropped += 1
        await self._abandon(error)

    # -- for the transports -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state == DROPPED:
            raise RuntimeError(f"segment {self.seq} was dropped")
        if self._error is not None:
            raise self._error
        if self._state == DONE:
            raise RuntimeError(f"segment {self.seq} is already complete")

    def _fail(self, error: TrickleError) -> TrickleError:
        """Mark the segment failed with ``error`` (counted once) and return it to raise."""
        if self._state != FAILED:
            self._state = FAILED
            self._counts.segments_failed += 1
        self._error = error
        return error

    @abstractmethod
    async def _send(self, data: bytes) -> None:
        """Carry one chunk (``b""``: just make sure the attempt has begun); raise
        ``self._fail(error)`` on failure."""

    @abstractmethod
    async def _finish(self) -> None:
        """End the body and wait for the acknowledgement; raise ``self._fail(error)``."""

    @abstractmethod
    async def _abandon(self, error: TrickleError | None) -> None:
        """Let the current attempt go (``error``: the one the segment had failed with)."""

    @abstractmethod
    def _written(self) -> bool:
        """Whether the current attempt has been used, so a :meth:`write` must start anew."""

    @abstractmethod
    async def _rewrite(self) -> None:
        """Let the current attempt go and begin a fresh one for the same seq."""
