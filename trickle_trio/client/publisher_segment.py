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

from ..core.errors import TrickleError
from .http import TransportError
from .post import Post, PostRunner, SegmentWriteError, is_terminal
from .segment_state import OPEN, SegmentState

__all__ = ["PublisherSegment"]

logger = logging.getLogger(__name__)


class PublisherSegment(SegmentState):
    """One segment being published over HTTP. Get one from :meth:`Publisher.next` or
    ``async with publisher.segment() as seg``; the methods and their cancellation are
    :class:`~.segment_state.SegmentState`'s.

    Attributes:
        seq: the segment's seq, known before any byte is written.
    """

    def __init__(self, runner: PostRunner, post: Post) -> None:
        super().__init__(post.seq, runner.state.counts, drop_timeout=runner.close_timeout)
        self._runner = runner
        self._post = post
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

    # -- the hooks of SegmentState ----------------------------------------------------------

    async def _send(self, data: bytes) -> None:
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

    async def _finish(self) -> None:
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

    async def _abandon(self, error: TrickleError | None) -> None:
        terminal = error is not None and is_terminal(error)
        runner = self._runner
        await runner.let_go(self._post)
        if terminal or runner.state.failure is not None:
            return  # the channel is gone or refuses us: nothing to close there
        try:
            response = await runner.request("DELETE", self.url)
        except TrickleError as exc:
            logger.info("segment delete failed url=%s error=%s", self.url, exc)
            return
        logger.debug("segment dropped url=%s status=%d", self.url, response.status)

    def _written(self) -> bool:
        return self._used

    async def _rewrite(self) -> None:
        await self._repost()

    # -- internals --------------------------------------------------------------------------

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
        self._state, self._error = OPEN, None
        self._used = False
