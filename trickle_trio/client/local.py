"""In-process twins of the HTTP clients: the same API over :mod:`trickle_trio.local`.

    async with open_local_publisher(server.registry, "cam", "video/mp2t") as pub:
        async with pub.segment() as seg:          # as with open_publisher(url, ...)
            await seg.send(chunk)

    async with open_local_subscriber(server.registry, "cam", start=-1) as sub:
        async for segment in sub:                 # as with open_subscriber(url, ...)
            async for chunk in segment: ...

Both satisfy the protocols of :mod:`trickle_trio.client.api` and raise the same errors
for the same situations, so code and tests switch transport without changes. What does
not apply in-process: preconnects, transport errors and timeouts, autocreate (pass
``create=True``, or create the channel with the registry). The ``post_*`` / ``get_*``
stats count in-process writes and reads.

Imports: trio, ``trickle_trio.core``, ``trickle_trio.local`` (the one client module that
sees the server side), and the sibling ``api``, ``http`` (``Headers``), ``stats`` and
``_util`` modules.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

from ..core import wire
from ..core.errors import (
    ChannelClosedError,
    ChannelNotFoundError,
    SegmentNotFoundError,
    TrickleError,
)
from ..local import LocalPublisher, LocalSegment, LocalSubscriber
from ._state import PublisherState, SubscriberState
from ._util import NextSegment, open_client_nursery
from .http import Headers
from .post import fails_publisher
from .subscriber import OnGap

if TYPE_CHECKING:
    from ..channels import Channel
    from ..registry import ChannelRegistry

__all__ = [
    "InProcessPublisher",
    "InProcessPublisherSegment",
    "InProcessSubscriber",
    "InProcessSubscriberSegment",
    "open_local_publisher",
    "open_local_subscriber",
]

logger = logging.getLogger(__name__)


class _Dropped(Exception):
    """Makes a dropped segment's source fail, so that the writer closes the segment."""


class _Source:
    """The chunks a segment's writer task reads, from a memory channel."""

    def __init__(self, recv_chan: trio.MemoryReceiveChannel[bytes]) -> None:
        self._recv_chan = recv_chan
        self.dropped = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._recv_chan.receive()
        except trio.EndOfChannel:
            if self.dropped:
                raise _Dropped from None
            raise StopAsyncIteration from None


_OPEN, _DONE, _FAILED, _DROPPED = "open", "done", "failed", "dropped"


