"""Reactor: one task that reads every plain connection of the server.

A live publisher sends a small chunk every few milliseconds, and a subscriber's
connection must be watched for its client leaving while its handler waits. Reading
each socket in its connection's own task costs trio an epoll re-arm (trio registers a
socket one-shot), a scheduler pass and the resumption of that task's coroutines, per
read. Here sockets stay registered (level-triggered) in one epoll set; one system task
waits for it and, in one scheduler pass, calls each ready socket's callback, which
reads and parses right there (``Connection.on_readable``). A connection's task is woken
only when there is something for it to do (a request head, the end of a body, the
client gone).

Linux only (``select.epoll``): elsewhere :func:`current_reactor` gives None and each
connection reads in a task of its own. One reactor per ``trio.run``: a system task
started on first use, cancelled with the run.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable

import trio

__all__ = ["Reactor", "current_reactor"]

_REACTOR: trio.lowlevel.RunVar[Reactor | None] = trio.lowlevel.RunVar("trickle_h1_reactor")


class Reactor:
    """File descriptors watched for readability, each with a callback."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, Callable[[], bool]] = {}

    def __len__(self) -> int:
        """Sockets watched now."""
        return len(self._watched)

    def watch(self, fd: int, on_readable: Callable[[], bool]) -> None:  # sync on purpose
        """Call ``on_readable()`` from the reactor's task whenever ``fd`` is readable,
        until it returns False or :meth:`unwatch`.

        ``on_readable`` must read (level-triggered: bytes it leaves are reported again)
        and must not raise. Watching a watched ``fd`` again replaces its callback.
        """
        if fd in self._watched:
            self._watched[fd] = on_readable
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._watched[fd] = on_readable

    def unwatch(self, fd: int) -> None:  # sync on purpose
        """Stop watching ``fd`` (before it is closed: a closed fd leaves epoll silently)."""
        if self._watched.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def watching(self, fd: int) -> bool:
        return fd in self._watched

    async def run(self) -> None:
        """Call the callbacks of ready sockets until cancelled (the end of the run).

        Cancellation: the epoll set is closed; the connections are going away too.
        """
        epoll = self._epoll
        watched = self._watched
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    callback = watched.get(fd)
                    if callback is None:  # pragma: no cover - unwatched in this pass
                        continue
                    if not callback() and watched.get(fd) is callback:
                        self.unwatch(fd)
                # Not kept until the next pass: it may be all that holds a connection.
                callback = None
        finally:
            epoll.close()


def current_reactor() -> Reactor | None:
    """This run's reactor, started on first use; None where there is no epoll."""
    reactor = _REACTOR.get(None)
    if reactor is None and hasattr(select, "epoll"):
        reactor = Reactor()
        trio.lowlevel.spawn_system_task(reactor.run, name="trickle_trio h1 reactor")
        _REACTOR.set(reactor)
    return reactor
