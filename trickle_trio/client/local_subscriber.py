"""The in-process subscriber: the API of the HTTP subscriber over
:class:`trickle_trio.LocalSubscriber`; opened by
:func:`~trickle_trio.client.local.open_local_subscriber` (see :mod:`.local`).

The 470 rule, gap counting and the next seq are :class:`~._state.SubscriberState`'s, as
for the HTTP subscriber; what is left here is reading the server's segments in-process.

Imports: trio, ``trickle_trio.core``, ``trickle_trio.local`` (the server's in-process
API), and the sibling client modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from ..core import wire
from ..core.errors import ChannelClosedError, ChannelNotFoundError, SegmentNotFoundError
from ..local import LocalSegment, LocalSubscriber
from ._state import OnGap, SegmentReadState, SubscriberState
from .http import Headers

if TYPE_CHECKING:
    from ..channels import Channel
    from ..registry import ChannelRegistry

__all__ = ["LocalClientSubscriber", "LocalClientSubscriberSegment", "open_local_subscriber"]


class LocalClientSubscriberSegment(SegmentReadState):
    """One segment read in-process; the API of
    :class:`~trickle_trio.client.SubscriberSegment`."""

    def __init__(
        self, subscriber: LocalClientSubscriber, segment: LocalSegment, first: bytes | None
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

    async def __anext__(self) -> bytes:
        """The next chunk of the segment.

        Cancellation: atomic; no chunk is lost.
        """
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

    async def aclose(self) -> None:
        """Stop reading this segment (the channel keeps it for other readers).

        Cancellation: the segment is closed before the checkpoint.
        """
        self._done = True
        self._first = None
        await trio.lowlevel.checkpoint()


class LocalClientSubscriber(SubscriberState[LocalClientSubscriberSegment]):
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
        super().__init__(start, on_gap, max_consecutive_errors, retry_delay)
        self.channel = channel
        self._registry = registry
        self._local = LocalSubscriber(registry, channel)
        self._seen: Channel | None = None

    def _channel_gone(self) -> bool:
        """The channel this subscriber has read from was closed (deleted since)."""
        current = self._registry.get(self.channel)
        seen = self._seen
        return (seen is not None and seen.closed) or (current is not None and current.closed)

    async def next(self) -> LocalClientSubscriberSegment | None:
        """As :meth:`Subscriber.next <trickle_trio.client.Subscriber.next>`.

        Cancellation: safe; nothing is consumed (the seq is not advanced), so the next
        call asks for the same segment again.
        """
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
                if exc.latest < exc.seq:
                    behind += 1  # asked ahead of the writer: wait for it rather than go back
                action = self._gap(exc.seq, exc.latest, behind)
                if action == "raise":
                    raise
                if action == "wait":
                    await trio.sleep(self._retry_delay)
                continue
            if self._seen is None:
                self._seen = self._registry.get(self.channel)
            first = await anext(segment, None)
            self.counts.wait_ms_total += (trio.current_time() - started) * 1000
            if first is None and self._channel_gone():
                self._ended = True
                continue
            self._delivered(segment.seq, segment.latest)
            return LocalClientSubscriberSegment(self, segment, first)

    async def aclose(self) -> None:
        """Stop: later calls to :meth:`next` raise RuntimeError. Safe to call twice.

        Cancellation: the subscriber is closed before the checkpoint.
        """
        self._closed = True
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_local_subscriber(
    registry: ChannelRegistry,
    channel: str,
    start: int = wire.SEQ_NEXT,
    *,
    on_gap: OnGap = "raise",
    max_consecutive_errors: int = 5,
    retry_delay: float = 0.5,
) -> AsyncIterator[LocalClientSubscriber]:
    """:func:`~trickle_trio.client.open_subscriber` in-process: a
    :class:`LocalClientSubscriber` of channel ``channel`` of ``registry``, closed when the
    block ends. Arguments and errors as for ``open_subscriber`` (no transport options).

    Cancellation: the block's cancellation closes the subscriber; nothing is left running.
    """
    subscriber = LocalClientSubscriber(
        registry,
        channel,
        start=start,
        on_gap=on_gap,
        max_consecutive_errors=max_consecutive_errors,
        retry_delay=retry_delay,
    )
    async with subscriber._running():
        yield subscriber