class InProcessPublisherSegment:
    """One segment being published in-process; the API of
    :class:`~trickle_trio.client.PublisherSegment`."""

    def __init__(self, publisher: InProcessPublisher, seq: int, *, reset: bool) -> None:
        self.seq = seq
        self._publisher = publisher
        self._reset = reset
        self._state = _OPEN
        self._error: TrickleError | None = None
        self._send_chan: trio.MemorySendChannel[bytes] | None = None
        self._source: _Source | None = None
        self._finished = trio.Event()
        self._task_error: TrickleError | None = None
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"<InProcessPublisherSegment {self._publisher.channel}/{self.seq} {self._state}>"

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
        with trio.CancelScope(shield=True):
            await self.drop()

    def _start(self) -> trio.MemorySendChannel[bytes]:  # sync on purpose
        if self._send_chan is None:
            send_chan, recv_chan = trio.open_memory_channel[bytes](0)
            self._send_chan, self._source = send_chan, _Source(recv_chan)
            self._finished = trio.Event()
            self._task_error = None
            self._publisher.counts.post_attempts += 1
            self._publisher._nursery.start_soon(self._run, self._source, recv_chan)
        return self._send_chan

    async def _run(self, source: _Source, recv_chan: trio.MemoryReceiveChannel[bytes]) -> None:
        publisher = self._publisher
        try:
            await publisher._local.write(source, seq=self.seq, reset=self._reset)
        except _Dropped:
            pass
        except TrickleError as exc:
            self._task_error = exc
            if fails_publisher(exc, claimed=True) and publisher._failure is None:
                publisher._failure = exc
        finally:
            recv_chan.close()
            self._finished.set()

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
            self._publisher.counts.segments_failed += 1
        self._error = error
        return error

    async def send(self, data: bytes) -> None:
        """As :meth:`PublisherSegment.send <trickle_trio.client.PublisherSegment.send>`."""
        self._check_open()
        self._publisher._check_usable()
        send_chan = self._start()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            await send_chan.send(data)
        except trio.BrokenResourceError:
            pass  # the writer task ended: its error says why
        else:
            self.bytes_sent += len(data)
            self._publisher.counts.bytes_submitted_to_transport += len(data)
            return
        await self._finished.wait()
        raise self._fail(self._task_error or ChannelClosedError(self._publisher.channel))

    async def aclose(self) -> None:
        """As :meth:`PublisherSegment.aclose <trickle_trio.client.PublisherSegment.aclose>`."""
        if self._state in (_DONE, _DROPPED):
            await trio.lowlevel.checkpoint()
            return
        self._check_open()
        self._start().close()
        await self._finished.wait()
        if self._task_error is not None:
            raise self._fail(self._task_error)
        self._state = _DONE
        counts = self._publisher.counts
        counts.segments_completed += 1
        counts.post_success += 1
        if self.bytes_sent == 0:
            counts.empty_segments_completed += 1

    async def write(self, data: bytes | AsyncIterable[bytes]) -> None:
        """As :meth:`PublisherSegment.write <trickle_trio.client.PublisherSegment.write>`."""
        if self._state is _DROPPED:
            raise RuntimeError(f"segment {self.seq} was dropped")
        if self._send_chan is not None:
            await self._let_go()
            self._send_chan = None
            self._state, self._error, self.bytes_sent = _OPEN, None, 0
            self._publisher.counts.post_retries += 1
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
                    with trio.CancelScope(shield=True):
                        await self.drop()
                    raise
                await self.send(chunk)
        await self.aclose()

    async def drop(self) -> None:
        """As :meth:`PublisherSegment.drop <trickle_trio.client.PublisherSegment.drop>`:
        the segment is closed with the bytes written so far."""
        if self._state in (_DONE, _DROPPED):
            await trio.lowlevel.checkpoint()
            return
        self._state = _DROPPED
        self._publisher.counts.segments_dropped += 1
        if self._source is not None:
            self._source.dropped = True
        await self._let_go()

    async def _let_go(self) -> None:
        if self._send_chan is None:
            await trio.lowlevel.checkpoint()
            return
        self._send_chan.close()
        await self._finished.wait()


