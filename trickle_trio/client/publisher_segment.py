"""One segment being published over HTTP: :class:`PublisherSegment`.

Rules of this file:

1. A segment writes the body of its POST (:class:`~.post.Post`) from the caller's task;
   the POST is opened and answered by the publisher's :class:`~.post.PostRunner`, the
   only part of the publisher a segment sees. Which error a failed write raises is
   decided in one place, :meth:`PublisherSegment._failed`: the server's answer if it
   sent one, else a :class:`~.post.SegmentWriteError`.
2. A segment written again (:meth:`PublisherSegment.write` after a failure) gets a
   fresh POST of the same seq.

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling client modules.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from types import TracebackType
from typing import Self

import trio

from ..core.errors import TrickleError
from .http import TransportError
from .post import Post, PostRunner, SegmentWriteError, is_terminal

__all__ = ["PublisherSegment"]

logger = logging.getLogger(__name__)


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

    def __init__(self, runner: PostRunner, post: Post) -> None:
        self.seq = post.seq
        self._runner = runner
        self._counts = runner.state.counts
        self._post = post
        self._state = _OPEN
        self._error: TrickleError | None = None
        self._used = False
        self._auto_retried = False

    @property
    def url(self) -> str:
        """``{channel url}/{seq}``."""
        return f"{self._runner.url}/{self.seq}"

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
        with trio.move_on_after(self._runner.close_timeout, shield=True):
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
            self._counts.bytes_submitted_to_transport += len(data)
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
        counts = self._counts
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
                    with trio.move_on_after(self._runner.close_timeout, shield=True):
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
        runner = self._runner
        self._counts.segments_dropped += 1
        await runner.let_go(self._post)
        if terminal or runner.state.failure is not None:
            return  # the channel is gone or refuses us: nothing to close there
        try:
            response = await runner.request("DELETE", self.url)
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
            self._counts.segments_failed += 1
        self._error = error
        return error

    async def _ready_post(self) -> Post:
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

    async def _failed(self, post: Post, failure: TransportError) -> TrickleError:
        """The error a failed write of ``post`` stands for: the server's answer if it
        sent one, else a :class:`SegmentWriteError` caused by ``failure``."""
        exchange = post.exchange
        if exchange is None or exchange.head is None:
            post.scope.cancel()  # its reader would wait on a dead connection
        await post.answered.wait()
        error = post.error
        if error is None:
            error = SegmentWriteError(self.seq, self._runner.url, str(failure))
            error.__cause__ = failure
        return self._fail(error)

    async def _repost(self) -> None:
        """Replace this segment's POST by a fresh one for the same seq."""
        old = self._post
        await self._runner.let_go(old)
        self._post = self._runner.start(self.seq, reset=old.reset, fresh=True)
        self._post.claimed = True
        self._counts.post_retries += 1
        self._state = _OPEN
        self._error = None
        self._used = False
