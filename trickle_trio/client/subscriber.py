"""The trickle subscriber over HTTP: follows ``Lp-Trickle-Seq``, preconnects the next GET.

How it runs (the shape of go-livepeer's ``trickle_subscriber.go`` and of the official
Python SDK, on trio):

- :func:`open_subscriber` owns a nursery. Every GET is a :class:`_Get` whose task sends
  it and waits for the response head. A GET with no head after ``preconnect_timeout``
  (20 s, the reference's rule) is re-issued; connection errors, 5xx, 408 and 429 are
  retried every ``retry_delay``, and more than ``max_consecutive_errors`` in a row fail
  the subscription.
- As soon as a segment's head has arrived, the segment is handed to the caller and the
  GET for seq + 1 starts in the background (the preconnect).
- ``Lp-Trickle-Closed`` ends the iteration; 404 raises :class:`ChannelNotFoundError`
  (or, once segments of the channel have been read, ends the iteration: the channel
  was deleted between two GETs);
  470 raises :class:`SegmentNotFoundError` or, with ``on_gap="jump"``, moves to the live
  edge and counts it. A segment of zero bytes is an ordinary, empty segment.

Imports: stdlib, trio, ``trickle_trio.core`` and the sibling client modules.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from ..core import wire
from ..core.errors import ChannelNotFoundError, HTTPError, SegmentNotFoundError, TrickleError
from ._state import OnGap, SegmentReadState, SubscriberState
from ._util import RETRYABLE_STATUSES, header_int
from .connection import Exchange
from .http import (
    Headers,
    ResponseHead,
    Timeouts,
    TransportError,
    TransportTimeout,
    split_url,
)
from .transport import Transport, open_client

__all__ = ["OnGap", "Subscriber", "SubscriberSegment", "open_subscriber"]

logger = logging.getLogger(__name__)


class _Get:
    """One GET of one seq: the task that sends it, and the head it got (or the error)."""

    __slots__ = ("done", "error", "exchange", "head", "scope", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.done = trio.Event()
        self.exchange: Exchange | None = None
        self.head: ResponseHead | None = None
        self.error: TrickleError | None = None
        self.scope = trio.CancelScope()


class SubscriberSegment(SegmentReadState):
    """One segment as it arrives: metadata, and the body as an async iterator of chunks.

    ``async for chunk in segment`` yields each chunk as the server sends it and ends with
    the segment. Asking the subscriber for the next segment closes this one if it was
    not read to its end.

    Attributes:
        seq: the segment's seq (``Lp-Trickle-Seq``).
        latest: the channel's next write when the server answered (``Lp-Trickle-Latest``,
            or ``seq`` when the header is absent).
        content_type: the channel's MIME type (``Content-Type``; an empty segment's
            answer may lack it, and then the last one seen on the channel is used).
        headers: every response header, looked up case-insensitively.
        size: bytes the server had buffered when it answered (``Lp-Trickle-Size``), if
            it said so.
    """

    def __init__(
        self, subscriber: Subscriber, exchange: Exchange, head: ResponseHead, seq: int, latest: int
    ) -> None:
        self.seq = seq
        self.latest = latest
        self.headers: Headers = head.headers
        self.content_type = head.headers.get("Content-Type", subscriber._content_type)
        subscriber._content_type = self.content_type
        size = header_int(head.headers, wire.SIZE_HEADER, -1)
        self.size = size if size >= 0 else None
        self._subscriber = subscriber
        self._exchange = exchange
        self._bytes = 0
        self._done = False

    def __repr__(self) -> str:
        return f"<SubscriberSegment seq={self.seq} latest={self.latest} bytes={self._bytes}>"

    @property
    def complete(self) -> bool:
        """The body was read to its end."""
        return self._done and self._exchange.response_done

    async def __anext__(self) -> bytes:
        """The next chunk of the body.

        Raises:
            TransportError: the connection broke, or ``between_chunks`` passed.

        Cancellation: no chunk is lost, but the connection will not be reused.
        """
        if self._done:
            await trio.lowlevel.checkpoint()
            raise StopAsyncIteration
        try:
            chunk = await self._exchange.read_chunk()
        except TransportError:
            self._done = True
            with trio.CancelScope(shield=True):
                await self._exchange.aclose()
            raise
        if not chunk:
            self._done = True
            counts = self._subscriber.counts
            if self._bytes == 0:
                counts.empty_segments_delivered += 1
            await self._exchange.aclose()
            raise StopAsyncIteration
        self._bytes += len(chunk)
        self._subscriber.counts.bytes_received += len(chunk)
        return chunk

    async def aclose(self) -> None:
        """Stop reading: a segment not read to its end has its connection closed.

        Cancellation: the segment is closed even so (its connection closed or pooled).
        """
        self._done = True
        await self._exchange.aclose()


class Subscriber(SubscriberState[SubscriberSegment]):
    """Reads the segments of one channel over HTTP. Made by :func:`open_subscriber`.

    ``async for segment in subscriber`` (or ``await subscriber.next()``, ``None`` at the
    end) yields :class:`SubscriberSegment` objects in seq order.

    Attributes:
        url: the channel URL (no trailing slash).
    """

    def __init__(
        self,
        url: str,
        *,
        nursery: trio.Nursery,
        transport: Transport,
        start: int = wire.SEQ_NEXT,
        on_gap: OnGap = "raise",
        preconnect_timeout: float = 20.0,
        max_consecutive_errors: int = 5,
        retry_delay: float = 0.5,
    ) -> None:
        super().__init__(start, on_gap, max_consecutive_errors, retry_delay)
        self.url = url.rstrip("/")
        split_url(self.url)  # a bad URL fails here, not in a background task
        self._nursery = nursery
        self._transport = transport
        self._preconnect_timeout = preconnect_timeout
        self._preconnect: _Get | None = None
        self._discarded: list[_Get] = []
        self._current: SubscriberSegment | None = None
        self._content_type = ""

    def __repr__(self) -> str:
        return f"<Subscriber {self.url} seq={self._seq}>"

    def set_seq(self, seq: int) -> None:  # sync on purpose
        """Read ``seq`` next (``-1`` next, ``-2`` current, ``-N``, or a seq).

        A preconnect for another seq is cancelled; the segment being read is left to the
        caller. A subscription that had ended goes on.
        """
        super().set_seq(seq)
        if self._preconnect is not None and self._preconnect.seq != seq:
            self._discard(self._preconnect)
            self._preconnect = None

    async def next(self) -> SubscriberSegment | None:
        """The next segment, once its head has arrived; ``None`` at the end of the stream.

        Raises:
            ChannelNotFoundError: 404 before any segment was read (after one, a 404 means
                the channel was deleted between two GETs: the end of the stream).
            SegmentNotFoundError: 470 (unless ``on_gap="jump"``), with seq and latest.
            HTTPError: another 4xx, or a 5xx that outlasted the retries.
            TransportError: the server could not be reached, more than
                ``max_consecutive_errors`` times in a row.

        Cancellation: safe; the GET in flight stays preconnected for the next call.
        """
        if self._closed:
            raise RuntimeError(f"subscriber {self.url} is closed")
        await self._tidy()
        behind = 0
        while True:
            if self._ended:
                await trio.lowlevel.checkpoint()
                return None
            get = self._take(self._seq)
            await get.done.wait()
            self._preconnect = None
            if get.error is not None:
                raise get.error
            exchange, head = get.exchange, get.head
            assert exchange is not None
            assert head is not None
            headers = head.headers
            if wire.CLOSED_HEADER in headers:
                await exchange.aclose()
                self._ended = True
                logger.debug("end of stream url=%s seq=%d", self.url, get.seq)
                return None
            if head.status == 404:
                self.counts.get_404 += 1
                await exchange.aclose()
                if self.counts.segments_delivered:
                    # It was there: deleted between two GETs (a preconnect that reached
                    # the server after the DELETE). That is the end of the stream.
                    self._ended = True
                    return None
                raise ChannelNotFoundError(self.url)
            seq = header_int(headers, wire.SEQ_HEADER, max(get.seq, 0))
            latest = header_int(headers, wire.LATEST_HEADER, -1)
            if head.status == wire.STATUS_SEQ_NOT_FOUND:
                await exchange.aclose()
                if latest < seq:
                    behind += 1  # asked ahead of the writer: wait for it rather than go back
                action = self._gap(seq, latest, behind)
                if action == "raise":
                    raise SegmentNotFoundError(seq, latest)
                if action == "jump":
                    logger.info("jump to live edge url=%s seq=%d latest=%d", self.url, seq, latest)
                else:
                    await trio.sleep(self._retry_delay)
                continue
            if head.status != 200:
                body = await self._read_error_body(exchange)
                raise HTTPError(head.status, body)
            self._delivered(seq, latest)
            self._preconnect = self._start_get(seq + 1)
            segment = SubscriberSegment(self, exchange, head, seq, latest if latest >= 0 else seq)
            self._current = segment
            return segment

    async def aclose(self) -> None:
        """Stop: close the segment being read and every GET in flight. Safe to call twice.

        Cancellation: shielded; returns once every GET's task has ended.
        """
        self._closed = True
        if self._preconnect is not None:
            self._discard(self._preconnect)
            self._preconnect = None
        with trio.CancelScope(shield=True):
            await self._tidy()

    # -- internals --------------------------------------------------------------------------

    async def _read_error_body(self, exchange: Exchange) -> bytes:
        try:
            return await exchange.read_body()
        except TransportError:
            return b""
        finally:
            await exchange.aclose()

    def _take(self, seq: int) -> _Get:
        """The preconnect if it is for ``seq``, else a new GET."""
        get = self._preconnect
        if get is not None and get.seq == seq:
            return get
        if get is not None:
            self._discard(get)
        self._preconnect = self._start_get(seq)
        return self._preconnect

    def _discard(self, get: _Get) -> None:  # sync on purpose
        get.scope.cancel()
        self._discarded.append(get)

    async def _tidy(self) -> None:
        """Close the segment left half-read and the GETs given up."""
        current, self._current = self._current, None
        if current is not None and not current.complete:
            await current.aclose()
        discarded, self._discarded = self._discarded, []
        for get in discarded:
            await get.done.wait()  # its scope is cancelled: soon
            if get.exchange is not None:
                await get.exchange.aclose()
        await trio.lowlevel.checkpoint()

    def _start_get(self, seq: int) -> _Get:
        get = _Get(seq)
        self._nursery.start_soon(self._run_get, get, name=f"trickle GET {self.url}/{seq}")
        return get

    async def _run_get(self, get: _Get) -> None:
        """Send the GET until it has a head: re-issue it after ``preconnect_timeout``,
        retry errors; give up after more than ``max_consecutive_errors`` in a row."""
        counts = self.counts
        url = f"{self.url}/{get.seq}"
        errors = 0
        attempt = 0
        fresh = False
        try:
            with get.scope:
                while True:
                    attempt += 1
                    counts.get_attempts += 1
                    if attempt > 1:
                        counts.get_retries += 1
                    failure, reused = await self._attempt(get, url, fresh=fresh)
                    if failure is None:
                        if get.head is not None:
                            return
                        counts.preconnect_reissues += 1
                        logger.debug("preconnect re-issued url=%s", url)
                        continue
                    if reused and not fresh and get.exchange is None:
                        fresh = True  # a pooled connection the server had closed: go again
                        continue
                    fresh = False
                    counts.get_failures += 1
                    errors += 1
                    if errors > self._max_errors:
                        get.error = failure
                        # Raised to the caller, who reports it: no second report here.
                        logger.info("subscription failed url=%s error=%s", url, failure)
                        return
                    logger.info("GET failed, retrying url=%s error=%s", url, failure)
                    await trio.sleep(self._retry_delay)
        finally:
            if get.head is None and get.error is None:
                get.error = TransportError(f"{url}: GET abandoned")
            get.done.set()

    async def _attempt(
        self, get: _Get, url: str, *, fresh: bool
    ) -> tuple[TrickleError | None, bool]:
        """One GET. Returns (None, _) with ``get.head`` set, or (None, _) without it for a
        re-issue, or (the error, whether the connection was a pooled one)."""
        started = trio.current_time()
        try:
            exchange = await self._transport.open("GET", url, fresh=fresh)
        except TransportError as exc:
            return exc, False
        try:
            with trio.move_on_after(self._preconnect_timeout):
                head = await exchange.read_head()
                self.counts.wait_ms_total += (trio.current_time() - started) * 1000
                if head.status < 500 and head.status not in RETRYABLE_STATUSES:
                    get.exchange, get.head = exchange, head
                    return None, exchange.reused
                body = await exchange.read_body()
                return HTTPError(head.status, body), False
            return None, exchange.reused
        except TransportError as exc:
            stale = exchange.reused and exchange.head is None
            return exc, stale and not isinstance(exc, TransportTimeout)
        finally:
            if get.exchange is not exchange:
                with trio.CancelScope(shield=True):
                    await exchange.aclose()


@asynccontextmanager
async def open_subscriber(
    url: str,
    start: int = wire.SEQ_NEXT,
    *,
    on_gap: OnGap = "raise",
    preconnect_timeout: float = 20.0,
    max_consecutive_errors: int = 5,
    retry_delay: float = 0.5,
    timeouts: Timeouts | None = None,
    insecure: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    headers: Iterable[tuple[str, str]] = (),
    transport: Transport | None = None,
) -> AsyncIterator[Subscriber]:
    """Subscribe to the channel at ``url`` from seq ``start``.

    Args:
        url: the channel URL, e.g. ``http://127.0.0.1:2939/cam``.
        start: ``-1`` the next segment (default), ``-2`` the one being written now, a
            seq, or ``-N`` (N-1 before the next).
        on_gap: on 470, ``"raise"`` :class:`SegmentNotFoundError` or ``"jump"`` to the
            live edge (counted in ``get_470_reset`` and ``seq_gap_events``).
        preconnect_timeout: re-issue a GET that has had no response head this long.
        max_consecutive_errors: errors in a row (connection, 5xx) tolerated per GET.
        retry_delay: seconds between retries.
        timeouts, insecure, ssl_context: for the :class:`Transport` made here.
        headers: sent with every request (e.g. ``Authorization: Bearer <token>``).
        transport: a transport to share instead (its options win).

    Raises: see :meth:`Subscriber.next`; errors come out unwrapped.

    Cancellation: the block's cancellation closes the subscriber (shielded: every GET in
    flight is cancelled and its connection closed) and a transport made here.
    """
    async with open_client(
        transport, timeouts=timeouts, insecure=insecure, ssl_context=ssl_context, headers=headers
    ) as (transport, nursery):
        subscriber = Subscriber(
            url,
            nursery=nursery,
            transport=transport,
            start=start,
            on_gap=on_gap,
            preconnect_timeout=preconnect_timeout,
            max_consecutive_errors=max_consecutive_errors,
            retry_delay=retry_delay,
        )
        async with subscriber._running(nursery):
            yield subscriber