class InProcessPublisher(PublisherState):
    """Publishes channel ``channel`` of ``registry`` in-process; the API of
    :class:`~trickle_trio.client.Publisher`. Made by :func:`open_local_publisher`."""

    def __init__(
        self,
        registry: ChannelRegistry,
        channel: str,
        mime_type: str = "",
        *,
        nursery: trio.Nursery,
        start: int = 0,
        reset: bool = False,
        delete_on_close: bool = True,
    ) -> None:
        super().__init__(start)
        self.channel = channel
        self.mime_type = mime_type
        self._registry = registry
        self._local = LocalPublisher(registry, channel, mime_type)
        self._nursery = nursery
        self._start_seq = start
        self._reset = reset
        self._delete_on_close = delete_on_close
        self._segments: list[InProcessPublisherSegment] = []
        self._started = False

    async def create(self) -> None:
        """Create the channel (a no-op if it exists)."""
        await trio.lowlevel.checkpoint()
        self._local.create_channel()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise RuntimeError(f"publisher {self.channel} is closed")

    async def _start(self) -> None:
        """Like the HTTP preconnect: a missing or closed channel fails at once; a channel
        deleted later fails the publisher while it is idle."""
        await trio.lowlevel.checkpoint()
        channel = self._registry.get(self.channel)
        if channel is None:
            raise ChannelNotFoundError(self.channel)
        if channel.closed:
            raise ChannelClosedError(self.channel)
        if self._start_seq == wire.SEQ_NEXT:
            self._seq, self._reset = channel.next_write, True
        self._started = True
        self._nursery.start_soon(self._watch, channel)

    async def _watch(self, channel: Channel) -> None:
        await channel.wait_deleted()
        if not self._closing:
            if self._failure is None:
                self._failure = ChannelClosedError(self.channel)
            raise self._failure

    async def next(self) -> InProcessPublisherSegment:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        segment = InProcessPublisherSegment(self, self._seq, reset=self._reset)
        self._reset = False
        self._seq += 1
        self._segments = [s for s in self._segments if s._state is _OPEN]
        self._segments.append(segment)
        self.counts.segments_started += 1
        return segment

    def segment(self) -> NextSegment[InProcessPublisherSegment]:
        """As :meth:`Publisher.segment <trickle_trio.client.Publisher.segment>`."""
        return NextSegment(self)

    async def write(self, data: bytes | AsyncIterable[bytes]) -> int:
        segment = await self.next()
        await segment.write(data)
        return segment.seq

    async def aclose(self) -> None:
        """As :meth:`Publisher.aclose <trickle_trio.client.Publisher.aclose>`: segments with
        bytes are completed, then the channel is deleted (if ``delete_on_close``)."""
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            for segment in self._segments:
                if segment._state is _OPEN and segment._send_chan is not None:
                    await segment._let_go()
            if self._delete_on_close and self._failure is None and self._started:
                await self._local.close()


class InProcessSubscriberSegment:
    """One segment read in-process; the API of
    :class:`~trickle_trio.client.SubscriberSegment`."""

    def __init__(
        self, subscriber: InProcessSubscriber, segment: LocalSegment, first: bytes | None
    ) -> None:
        self.seq = segment.seq
        self.latest = segment.latest
        self.content_type = segment.content_type
        self.headers = Headers(segment.headers.items())
        self.size: int | None = None
        self._subscriber = subscriber
        self._segment = segment
        self._first = first
        self._done = first is None
        self._bytes = 0
        if first is None:
            subscriber.counts.empty_segments_delivered += 1

    @property
    def complete(self) -> bool:
        return self._done and self._first is None

    @property
    def bytes_read(self) -> int:
        return self._bytes

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            await trio.lowlevel.checkpoint()
            chunk, self._first = self._first, None
        elif self._done:
            await trio.lowlevel.checkpoint()
            raise StopAsyncIteration
        else:
            try:
                chunk = await anext(self._segment)
            except StopAsyncIteration:
                self._done = True
                raise
        self._bytes += len(chunk)
        self._subscriber.counts.bytes_received += len(chunk)
        return chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._done = True
        self._first = None


