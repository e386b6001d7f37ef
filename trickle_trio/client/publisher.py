"""The trickle publisher over HTTP: one preconnected POST per segment.

How it runs (the shape of go-livepeer's ``trickle_publisher.go`` and of the official
Python SDK, on trio):

- :func:`open_publisher` owns a nursery. Every POST is a :class:`~.post.Post` whose
  task (run by the publisher's :class:`~.post.PostRunner`) connects, sends the request
  head, then waits for the answer. The answer is read while
  the body is still open, so a 404, ``Lp-Trickle-Closed`` or 4xx sent to an *idle*
  preconnect is seen the moment it arrives.
- The publisher always holds one preconnect: the POST for the next seq, its body open
  and idle. :meth:`Publisher.next` hands it out as a :class:`PublisherSegment` and
  preconnects seq + 1 at once.
- A terminal answer (404, ``Lp-Trickle-Closed``, another 4xx) to the idle preconnect
  fails the publisher at once: its task raises, the caller's ``async with`` block is
  cancelled and the error comes out of :func:`open_publisher`, unwrapped from the
  exception group. Answers to a segment in use are raised by that segment's methods.
- Closing follows go-livepeer PR #3824: every segment whose body was handed over is
  acknowledged, then ``DELETE {url}``, and only then is the idle preconnect let go.

A segment is in :mod:`.publisher_segment`, the POSTs under it in :mod:`.post`.

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling client modules.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import trio

from ..core import wire
from ..core.errors import HTTPError, TrickleError
from ._state import PublisherState
from ._util import answer_error, header_int, next_segment
from .http import Timeouts, split_url
from .post import Post, PostRunner, SegmentWriteError, fails_publisher
from .publisher_segment import PublisherSegment
from .transport import Transport, open_client

__all__ = ["Publisher", "PublisherSegment", "SegmentWriteError", "open_publisher"]

logger = logging.getLogger(__name__)


#: Seconds before a lost idle preconnect is opened again when its connection failed.
PRECONNECT_RETRY_DELAY: Final = 1.0


class Publisher(PublisherState):
    """Publishes the segments of one channel over HTTP. Made by :func:`open_publisher`.

    Attributes:
        url: the channel URL (``{server}/{channel}``, no trailing slash).
        mime_type: sent as ``Content-Type`` on every POST and ``Expect-Content`` on create.
        close_timeout: bound on closing (acknowledgements, DELETE, letting go).
    """

    def __init__(
        self,
        url: str,
        mime_type: str,
        *,
        nursery: trio.Nursery,
        transport: Transport,
        start: int = 0,
        reset: bool = False,
        delete_on_close: bool = True,
        close_timeout: float = 5.0,
    ) -> None:
        super().__init__(start, name=url.rstrip("/"))
        if not mime_type.isprintable():
            raise ValueError(f"not a MIME type: {mime_type!r}")
        self.url = url.rstrip("/")
        split_url(self.url)  # a bad URL fails here, not in a background task
        self.mime_type = mime_type
        self.close_timeout = close_timeout
        self._transport = transport
        self._runner = PostRunner(
            self.url,
            mime_type,
            state=self,
            nursery=nursery,
            transport=transport,
            close_timeout=close_timeout,
            on_error=self._post_failed,
        )
        self._start_seq = start
        self._reset = reset
        self._delete_on_close = delete_on_close
        self._preconnect: Post | None = None

    def __repr__(self) -> str:
        return f"<Publisher {self.url} next_seq={self._seq}>"

    async def create(self) -> None:
        """``POST {url}`` with ``Expect-Content``: create the channel (a no-op if it exists).

        Raises:
            ChannelNotFoundError: the server does not autocreate (404).
            HTTPError: another refusal (a before-create hook's 4xx).
            TransportError: no answer.

        Cancellation: the request is abandoned (its connection closed); the channel may
        or may not have been created.
        """
        response = await self._transport.request(
            "POST", self.url, [(wire.EXPECT_CONTENT_HEADER, self.mime_type)]
        )
        error = answer_error(self.url, response.status, response.headers, response.body)
        if error is not None:
            raise error

    async def next(self) -> PublisherSegment:
        """Hand out the preconnected POST as the next segment; preconnect the one after.

        Raises:
            ChannelNotFoundError, ChannelClosedError, HTTPError: the publisher failed.
            RuntimeError: the publisher is closed.

        Cancellation: safe (it lands before anything changes): the preconnect stays for
        the next call.
        """
        await trio.lowlevel.checkpoint()
        self.check_usable()
        post = self._preconnect
        assert post is not None
        post.claimed = True
        self._seq = post.seq + 1
        self._preconnect = self._runner.start(self._seq)
        self.counts.segments_started += 1
        return PublisherSegment(self._runner, post)

    def segment(self) -> AbstractAsyncContextManager[PublisherSegment]:
        """``async with pub.segment() as seg:`` - :meth:`next`, then close or drop.

        Cancellation: as :meth:`next` on entry; on exit as :meth:`PublisherSegment.aclose`,
        or a shielded drop bounded by ``close_timeout`` after an exception.
        """
        return next_segment(self)

    async def write(self, data: bytes | AsyncIterable[bytes]) -> int:
        """Publish one whole segment from bytes or an async byte source; return its seq.

        Bytes whose POST failed without an answer are re-POSTed once, same seq, on a
        fresh connection.

        Raises: as :meth:`PublisherSegment.send`.

        Cancellation: as :meth:`PublisherSegment.write`: a segment cut while its body is
        written is cut visibly (its POST's connection is closed, no terminating chunk);
        one whose body had ended stays whole, and the publisher's close waits for its
        acknowledgement.
        """
        segment = await self.next()
        try:
            await segment.write(data)
        except SegmentWriteError:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise
            await segment.write(data)
        return segment.seq

    async def aclose(self) -> None:
        """Close the publisher, in the order of go-livepeer PR #3824.

        1. Segments whose body was handed over are acknowledged (one left open with
           bytes in it is ended first): closing never loses the last segment.
        2. ``DELETE {url}`` (unless ``delete_on_close=False`` or the channel is gone).
        3. Only then is the idle preconnect let go. The other order races a zero-byte
           segment in front of the DELETE, which a subscriber at -1 then loops on.

        Network errors are logged, not raised. Safe to call twice.

        Cancellation: shielded, bounded by ``close_timeout``.
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        runner = self._runner
        with trio.move_on_after(self.close_timeout, shield=True) as scope:
            for post in list(runner.posts):
                if post.claimed and post.bytes_sent and not post.body_ended:
                    await runner.end_body(post)
            for post in list(runner.posts):
                if post.body_ended:
                    await post.answered.wait()
            if self._delete_on_close and self._failure is None and self._preconnect is not None:
                await self._delete_channel()
            for post in list(runner.posts):
                await runner.end_body(post)
            for post in list(runner.posts):
                await post.answered.wait()
        if scope.cancelled_caught:
            logger.warning("publisher close overran url=%s posts=%d", self.url, len(runner.posts))
        for post in runner.posts:
            post.scope.cancel()
        logger.debug("publisher closed url=%s next_seq=%d", self.url, self._seq)

    # -- internals --------------------------------------------------------------------------

    async def _start(self) -> None:
        """Resolve the first seq and preconnect it."""
        seq, reset = self._start_seq, self._reset
        if seq == wire.SEQ_NEXT:
            # A restarted publisher: continue at the live edge and close what the old one
            # left half-written (the official SDK's rule).
            seq, reset = await self._resolve_next(), True
        self._seq = seq
        self._preconnect = self._runner.start(seq, reset=reset)

    async def _resolve_next(self) -> int:
        response = await self._transport.request("GET", f"{self.url}/next")
        if response.status == 404:
            return 0  # no channel yet: the first POST creates it (or answers 404)
        error = answer_error(self.url, response.status, response.headers, response.body)
        if error is not None:
            raise error
        try:
            default = int(response.body.strip() or b"0")
        except ValueError:
            default = 0
        return max(header_int(response.headers, wire.LATEST_HEADER, default), 0)

    def _post_failed(self, post: Post) -> None:  # sync on purpose
        """A POST ended with an error (the runner calls this in the POST's task): fail
        the publisher, raising if it was the idle preconnect, or preconnect again."""
        error = post.error
        assert error is not None
        if fails_publisher(error, claimed=post.claimed):
            self.fail(error)
            if not post.claimed:
                logger.info("publisher failed url=%s error=%s", self.url, error)
                raise error
        elif self._preconnect is post:
            # The idle preconnect was let go (a server's preconnect timeout, a reset, an
            # eviction) or its connection broke: open the next one now rather than when a
            # segment needs it. At once after a 408 (the server waited already) or the
            # first other answer; after that, or without an answer, a little later.
            # A pooled connection the server had closed is no failure: at once, too.
            timed_out = isinstance(error, HTTPError) and error.status == 408
            answered = isinstance(error, HTTPError) or error.__cause__ is None
            exchange = post.exchange
            stale = exchange is not None and exchange.reused and exchange.head is None
            retry = post.retry + 1
            at_once = timed_out or ((answered or stale) and retry == 1)
            delay = 0.0 if at_once else PRECONNECT_RETRY_DELAY
            logger.debug(
                "preconnect lost url=%s/%d error=%s retry_in=%s", self.url, post.seq, error, delay
            )
            self.counts.post_retries += 1
            self._preconnect = self._runner.start(
                post.seq, reset=post.reset, fresh=True, delay=delay, retry=retry
            )

    async def _delete_channel(self) -> None:
        try:
            response = await self._transport.request("DELETE", self.url)
        except TrickleError as exc:
            logger.warning("channel delete failed url=%s error=%s", self.url, exc)
            return
        if response.status >= 400:
            logger.info("channel delete refused url=%s status=%d", self.url, response.status)


@asynccontextmanager
async def open_publisher(
    url: str,
    mime_type: str = "",
    *,
    start: int = 0,
    reset: bool = False,
    create: bool = False,
    delete_on_close: bool = True,
    close_timeout: float = 5.0,
    timeouts: Timeouts | None = None,
    insecure: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    headers: Iterable[tuple[str, str]] = (),
    transport: Transport | None = None,
) -> AsyncIterator[Publisher]:
    """Publish to the channel at ``url``; ``POST {url}/{seq}`` is preconnected at once.

    Args:
        url: the channel URL, e.g. ``http://127.0.0.1:2939/cam``.
        mime_type: the channel's MIME type (``Content-Type`` of each POST).
        start: the first seq; ``-1`` = continue at the channel's live edge (``GET
            {url}/next``) with ``Lp-Trickle-Reset``, for a restarted publisher.
        reset: send ``Lp-Trickle-Reset`` on the first POST (implied by ``start=-1``).
        create: ``POST {url}`` first (:meth:`Publisher.create`).
        delete_on_close: ``DELETE {url}`` when the block ends (the reference's close).
        close_timeout: bound on closing.
        timeouts, insecure, ssl_context: for the :class:`Transport` made here.
        headers: sent with every request (e.g. ``Authorization: Bearer <token>``).
        transport: a transport to share instead (its options win).

    Raises:
        ChannelNotFoundError, ChannelClosedError, HTTPError: the server's answer, as
            soon as it arrives (even to the idle preconnect: the block is cancelled).
        Whatever the block raised, unwrapped from the nursery's exception group.

    Cancellation: the block's cancellation closes the publisher as :meth:`Publisher.aclose`
    does (shielded, bounded by ``close_timeout``): segments whose body ended are
    acknowledged, one cut mid-chunk is cut visibly; then the channel is deleted, the
    POSTs' tasks are cancelled and a transport made here is closed.
    """
    async with open_client(
        transport, timeouts=timeouts, insecure=insecure, ssl_context=ssl_context, headers=headers
    ) as (transport, nursery):
        publisher = Publisher(
            url,
            mime_type,
            nursery=nursery,
            transport=transport,
            start=start,
            reset=reset,
            delete_on_close=delete_on_close,
            close_timeout=close_timeout,
        )
        async with publisher._running(nursery, create=create):
            yield publisher
