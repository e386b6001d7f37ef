"""One segment being published: :class:`PublisherSegment`, and the POST that carries it.

Rules of this file:

1. A segment's POST (:class:`_Post`) is opened and answered by a task of its
   publisher; the segment writes its body from the caller's task. Which error a failed
   write raises is decided in one place, :meth:`PublisherSegment._failed`: the server's
   answer if it sent one, else a :class:`SegmentWriteError`.
2. :func:`is_terminal` errors no retry of the same request can fix;
   :func:`fails_publisher` errors end the whole publisher, not only a segment.

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling client modules (the
publisher for types only).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

from ..core.errors import ChannelClosedError, ChannelNotFoundError, HTTPError, TrickleError
from ._util import RETRYABLE_STATUSES
from .http import Exchange, TransportError

if TYPE_CHECKING:
    from .publisher import Publisher

__all__ = [
    "PublisherSegment",
    "SegmentWriteError",
    "fails_publisher",
    "is_terminal",
]

logger = logging.getLogger(__name__)


class SegmentWriteError(TrickleError):
    """A segment could not be written: its connection broke, or the server closed the
    segment before its body ended (a reset, an eviction, ``DELETE {url}/{seq}``).

    Writing the segment again (:meth:`PublisherSegment.write`) re-POSTs the same seq on
    a fresh connection.

    Attributes:
        seq: the segment's seq.
        url: the channel URL.
    """

    def __init__(self, seq: int, url: str, reason: str) -> None:
        super().__init__(f"segment {seq} of {url}: {reason}")
        self.seq = seq
        self.url = url


def is_terminal(error: BaseException) -> bool:
    """Errors no retry of the same request can fix: the channel is gone or closed, or a
    4xx other than :data:`RETRYABLE_STATUSES`."""
    if isinstance(error, ChannelNotFoundError | ChannelClosedError):
        return True
    return (
        isinstance(error, HTTPError)
        and 400 <= error.status < 500
        and error.status not in RETRYABLE_STATUSES
    )


def fails_publisher(error: BaseException, *, claimed: bool) -> bool:
    """Errors that end the publisher, not just a segment: the channel is gone or closed,
    or a terminal refusal of a POST that carried no body yet (401, 403, 400 ...).
    Refusals of a segment's body (413) fail only that segment."""
    if isinstance(error, ChannelNotFoundError | ChannelClosedError):
        return True
    return not claimed and is_terminal(error)


class _Post:
    """One POST of one segment: its exchange, and the answer its task reads."""

    __slots__ = (
        "answered",
        "bytes_sent",
        "claimed",
        "delay",
        "error",
        "exchange",
        "fresh",
        "opened",
        "reset",
        "retry",
        "scope",
        "seq",
    )

    def __init__(
        self, seq: int, *, reset: bool, fresh: bool, delay: float = 0.0, retry: int = 0
    ) -> None:
        self.seq = seq
        self.reset = reset
        self.fresh = fresh
        #: Seconds to wait before opening; retries of a lost preconnect only.
        self.delay = delay
        #: How many lost preconnects of this seq came before this one.
        self.retry = retry
        self.exchange: Exchange | None = None
        #: Set once the request head is out (``exchange`` is set) or opening failed.
        self.opened = trio.Event()
        #: Set once the outcome is known: ``error is None`` means acknowledged.
        self.answered = trio.Event()
        self.error: TrickleError | None = None
        self.claimed = False
        self.bytes_sent = 0
        self.scope = trio.CancelScope()

    @property
    def body_ended(self) -> bool:
        return self.exchange is not None and self.exchange.body_ended


_OPEN, _DONE, _FAILED, _DROPPED = "open", "done", "failed", "dropped"


