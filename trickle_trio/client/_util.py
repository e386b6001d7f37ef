"""Helpers shared by the client modules: exception groups, header ints, answer errors,
the ``async with publisher.segment()`` context.

Imports: stdlib, trio and ``trickle_trio.core``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import trio

from ..core import wire
from ..core.errors import ChannelClosedError, ChannelNotFoundError, HTTPError, TrickleError

#: 4xx answers that a later attempt may not get: a preconnect idle too long (408),
#: a busy server (429). Retried like 5xx.
RETRYABLE_STATUSES: Final = frozenset({408, 429})


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error a nursery's exception group stands for, or None to re-raise the group.

    ``Cancelled`` leaves are ignored (they are how the other tasks were stopped). What is
    left must be one exception, or several trickle errors of the same class (the same
    answer seen by a background task and by the caller's own call); the first is returned.
    """
    errors = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
    if not errors:
        return None
    first = errors[0]
    if len(errors) == 1:
        return first
    if isinstance(first, TrickleError) and all(type(e) is type(first) for e in errors):
        return first
    return None


@asynccontextmanager
async def open_client_nursery() -> AsyncIterator[trio.Nursery]:
    """The nursery of a client's background tasks; the one error its exception group
    stands for (:func:`single_error`) comes out unwrapped, other groups as they are.

    Cancellation: as any nursery's: every task in it is cancelled and waited for.
    """
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
    if error is not None:
        raise error


_Segment = TypeVar("_Segment", bound=AbstractAsyncContextManager[Any])
_Segment_co = TypeVar("_Segment_co", bound=AbstractAsyncContextManager[Any], covariant=True)


class _Opener(Protocol[_Segment_co]):
    async def next(self) -> _Segment_co: ...


@asynccontextmanager
async def next_segment(publisher: _Opener[_Segment]) -> AsyncIterator[_Segment]:
    """``async with publisher.segment() as seg``: ``publisher.next()``, then the segment
    as its own context (ends it on a normal exit, drops it on an exception).

    Cancellation: as the segment's ``__aexit__`` (a shielded, bounded drop).
    """
    segment = await publisher.next()
    async with segment:
        yield segment


def header_int(headers: Mapping[str, str], name: str, default: int) -> int:
    """An integer header, or ``default`` if it is missing or not an integer."""
    value = headers.get(name)
    if value is None:
        return default
    try:
        return int(value.strip())
    except ValueError:
        return default


def answer_error(
    url: str, status: int, headers: Mapping[str, str], body: bytes
) -> TrickleError | None:
    """The error a trickle answer stands for, or None for a plain success.

    ``Lp-Trickle-Closed`` -> :class:`ChannelClosedError` (whatever the status); 404 ->
    :class:`ChannelNotFoundError`; any other status >= 400 -> :class:`HTTPError`.
    ``url`` names the channel in the message.
    """
    if wire.CLOSED_HEADER in headers:
        return ChannelClosedError(url)
    if status == 404:
        return ChannelNotFoundError(url)
    if status >= 400:
        return HTTPError(status, body)
    return None
