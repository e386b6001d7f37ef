"""The POSTs of a publisher: :class:`PostRunner` opens each one and reads its answer.

A :class:`~.publisher.Publisher` owns one runner; the segments it hands out
(:class:`~.publisher_segment.PublisherSegment`) write into the runner's POSTs and ask it
to let one go. Neither the runner nor a segment reaches into the publisher: what they
share is the runner's public methods and the :class:`~._state.PublisherState` (counters,
terminal failure, closing).

Rules of this file:

1. A POST (:class:`Post`) is opened and answered by a task in the publisher's nursery;
   its body is written from the caller's task. The answer decides ``post.error``:
   ``None`` means acknowledged.
2. :func:`is_terminal` errors no retry of the same request can fix;
   :func:`fails_publisher` errors end the whole publisher, not only a segment.
3. A POST that ends with an error while the publisher is not closing is handed to the
   publisher's ``on_error`` callback, in the POST's task: it decides whether to
   preconnect again or to fail the publisher (by raising, which cancels the nursery).

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling client modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..core import wire
from ..core.errors import ChannelClosedError, ChannelNotFoundError, HTTPError, TrickleError
from ._state import PublisherState
from ._util import RETRYABLE_STATUSES, answer_error
from .connection import Exchange
from .http import Response, ResponseArrived, ResponseHead, TransportError
from .transport import Transport

__all__ = ["Post", "PostRunner", "SegmentWriteError", "fails_publisher", "is_terminal"]

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


class Post:
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
        #: Handed out as a segment (its body is the caller's), not an idle preconnect.
        self.claimed = False
        self.bytes_sent = 0
        self.scope = trio.CancelScope()

    @property
    def body_ended(self) -> bool:
        return self.exchange is not None and self.exchange.body_ended


class PostRunner:
    """Opens a publisher's POSTs in its nursery and reads their answers.

    Args:
        url: the channel URL (no trailing slash).
        mime_type: ``Content-Type`` of every POST.
        state: the publisher's counters, failure and closing flag.
        nursery: where each POST's task runs.
        transport: the connections.
        close_timeout: bound on letting a POST go.
        on_error: called, in the POST's task, with a POST that ended with an error while
            the publisher was not closing.
    """

    def __init__(
        self,
        url: str,
        mime_type: str,
        *,
        state: PublisherState,
        nursery: trio.Nursery,
        transport: Transport,
        close_timeout: float,
        on_error: Callable[[Post], None],
    ) -> None:
        self.url = url
        self.mime_type = mime_type
        self.state = state
        self.transport = transport
        self.close_timeout = close_timeout
        #: The POSTs whose task still runs.
        self.posts: set[Post] = set()
        self._nursery = nursery
        self._on_error = on_error

    def start(
        self,
        seq: int,
        *,
        reset: bool = False,
        fresh: bool = False,
        delay: float = 0.0,
        retry: int = 0,
    ) -> Post:
        """Open ``POST {url}/{seq}`` in a new task (after ``delay`` seconds)."""
        post = Post(seq, reset=reset, fresh=fresh, delay=delay, retry=retry)
        self.posts.add(post)
        self._nursery.start_soon(self._run, post, name=f"trickle POST {self.url}/{seq}")
        return post

    async def end_body(self, post: Post) -> None:
        """End an unanswered POST's body cleanly, or abandon it if that is not possible.

        Cancellation: :meth:`Exchange.end` finishes the end of the body first (bounded),
        then the cancellation is delivered; a POST not yet opened is abandoned.
        """
        exchange = post.exchange
        if post.answered.is_set():
            await trio.lowlevel.checkpoint()
            return
        if exchange is None or exchange.body_ended:
            if exchange is None:
                post.scope.cancel()
            await trio.lowlevel.checkpoint()
            return
        try:
            await exchange.end()
        except ResponseArrived:
            pass  # answered meanwhile: its task is reading the answer
        except TransportError:
            post.scope.cancel()

    async def let_go(self, post: Post) -> None:
        """End ``post``'s body (or abandon it) and wait, bounded, for its answer.

        Cancellation: the POST may be left running (its body ended or not); the
        publisher's close lets it go.
        """
        await self.end_body(post)
        with trio.move_on_after(self.close_timeout):
            await post.answered.wait()
        post.scope.cancel()

    async def request(self, method: str, url: str) -> Response:
        """One small request on the publisher's transport (a DELETE, ``/next``).

        Cancellation: as :meth:`Transport.request`: the connection is closed, not reused.
        """
        return await self.transport.request(method, url)

    async def _run(self, post: Post) -> None:
        """Open the POST, then read its answer; an error goes to ``on_error``."""
        counts = self.state.counts
        counts.post_attempts += 1
        headers = [("Content-Type", self.mime_type)] if self.mime_type else []
        if post.reset:
            headers.append((wire.RESET_HEADER, "1"))
        url = f"{self.url}/{post.seq}"
        try:
            with post.scope:
                try:
                    if post.delay:
                        await trio.sleep(post.delay)
                    post.exchange = await self.transport.open(
                        "POST", url, headers, content_length=None, fresh=post.fresh
                    )
                    post.opened.set()
                    head = await post.exchange.read_head()
                    body = await post.exchange.read_body()
                    post.error = self._answer(post, post.exchange, head, body)
                except TransportError as exc:
                    counts.post_exceptions += 1
                    post.error = SegmentWriteError(post.seq, self.url, str(exc))
                    post.error.__cause__ = exc
            if post.scope.cancelled_caught and post.error is None:
                post.error = SegmentWriteError(post.seq, self.url, "POST abandoned")
        finally:
            self.posts.discard(post)
            post.opened.set()
            post.answered.set()
            if post.exchange is not None:
                with trio.CancelScope(shield=True):
                    await post.exchange.aclose()
        if post.error is not None and not self.state.closed:
            self._on_error(post)

    def _answer(
        self, post: Post, exchange: Exchange, head: ResponseHead, body: bytes
    ) -> TrickleError | None:
        error = answer_error(self.url, head.status, head.headers, body)
        counts = self.state.counts
        if isinstance(error, ChannelNotFoundError):
            counts.post_404 += 1
            counts.post_http_failures += 1
        elif isinstance(error, HTTPError):
            counts.post_http_failures += 1
        elif error is None:
            if exchange.early:
                return SegmentWriteError(post.seq, self.url, "closed by the server before its end")
            counts.post_success += 1
        return error
