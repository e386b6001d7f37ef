"""The in-process API: publish and subscribe straight onto the registry, without HTTP.

``LocalPublisher`` and ``LocalSubscriber`` follow exactly the rules of the HTTP routes
(they share ``publishing.SegmentWriter`` and ``Channel.segment_for_read``), take the same
leases (so a DELETE orders them like HTTP clients), and raise the ``core.errors`` that
the HTTP layer maps to status codes. The changefeed is written through a LocalPublisher.

Imports: trio, ``core``, ``channels``, ``publishing`` (``registry`` for types only).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING

import trio

from .channels import Channel
from .core import wire
from .core.errors import (
    ChannelClosedError,
    ChannelNotFoundError,
    LimitExceededError,
    SegmentNotFoundError,
)
from .publishing import PublisherGone, PublishOutcome, SegmentWriter, write_whole
from .segment import Segment

if TYPE_CHECKING:
    from .registry import ChannelRegistry

__all__ = ["LocalPublisher", "LocalSegment", "LocalSubscriber"]


class LocalPublisher:
    """Publishes segments of channel ``name`` in-process.

    Args:
        registry: the server's channels.
        name: the channel.
        mime_type: used when this publisher creates the channel.
    """

    def __init__(self, registry: ChannelRegistry, name: str, mime_type: str = "") -> None:
        self.registry = registry
        self.name = name
        self.mime_type = mime_type

    def create_channel(self) -> Channel:  # sync on purpose
        """Create the channel (no-op if it exists). Never needs autocreate."""
        return self.registry.create(self.name, self.mime_type)

    def _channel(self) -> Channel:
        channel = self.registry.get(self.name)
        if channel is None:
            raise ChannelNotFoundError(self.name)
        if channel.closed:
            raise ChannelClosedError(self.name)
        return channel

    def write_nowait(self, data: bytes, *, seq: int = wire.SEQ_NEXT, reset: bool = False) -> int:
        """Write one whole segment from ``data`` at once; return its seq.

        Raises:
            ChannelNotFoundError, ChannelClosedError: no channel to write to.
        """
        channel = self._channel()
        try:
            return write_whole(channel, data, seq=seq, reset=reset)
        except SegmentWriter.TooLarge:
            raise _too_large(channel) from None

    async def write(
        self,
        data: bytes | AsyncIterable[bytes],
        *,
        seq: int = wire.SEQ_NEXT,
        reset: bool = False,
    ) -> int:
        """Write one segment from bytes or an async byte source; return its seq.

        The segment becomes readable chunk by chunk as the source yields. It ends when
        the source is exhausted; a source that raises closes the segment with the bytes
        written so far (subscribers end cleanly) and the exception propagates.

        Raises:
            ChannelNotFoundError, ChannelClosedError: no channel to write to, or the
                channel was deleted while writing.
            LimitExceededError: (413) the segment reached ``max_segment_bytes``; it is
                closed at the limit.

        Cancellation: the segment is closed with the bytes written; Cancelled propagates.
        """
        if isinstance(data, bytes):
            await trio.lowlevel.checkpoint()
            return self.write_nowait(data, seq=seq, reset=reset)
        channel = self._channel()
        with channel.publishers.lease() as scope:
            writer = SegmentWriter(channel, channel.segment_for_write(seq, reset=reset))
            source = aiter(data)
            failure: BaseException | None = None

            async def read_chunk() -> bytes | None:
                nonlocal failure
                try:
                    return await anext(source)
                except StopAsyncIteration:
                    return None
                except Exception as exc:
                    failure = exc
                    raise PublisherGone from exc

            outcome = PublishOutcome.CHANNEL_CLOSED
            with scope:
                outcome = await writer.pump(read_chunk)
            if failure is not None:
                raise failure
            if outcome is PublishOutcome.CHANNEL_CLOSED:
                raise ChannelClosedError(self.name)
            if outcome is PublishOutcome.TOO_LARGE:
                raise _too_large(channel)
            return writer.seq

    async def close(self) -> None:
        """Delete the channel (every subscriber ends). No error if it is already gone."""
        try:
            await self.registry.delete(self.name)
        except ChannelNotFoundError:
            await trio.lowlevel.checkpoint()


def _too_large(channel: Channel) -> LimitExceededError:
    return LimitExceededError(
        413,
        "max_segment_bytes",
        f"segment larger than {channel.limits.max_segment_bytes} bytes",
    )


class LocalSegment:
    """One segment as a subscriber sees it: metadata plus an async iterator of chunks.

    Attributes:
        seq: the segment's seq (``Lp-Trickle-Seq``).
        latest: the channel's next write when it was asked for (``Lp-Trickle-Latest``).
        content_type: the channel's MIME type (``Content-Type``).
    """

    def __init__(self, channel: Channel, segment: Segment, latest: int) -> None:
        self._channel = channel
        self._segment = segment
        self._index = 0
        self.seq = segment.seq
        self.latest = latest
        self.content_type = channel.mime_type

    @property
    def headers(self) -> dict[str, str]:
        """The metadata under its HTTP header names."""
        headers = {wire.SEQ_HEADER: str(self.seq), "Content-Type": self.content_type}
        if self.latest != self.seq:
            headers[wire.LATEST_HEADER] = str(self.latest)
        return headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """The next chunk; ends with the segment, or when the channel is deleted.

        Cancellation: atomic; no chunk is lost.
        """
        segment = self._segment
        if self._index < len(segment.chunks):
            await trio.lowlevel.checkpoint()
            chunks = segment.chunks[self._index :]
        elif segment.closed:
            await trio.lowlevel.checkpoint()
            raise StopAsyncIteration
        else:
            try:
                lease = self._channel.subscribers.lease()
            except ChannelClosedError:
                await trio.lowlevel.checkpoint()
                raise StopAsyncIteration from None
            chunks = []  # stays empty if the channel's deletion cancels the wait
            with lease as scope, scope:
                chunks = await segment.wait_chunks(self._index)
            if not chunks:
                raise StopAsyncIteration
        self._index += len(chunks)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read(self) -> bytes:
        """The whole segment (waits for its end)."""
        return b"".join([chunk async for chunk in self])


class LocalSubscriber:
    """Reads segments of channel ``name`` in-process."""

    def __init__(self, registry: ChannelRegistry, name: str) -> None:
        self.registry = registry
        self.name = name

    async def read(self, seq: int = wire.SEQ_NEXT) -> LocalSegment:
        """The segment ``seq`` (``-1`` next, ``-2`` current, ``-N``), as a GET would.

        Raises:
            ChannelNotFoundError: no such channel (404).
            SegmentNotFoundError: not in the window (470), with ``seq`` and ``latest``.
            ChannelClosedError: the channel is closed (``Lp-Trickle-Closed``).
        """
        await trio.lowlevel.checkpoint()
        channel = self.registry.get(self.name)
        if channel is None:
            raise ChannelNotFoundError(self.name)
        if channel.closed:
            raise ChannelClosedError(self.name)
        found = channel.segment_for_read(seq)
        if found.segment is None:
            raise SegmentNotFoundError(found.seq, found.latest)
        return LocalSegment(channel, found.segment, found.latest)