class InProcessSubscriber(SubscriberState):
    """Reads channel ``channel`` of ``registry`` in-process; the API of
    :class:`~trickle_trio.client.Subscriber`. Made by :func:`open_local_subscriber`."""

    def __init__(
        self,
        registry: ChannelRegistry,
        channel: str,
        *,
        start: int = wire.SEQ_NEXT,
        on_gap: OnGap = "raise",
        max_consecutive_errors: int = 5,
        retry_delay: float = 0.5,
    ) -> None:
        if on_gap not in ("raise", "jump"):
            raise ValueError(f"on_gap must be 'raise' or 'jump', not {on_gap!r}")
        super().__init__(start)
        self.channel = channel
        self._registry = registry
        self._local = LocalSubscriber(registry, channel)
        self._on_gap = on_gap
        self._max_errors = max_consecutive_errors
        self._retry_delay = retry_delay
        self._seen: Channel | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> InProcessSubscriberSegment:
        segment = await self.next()
        if segment is None:
            raise StopAsyncIteration
        return segment

    def _channel_gone(self) -> bool:
        """The channel this subscriber has read from was closed (deleted since)."""
        current = self._registry.get(self.channel)
        seen = self._seen
        return (seen is not None and seen.closed) or (current is not None and current.closed)

    async def next(self) -> InProcessSubscriberSegment | None:
        """As :meth:`Subscriber.next <trickle_trio.client.Subscriber.next>`."""
        if self._closed:
            raise RuntimeError(f"subscriber {self.channel} is closed")
        behind = 0
        while True:
            if self._ended:
                await trio.lowlevel.checkpoint()
                return None
            self.counts.get_attempts += 1
            started = trio.current_time()
            try:
                segment = await self._local.read(self._seq)
            except ChannelClosedError:
                self._ended = True
                continue
            except ChannelNotFoundError:
                if self._channel_gone():
                    self._ended = True
                    continue
                self.counts.get_404 += 1
                raise
            except SegmentNotFoundError as exc:
                if self._on_gap == "raise" or exc.latest < 0:
                    raise
                if exc.latest >= exc.seq:
                    self.counts.get_470_reset += 1
                    self.counts.seq_gap_events += 1
                    self._seq, self._expected = exc.latest, None
                    continue
                behind += 1
                if behind > self._max_errors:
                    raise
                await trio.sleep(self._retry_delay)
                continue
            if self._seen is None:
                self._seen = self._registry.get(self.channel)
            first = await anext(segment, None)
            self.counts.wait_ms_total += (trio.current_time() - started) * 1000
            if first is None and self._channel_gone():
                self._ended = True
                continue
            if self._expected is not None and segment.seq != self._expected:
                self.counts.seq_gap_events += 1
            self._seq = self._expected = segment.seq + 1
            self._latest = max(self._latest, segment.latest, segment.seq)
            self.counts.segments_delivered += 1
            return InProcessSubscriberSegment(self, segment, first)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True


@asynccontextmanager
async def open_local_publisher(
    registry: ChannelRegistry,
    channel: str,
    mime_type: str = "",
    *,
    start: int = 0,
    reset: bool = False,
    create: bool = False,
    delete_on_close: bool = True,
) -> AsyncIterator[InProcessPublisher]:
    """The in-process twin of :func:`~trickle_trio.client.open_publisher`.

    Args:
        registry: the server's channels (``RunningServer.registry``).
        channel: the channel's name.
        mime_type, start, reset, create, delete_on_close: as for ``open_publisher``.

    Raises:
        ChannelNotFoundError: the channel does not exist (and ``create`` is false).
        ChannelClosedError: the channel was deleted while the publisher was open.
    """
    async with open_client_nursery() as nursery:
        publisher = InProcessPublisher(
            registry,
            channel,
            mime_type,
            nursery=nursery,
            start=start,
            reset=reset,
            delete_on_close=delete_on_close,
        )
        try:
            if create:
                await publisher.create()
            await publisher._start()
            yield publisher
        finally:
            await publisher.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_local_subscriber(
    registry: ChannelRegistry,
    channel: str,
    start: int = wire.SEQ_NEXT,
    *,
    on_gap: OnGap = "raise",
    max_consecutive_errors: int = 5,
    retry_delay: float = 0.5,
) -> AsyncIterator[InProcessSubscriber]:
    """The in-process twin of :func:`~trickle_trio.client.open_subscriber`."""
    subscriber = InProcessSubscriber(
        registry,
        channel,
        start=start,
        on_gap=on_gap,
        max_consecutive_errors=max_consecutive_errors,
        retry_delay=retry_delay,
    )
    try:
        yield subscriber
    finally:
        await subscriber.aclose()


if TYPE_CHECKING:
    from .api import PublisherLike, SubscriberLike
    from .publisher import Publisher
    from .subscriber import Subscriber

    def _conforms(
        a: InProcessPublisher, b: Publisher, c: InProcessSubscriber, d: Subscriber
    ) -> tuple[PublisherLike, PublisherLike, SubscriberLike, SubscriberLike]:
        return a, b, c, d
