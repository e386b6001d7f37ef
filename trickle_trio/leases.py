"""TaskScopes: cancel scopes a channel lends to the request handlers that serve it.

Request handlers live in the HTTP server's nursery, not the channel's; a channel lends
them cancel scopes so that it can refuse new ones once deleted, cancel the ones it
lent and wait until all are given back (``Channel.run``'s teardown order).

Imports: trio and ``trickle_trio.core``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import trio

from .core.errors import ChannelClosedError, LimitExceededError

logger = logging.getLogger(__name__)

__all__ = ["TaskScopes"]


class TaskScopes:
    """Cancel scopes lent to request handlers, so that a channel can cancel them all.

    A handler takes a lease for as long as it serves the channel, *including* its final
    response; the channel cancels the scope (the handler enters it around its waiting)
    and waits until every lease has been returned.
    """

    def __init__(self, channel_name: str, limit: int = 0, limit_name: str = "") -> None:
        self._channel_name = channel_name
        self._limit = limit
        self._limit_name = limit_name
        self._scopes: set[trio.CancelScope] = set()
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._scopes)

    def lease(self) -> AbstractContextManager[trio.CancelScope]:
        """Lend a cancel scope (not entered) for the duration of a ``with``.

        Raises:
            ChannelClosedError: (at the call, not at ``with``) the channel is being, or
                has been, torn down.
            LimitExceededError: (429) ``limit`` leases are out already.
        """
        if self._closed:
            raise ChannelClosedError(self._channel_name)
        if self._limit and len(self._scopes) >= self._limit:
            logger.warning(
                "limit hit limit=%s channel=%s value=%d",
                self._limit_name,
                self._channel_name,
                self._limit,
            )
            raise LimitExceededError(429, self._limit_name, f"Too many {self._limit_name[4:]}")
        return self._lease()

    @contextmanager
    def _lease(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        if not self._scopes:
            self._drained = trio.Event()
        self._scopes.add(scope)
        try:
            yield scope
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._drained.set()

    def close(self) -> None:  # sync on purpose
        """Refuse new leases from now on."""
        self._closed = True

    def cancel(self) -> None:  # sync on purpose
        """Refuse new leases and cancel every lent scope."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()

    async def wait_drained(self) -> None:
        """Wait until every lease has been returned.

        Cancellation: only the wait ends; the leases are untouched.
        """
        await self._drained.wait()

    async def cancel_and_drain(self) -> None:
        """Refuse new leases, cancel every lent scope and wait until all are returned.

        Cancellation: the scopes stay cancelled; the wait is abandoned.
        """
        self.cancel()
        await self.wait_drained()
