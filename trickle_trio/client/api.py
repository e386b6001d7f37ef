"""The client API both transports implement, as typing protocols.

:func:`~trickle_trio.client.open_publisher` / :func:`~trickle_trio.client.open_subscriber`
(HTTP) and :func:`~trickle_trio.client.local.open_local_publisher` /
:func:`~trickle_trio.client.local.open_local_subscriber` (in-process) yield objects that
satisfy these protocols, so code annotated with them runs on either transport::

    async def stream_frames(pub: PublisherLike, frames: AsyncIterable[bytes]) -> None:
        async for frame in frames:
            await pub.write(frame)

Imports: stdlib and the sibling ``stats`` module.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

from .stats import PublisherStats, SubscriberStats

__all__ = ["PublisherLike", "PublisherSegmentLike", "SubscriberLike", "SubscriberSegmentLike"]


class PublisherSegmentLike(Protocol):
    """A segment being published (:class:`~trickle_trio.client.PublisherSegment`)."""

    @property
    def seq(self) -> int: ...

    async def send(self, data: bytes) -> None:
        """One chunk. Cancellation: over HTTP the chunk may be half-sent and the segment
        fails on its next use (cut visibly); in-process the chunk is handed over whole or not."""

    async def write(self, data: bytes | AsyncIterable[bytes]) -> None:
        """The whole segment, acknowledged. Cancellation: as ``send`` while writing, as
        ``aclose`` once the body has ended; a cancelled source drops the segment."""

    async def aclose(self) -> None:
        """End the body, wait for the acknowledgement. Cancellation: the end is written first
        (the segment is whole); only the wait is cut short."""

    async def drop(self) -> None:
        """Give the segment up. Cancellation: it is dropped at once; the DELETE may be skipped."""

    async def __aenter__(self) -> Any:
        """The segment. Cancellation: before anything is written."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``aclose``, or after an exception ``drop`` (shielded, bounded)."""


class PublisherLike(Protocol):
    """A publisher (:class:`~trickle_trio.client.Publisher`)."""

    @property
    def next_seq(self) -> int: ...

    def stats(self) -> PublisherStats: ...

    async def create(self) -> None:
        """Create the channel. Cancellation: it may or may not have been created."""

    async def next(self) -> PublisherSegmentLike:
        """The next segment. Cancellation: safe; nothing is handed out."""

    def segment(self) -> AbstractAsyncContextManager[PublisherSegmentLike]: ...

    async def write(self, data: bytes | AsyncIterable[bytes]) -> int:
        """One whole segment; its seq. Cancellation: as ``PublisherSegmentLike.write``."""

    async def aclose(self) -> None:
        """Close (segments with bytes are ended whole, then DELETE). Cancellation: shielded."""


class SubscriberSegmentLike(Protocol):
    """A segment being read (:class:`~trickle_trio.client.SubscriberSegment`)."""

    @property
    def seq(self) -> int: ...

    @property
    def latest(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def __aiter__(self) -> Any: ...

    async def __anext__(self) -> bytes:
        """The next chunk. Cancellation: no chunk is lost (over HTTP the connection is then
        not reused)."""

    async def read(self) -> bytes:
        """The rest of the body. Cancellation: what this call read is lost to the caller."""

    async def aclose(self) -> None:
        """Stop reading this segment. Cancellation: it is closed even so."""


class SubscriberLike(Protocol):
    """A subscriber (:class:`~trickle_trio.client.Subscriber`)."""

    @property
    def seq(self) -> int: ...

    def set_seq(self, seq: int) -> None: ...

    def stats(self) -> SubscriberStats: ...

    async def next(self) -> SubscriberSegmentLike | None:
        """The next segment, ``None`` at the end. Cancellation: safe; nothing is consumed."""

    def __aiter__(self) -> Any: ...

    async def __anext__(self) -> SubscriberSegmentLike:
        """As ``next`` (StopAsyncIteration at the end)."""

    async def aclose(self) -> None:
        """Stop every request in flight. Cancellation: shielded over HTTP."""