class PublisherSegment:
    """One segment being published. Get one from :meth:`Publisher.next` or
    ``async with publisher.segment() as seg``.

    Write it chunk by chunk (:meth:`send`, then :meth:`aclose`) or whole (:meth:`write`).
    As an async context manager: a normal exit ends the body and waits for the
    acknowledgement; an exception drops the segment (:meth:`drop`) and propagates.

    Attributes:
        seq: the segment's seq, known before any byte is written.
    """

    def __init__(self, publisher: Publisher, post: _Post) -> None:
        self.seq = post.seq
        self._publisher = publisher
        self._post = post
        self._state = _OPEN
        self._error: TrickleError | None = None
        self._used = False
        self._auto_retried = False

    @property
    def url(self) -> str:
        """``{channel url}/{seq}``."""
        return f"{self._publisher.url}/{self.seq}"

    @property
    def bytes_sent(self) -> int:
        """Body bytes handed to the connection by the current POST of this segment."""
        return self._post.bytes_sent

    def __repr__(self) -> str:
        return f"<PublisherSegment {self.url} {self._state} bytes={self._post.bytes_sent}>"

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
            return
        with trio.move_on_after(self._publisher.close_timeout, shield=True):
            await self.drop()

    # -- writing ----------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Stream one chunk into the segment; subscribers can read it at once.

        Raises:
            ChannelNotFoundError, ChannelClosedError, HTTPError: the server's answer,
                even one that came while the POST was idle.
            SegmentWriteError: the connection broke or the server closed this segment;
                :meth:`write` re-POSTs it.

        Cancellation: the chunk may be half-sent; the segment then fails on its next use
            (drop it, or write it again).
        """
        self._check_open()
        self._used = True
        post = await self._ready_post()
        if not data:
            return
        exchange = post.exchange
        assert exchange is not None
        try:
            await exchange.send(data)
        except TransportError as exc:
            failure = exc
        else:
            post.bytes_sent += len(data)
            self._publisher._counts.bytes_submitted_to_transport += len(data)
            return
        raise await self._failed(post, failure)

    async def aclose(self) -> None:
        """End the body and wait for the server's acknowledgement (a segment of zero bytes
        is a valid empty segment). Returns at once if already acknowledged.

        Raises: as :meth:`send`.

        Cancellation: once the body has ended, the publisher's close still waits for the
            acknowledgement before it deletes the channel.
        """
        if self._state in (_DONE, _DROPPED):
            await trio.lowlevel.checkpoint()
            return
        self._check_open()
        self._used = True
        post = await self._ready_post()
        exchange = post.exchange
        assert exchange is not None
        if not exchange.body_ended:
            failure: TransportError | None = None
            try:
                await exchange.end()
            except TransportError as exc:
                failure = exc
            if failure is not None:
                raise await self._failed(post, failure)
        await post.answered.wait()
        if post.error is not None:
            raise self._fail(post.error)
        self._state = _DONE
        counts = self._publisher._counts
        counts.segments_completed += 1
        if post.bytes_sent == 0:
            counts.empty_segments_completed += 1

    async def write(self, data: bytes | AsyncIterable[bytes]) -> None:
        """Write the whole segment from ``data`` and wait for the acknowledgement.

        Calling it on a segment already (partly) written, typically after a failure,
        re-POSTs the same seq on a fresh connection first (the reference publisher's
        rule). A source that raises drops the segment and the error propagates.

        Raises: as :meth:`send`.
        """
        if self._state is _DROPPED:
            raise RuntimeError(f"segment {self.seq} was dropped")
        if self._used or self._state is not _OPEN:
            await self._repost()
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
                    with trio.move_on_after(self._publisher.close_timeout, shield=True):
                        await self.drop()
                    raise
                await self.send(chunk)
        await self.aclose()

    async def drop(self) -> None:
        """Give the segment up: end its body (or cut its connection if a chunk was cut
        short) and send ``DELETE {url}/{seq}``, so that its subscribers reach its end.

        Network errors are logged, not raised. Safe to call twice.
        """
        if self._state in (_DONE, _DROPPED):
            await trio.lowlevel.checkpoint()
            return
        terminal = self._error is not None and is_terminal(self._error)
        self._state = _DROPPED
        publisher = self._publisher
        publisher._counts.segments_dropped += 1
        await publisher._let_go(self._post)
        if terminal or publisher._failure is not None:
            return  # the channel is gone or refuses us: nothing to close there
        try:
            response = await publisher._transport.request("DELETE", self.url)
        except TrickleError as exc:
            logger.info("segment delete failed url=%s error=%s", self.url, exc)
            return
        logger.debug("segment dropped url=%s status=%d", self.url, response.status)

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is _DROPPED:
            raise RuntimeError(f"segment {self.seq} was dropped")
        if self._error is not None:
            raise self._error
        if self._state is _DONE:
            raise RuntimeError(f"segment {self.seq} is already complete")

    def _fail(self, error: TrickleError) -> TrickleError:
        if self._state is not _FAILED:
            self._state = _FAILED
            self._publisher._counts.segments_failed += 1
        self._error = error
        return error

    async def _ready_post(self) -> _Post:
        """The POST to write to, once its head is out; one silent re-POST if it failed
        before any byte of ours (a dead pooled connection, a released preconnect)."""
        post = self._post
        await post.opened.wait()
        if (
            post.answered.is_set()
            and post.bytes_sent == 0
            and not post.body_ended
            and post.error is not None
            and not is_terminal(post.error)
            and not self._auto_retried
        ):
            self._auto_retried = True
            logger.debug("preconnect lost, re-posting url=%s error=%s", self.url, post.error)
            await self._repost()
            post = self._post
            await post.opened.wait()
        if post.answered.is_set():
            assert post.error is not None  # a 200 before the body ended is an error too
            raise self._fail(post.error)
        return post

    async def _failed(self, post: _Post, failure: TransportError) -> TrickleError:
        """The error a failed write of ``post`` stands for: the server's answer if it
        sent one, else a :class:`SegmentWriteError` caused by ``failure``."""
        exchange = post.exchange
        if exchange is None or exchange.head is None:
            post.scope.cancel()  # its reader would wait on a dead connection
        await post.answered.wait()
        error = post.error
        if error is None:
            error = SegmentWriteError(self.seq, self._publisher.url, str(failure))
            error.__cause__ = failure
        return self._fail(error)

    async def _repost(self) -> None:
        """Replace this segment's POST by a fresh one for the same seq."""
        old = self._post
        await self._publisher._let_go(old)
        self._post = self._publisher._start_post(self.seq, reset=old.reset, fresh=True)
        self._post.claimed = True
        self._publisher._counts.post_retries += 1
        self._state = _OPEN
        self._error = None
        self._used = False


class _NextSegment:
    """``async with publisher.segment() as seg``: :meth:`Publisher.next` on entry."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._segment: PublisherSegment | None = None

    async def __aenter__(self) -> PublisherSegment:
        self._segment = await self._publisher.next()
        return self._segment

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._segment is not None
        await self._segment.__aexit__(exc_type, exc, tb)
