"""Reactor: one task that reads many mostly idle sockets, for the fast path's publishers.

A live publisher sends a small chunk every few milliseconds. Waiting for each one in the
connection's own task costs trio an epoll re-arm (trio registers a socket one-shot), a
scheduler pass and the resumption of the connection's stack of coroutines, per chunk:
at a few hundred live channels that is a tenth of a core. Here such sockets stay
registered (level-triggered) in one epoll set of this module's own; one task waits for
that set and, in one scheduler pass, calls each ready socket's callback, which reads
and decodes the chunk right there (``FastTCPServer._read_ready``). The connection's
task sleeps until its callback says otherwise (the body ended, a burst, a fault).

Linux only (``select.epoll``); elsewhere :func:`current_reactor` gives None and every
connection waits in its own task. One reactor per ``trio.run``, a system task started
on first use and cancelled with the run.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable

import outcome
import trio

__all__ = ["Reactor", "current_reactor"]

_REACTOR: trio.lowlevel.RunVar[Reactor | None] = trio.lowlevel.RunVar("trickle_reactor")


class Reactor:
    """Sockets registered by the tasks parked in :meth:`wait`, read by one task."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (callback, parked task)
        self._parked: dict[int, tuple[Callable[[], bool], trio.lowlevel.Task]] = {}

    def __len__(self) -> int:
        """Sockets parked here now."""
        return len(self._parked)

    async def wait(self, fd: int, on_readable: Callable[[], bool]) -> None:
        """Park until ``on_readable()``, called from the reactor's task each time ``fd``
        is readable, returns False (or :meth:`release`); then return.

        ``on_readable`` must do its own reading (``fd`` stays registered while it
        returns True; level-triggered, so bytes it leaves are reported again). An
        exception from it is raised here.

        Cancellation: ``fd`` is unregistered and ``on_readable`` not called again.
        """
        if fd in self._parked:
            raise trio.BusyResourceError("another task waits for this fd in the reactor")
        self._epoll.register(fd, select.EPOLLIN)
        self._parked[fd] = (on_readable, trio.lowlevel.current_task())

        def abort(_: object) -> trio.lowlevel.Abort:
            self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def release(self, fd: int) -> None:
        """Wake the task parked on ``fd``, if any (before ``fd`` is closed)."""
        entry = self._forget(fd)
        if entry is not None:
            trio.lowlevel.reschedule(entry[1])

    def _forget(self, fd: int) -> tuple[Callable[[], bool], trio.lowlevel.Task] | None:
        entry = self._parked.pop(fd, None)
        if entry is not None:
            with contextlib.suppress(OSError):  # closed behind our back
                self._epoll.unregister(fd)
        return entry

    async def run(self) -> None:
        """Read ready sockets until cancelled (the end of the run).

        Cancellation: the epoll set is closed; parked tasks are being cancelled too.
        """
        epoll = self._epoll
        parked = self._parked
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    entry = parked.get(fd)
                    if entry is None:  # pragma: no cover - released in this same pass
                        continue
                    try:
                        keep = entry[0]()
                    except Exception as exc:  # handed to the parked task, not ours
                        self._forget(fd)
                        trio.lowlevel.reschedule(entry[1], outcome.Error(exc))
                        continue
                    if not keep:
                        self._forget(fd)
                        trio.lowlevel.reschedule(entry[1])
        finally:
            epoll.close()


def current_reactor() -> Reactor | None:
    """This run's reactor, started on first use; None where there is no epoll."""
    reactor = _REACTOR.get(None)
    if reactor is None and hasattr(select, "epoll"):
        reactor = Reactor()
        trio.lowlevel.spawn_system_task(reactor.run, name="trickle_trio reactor")
        _REACTOR.set(reactor)
    return reactor
