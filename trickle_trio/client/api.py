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

    async def send(self, data: bytes) -> None: ...

    async def write(self, data: bytes | AsyncIterable[bytes]) -> None: ...

    async def aclose(self) -> None: ...

    async def drop(self) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class PublisherLike(Protocol):
    """A publisher (:class:`~trickle_trio.client.Publisher`)."""

    @property
    def next_seq(self) -> int: ...

    def stats(self) -> PublisherStats: ...

    async def create(self) -> None: ...

    async def next(self) -> PublisherSegmentLike: ...

    def segment(self) -> AbstractAsyncContextManager[PublisherSegmentLike]: ...

    async def write(self, data: bytes | AsyncIterable[bytes]) -> int: ...

    async def aclose(self) -> None: ...


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

    async def __anext__(self) -> bytes: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class SubscriberLike(Protocol):
    """A subscriber (:class:`~trickle_trio.client.Subscriber`)."""

    @property
    def seq(self) -> int: ...

    def set_seq(self, seq: int) -> None: ...

    def stats(self) -> SubscriberStats: ...

    async def next(self) -> SubscriberSegmentLike | None: ...

    def __aiter__(self) -> Any: ...

    async def __anext__(self) -> SubscriberSegmentLike: ...

    async def aclose(self) -> None: ...
