"""The clients in-process: the API of the HTTP clients over :mod:`trickle_trio.local`.

    async with open_local_publisher(server.registry, "cam", "video/mp2t") as pub:
        async with pub.segment() as seg:          # as with open_publisher(url, ...)
            await seg.send(chunk)

    async with open_local_subscriber(server.registry, "cam", start=-1) as sub:
        async for segment in sub:                 # as with open_subscriber(url, ...)
            async for chunk in segment: ...

Both satisfy the protocols of :mod:`trickle_trio.client.api` and raise the same errors
for the same situations, so code and tests switch transport without changes. They are
thin transports over the state machines the HTTP clients run too: a segment's life is
:class:`~.segment_state.SegmentState`, a publisher's and a subscriber's bookkeeping (the
470 rule, gaps, the next seq) :mod:`._state`. "Local" is this package's one word for
in-process: the server's own API is ``trickle_trio.LocalPublisher`` / ``LocalSubscriber``,
these clients over it are ``LocalClient*``, opened by ``open_local_*``. What does
not apply in-process: preconnects, transport errors and timeouts, autocreate (pass
``create=True``, or create the channel with the registry). The ``post_*`` / ``get_*``
stats count in-process writes and reads.

Imports: trio, ``trickle_trio.core``, ``trickle_trio.local`` (the one client module that
sees the server side), and the sibling client modules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Self

import trio

from ..core import wire
from ..core.errors import ChannelClosedError, ChannelNotFoundError, TrickleError
from ..local import LocalPublisher
from ._state import PublisherState
from ._util import next_segment, open_client_nursery
from .local_subscriber import (
    LocalClientSubscriber,
    LocalClientSubscriberSegment,
    open_local_subscriber,
)
from .post import fails_publisher
from .segment_state import SegmentState

if TYPE_CHECKING:
    from ..channels import Channel
    from ..registry import ChannelRegistry

__all__ = [
    "LocalClientPublisher",
    "LocalClientPublisherSegment",
    "LocalClientSubscriber",
    "LocalClientSubscriberSegment",
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


class LocalClientPublisherSegment(SegmentState):
    """One segment being published in-process; the API of
    :class:`~trickle_trio.client.PublisherSegment` (:class:`~.segment_state.SegmentState`).

    Its bytes go through a memory channel to a task of the publisher that runs the
    server's :meth:`LocalPublisher.write <trickle_trio.local.LocalPublisher.write>`; a
    dropped segment ends with the bytes written so far.
    """

    def __init__(self, publisher: LocalClientPublisher, seq: int, *, reset: bool) -> None:
        super().__init__(seq, publisher.counts, drop_timeout=math.inf)
        self._publisher = publisher
        self._reset = reset
        self._send_chan: trio.MemorySendChannel[bytes] | None = None
        self._source: _Source | None = None
        self._finished = trio.Event()
        self._task_error: TrickleError | None = None
        self._bytes = 0

    @property
    def bytes_sent(self) -> int:
        """Body bytes handed to the server by the current attempt at this segment."""
        return self._bytes

    @property
    def begun(self) -> bool:
        """Open and written to (so the publisher's close ends it)."""
        return not self.settled and self._send_chan is not None

    def __repr__(self) -> str:
        return f"<LocalClientPublisherSegment {self._publisher.channel}/{self.seq} {self._state}>"

    def _start(self) -> trio.MemorySendChannel[bytes]:  # sync on purpose
        if self._send_chan is None:
            send_chan, recv_chan = trio.open_memory_channel[bytes](0)
            self._send_chan, self._source = send_chan, _Source(recv_chan)
            self._finished = trio.Event()
            self._task_error = None
            self._publisher.counts.post_attempts += 1
            self._publisher.start_writer(self._run, self._source, recv_chan)
        return self._send_chan

    async def _run(self, source: _Source, recv_chan: trio.MemoryReceiveChannel[bytes]) -> None:
        publisher = self._publisher
        try:
            await publisher.local.write(source, seq=self.seq, reset=self._reset)
        except _Dropped:
            pass
        except TrickleError as exc:
            self._task_error = exc
            if fails_publisher(exc, claimed=True):
                publisher.fail(exc)
        finally:
            recv_chan.close()
            self._finished.set()

    async def let_go(self) -> None:
        """End the segment with the bytes written so far and wait for its writer.

        Cancellation: the segment is ended at once (subscribers reach its end); only
        the wait for the writer task is cut short.
        """
        if self._send_chan is None:
            await trio.lowlevel.checkpoint()
            return
        self._send_chan.close()
        await self._finished.wait()

    # -- the hooks of SegmentState ----------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        self._publisher.check_usable()
        send_chan = self._start()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            await send_chan.send(data)
        except trio.BrokenResourceError:
            pass  # the writer task ended: its error says why
        else:
            self._bytes += len(data)
            self._counts.bytes_submitted_to_transport += len(data)
            return
        await self._finished.wait()
        raise self._fail(self._task_error or ChannelClosedError(self._publisher.channel))

    async def _finish(self) -> None:
        self._start().close()
        await self._finished.wait()
        if self._task_error is not None:
            raise self._fail(self._task_error)
        self._counts.post_success += 1

    async def _abandon(self, error: TrickleError | None) -> None:
        if self._source is not None:
            self._source.dropped = True
        await self.let_go()

    def _written(self) -> bool:
        return self._send_chan is not None

    async def _rewrite(self) -> None:
        await self.let_go()
        self._send_chan = None
        self._bytes = 0
        self._counts.post_retries += 1


class LocalClientPublisher(PublisherState):
    """Publishes channel ``channel`` of ``registry`` in-process; the API of
    :class:`~trickle_trio.client.Publisher`. Made by :func:`open_local_publisher`.

    Attributes:
        local: the server's in-process publisher it writes through.
    """

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
        super().__init__(start, name=channel)
        self.channel = channel
        self.mime_type = mime_type
        self.local = LocalPublisher(registry, channel, mime_type)
        self._registry = registry
        self._nursery = nursery
        self._start_seq = start
        self._reset = reset
        self._delete_on_close = delete_on_close
        self._segments: list[LocalClientPublisherSegment] = []
        self._started = False

    async def create(self) -> None:
        """Create the channel (a no-op if it exists).

        Cancellation: atomic (the channel is created, or not, before the checkpoint).
        """
        await trio.lowlevel.checkpoint()
        self.local.create_channel()

    def start_writer(
        self,
        run: Callable[[_Source, trio.MemoryReceiveChannel[bytes]], Awaitable[None]],
        source: _Source,
        recv_chan: trio.MemoryReceiveChannel[bytes],
    ) -> None:  # sync on purpose
        """Run a segment's writer task in the publisher's nursery."""
        self._nursery.start_soon(run, source, recv_chan)

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
            self.fail(ChannelClosedError(self.channel))
            assert self._failure is not None
            raise self._failure

    async def next(self) -> LocalClientPublisherSegment:
        """The next segment (no preconnect to hand out: it begins with its first write).

        Raises:
            ChannelClosedError: the channel was deleted (the publisher failed).
            RuntimeError: the publisher is closed.

        Cancellation: safe; no segment is handed out and the next seq is unchanged.
        """
        await trio.lowlevel.checkpoint()
        self.check_usable()
        segment = LocalClientPublisherSegment(self, self._seq, reset=self._reset)
        self._reset = False
        self._seq += 1
        self._segments = [s for s in self._segments if not s.settled]
        self._segments.append(segment)
        self.counts.segments_started += 1
        return segment

    def segment(self) -> AbstractAsyncContextManager[LocalClientPublisherSegment]:
        """As :meth:`Publisher.segment <trickle_trio.client.Publisher.segment>`."""
        return next_segment(self)

    async def write(self, data: bytes | AsyncIterable[bytes]) -> int:
        """Publish one whole segment from bytes or an async byte source; return its seq.

        Raises: as :meth:`LocalClientPublisherSegment.send`.

        Cancellation: as :meth:`SegmentState.write <.segment_state.SegmentState.write>`.
        """
        segment = await self.next()
        await segment.write(data)
        return segment.seq

    async def aclose(self) -> None:
        """As :meth:`Publisher.aclose <trickle_trio.client.Publisher.aclose>`: segments with
        bytes are completed, then the channel is deleted (if ``delete_on_close``).

        Cancellation: shielded; returns once every segment has ended and the channel is
        deleted.
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            for segment in self._segments:
                if segment.begun:
                    await segment.let_go()
            if self._delete_on_close and self._failure is None and self._started:
                await self.local.close()


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
) -> AsyncIterator[LocalClientPublisher]:
    """:func:`~trickle_trio.client.open_publisher` in-process.

    Args:
        registry: the server's channels (``RunningServer.registry``).
        channel: the channel's name.
        mime_type, start, reset, create, delete_on_close: as for ``open_publisher``.

    Raises:
        ChannelNotFoundError: the channel does not exist (and ``create`` is false).
        ChannelClosedError: the channel was deleted while the publisher was open.

    Cancellation: the block's cancellation closes the publisher (shielded): a segment
    with bytes in it is ended there, whole as written, and the channel is deleted (if
    ``delete_on_close``); then its writer tasks are cancelled.
    """
    async with open_client_nursery() as nursery:
        publisher = LocalClientPublisher(
            registry,
            channel,
            mime_type,
            nursery=nursery,
            start=start,
            reset=reset,
            delete_on_close=delete_on_close,
        )
        async with publisher._running(nursery, create=create):
            yield publisher


if TYPE_CHECKING:
    from .api import PublisherLike, SubscriberLike
    from .publisher import Publisher
    from .subscriber import Subscriber

    def _conforms(
        a: LocalClientPublisher, b: Publisher, c: LocalClientSubscriber, d: Subscriber
    ) -> tuple[PublisherLike, PublisherLike, SubscriberLike, SubscriberLike]:
        return a, b, c, d
