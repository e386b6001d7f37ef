"""BatchSocketListener: a trio SocketListener that takes waiting connections in batches.

trio's ``SocketListener.accept`` passes through the scheduler after every connection it
accepts, and ``trio.serve_listeners`` accepts in a loop: one connection per scheduler
pass. On a busy server a pass takes milliseconds, so a burst of new connections (clients
opening their publishers' and subscribers' preconnects at once, e.g. after a restart)
waits in the kernel's accept queue for seconds: 570 connections were measured queued
for ~2 s at 200 live channels, and data sent on them meanwhile arrives late and out of
order with data on older connections (a late first byte moves a channel's next write
back, and its subscribers get 470). This listener takes up to :data:`ACCEPT_BATCH`
connections that are already waiting without a scheduler pass in between, then passes.

:func:`install_for_hypercorn` makes hypercorn's trio worker build its listeners with
this class (only hypercorn's own view of ``trio`` changes). Unlike the fast classes it
is not per app: once installed, every hypercorn server the process starts gets it; it
changes only how many connections one scheduler pass takes, never what they carry.
Anything but a connection that is there at once (nothing waiting, an error, a closed
socket) goes through trio's own ``accept``, which handles it as it always does.
"""

from __future__ import annotations

import types
from typing import Any

import hypercorn.trio.run as hypercorn_run
import trio

__all__ = ["ACCEPT_BATCH", "BatchSocketListener", "install_for_hypercorn"]

#: Connections accepted in a row without a scheduler pass.
ACCEPT_BATCH = 64


class BatchSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A ``trio.SocketListener`` (wrapped: that class is final) whose ``accept`` does not
    pass through the scheduler for a connection that is already waiting (up to
    :data:`ACCEPT_BATCH` in a row).

    Cancellation: as ``trio.SocketListener.accept`` (a connection is either returned or
    left in the kernel's queue).
    """

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(socket)
        self.socket = self._listener.socket
        self._in_a_row = 0

    async def accept(self) -> trio.SocketStream:
        if self._in_a_row < ACCEPT_BATCH:
            raw: Any = getattr(self.socket, "_sock", None)  # the stdlib socket trio wraps
            if raw is not None:
                try:
                    sock, _ = raw.accept()
                except OSError:  # nothing waiting, or an error: trio's accept handles it
                    pass
                else:
                    self._in_a_row += 1
                    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._in_a_row = 0
        return await self._listener.accept()

    async def aclose(self) -> None:
        await self._listener.aclose()


def install_for_hypercorn() -> None:
    """Make ``hypercorn.trio.run`` build :class:`BatchSocketListener` listeners."""
    if isinstance(getattr(hypercorn_run, "trio", None), _TrioForHypercorn):
        return
    setattr(hypercorn_run, "trio", _TrioForHypercorn())  # ruff: ignore[set-attr-with-constant]


class _TrioForHypercorn(types.SimpleNamespace):
    """trio as ``hypercorn.trio.run`` sees it: trio, with the batching listener."""

    SocketListener = BatchSocketListener

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)
