"""Keeping ``trickle-trio cluster``'s backends alive, and saying how the cluster is.

:class:`Supervisor` owns one task per backend (:meth:`Supervisor.watch`): when the
process exits, its shard is marked down at once, and it is started again on the same
address after a delay that doubles with each start that fails (``restart_delay`` up to
``restart_delay_max``) and is back to ``restart_delay`` once a backend has stayed up for
``STABLE_AFTER`` seconds. A start fails when the process exits, or does not answer
``/healthz`` within ``STARTUP_TIMEOUT``, before it serves. Every exit, attempt and return
is logged. The channels a backend held are gone with it (they live in its memory); its
share of channel names answers 503 while it is down, and works again once it is back.

:meth:`Supervisor.serve_readiness` answers the proxy's ``/readyz`` (HAProxy routes that
path here): ``200 ready`` when every shard is up, ``503 degraded: b2 down`` otherwise.
It is a few lines of HTTP/1.1 on h11, one request per connection.

Imports only the stdlib, trio and h11: processes are started and probed by functions
:mod:`.cluster` passes in.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import h11
import trio

logger = logging.getLogger(__name__)

#: How long a (re)started backend may take to answer ``/healthz``.
STARTUP_TIMEOUT = 30.0
#: A backend up this long has recovered: the next restart waits ``restart_delay`` again.
STABLE_AFTER = 60.0
#: How long a readiness probe may take to send its request.
PROBE_TIMEOUT = 5.0


class StartFailed(Exception):
    """A (re)started backend exited before it answered; the message says how."""


class Process(Protocol):
    """What the supervisor needs of a started process (``cluster.Child``)."""

    name: str

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    async def wait(self) -> int:
        """Wait for the exit; its status. Cancellation: only the wait ends."""
        ...

    def send_signal(self, signum: int) -> None: ...

    def log_tail(self, lines: int = 5) -> str: ...


P = TypeVar("P", bound=Process)


@dataclass
class ShardHealth:
    """One backend as the supervisor sees it."""

    name: str
    up: bool = True
    restarts: int = 0
    #: The exit status that took it down last, if it went down.
    last_exit: int | None = None


@dataclass
class Supervisor(Generic[P]):
    """Restarts dead backends and answers readiness (see the module docstring).

    Args:
        processes: the running backends, in shard order; entries are replaced in place
            by their restarts, so whoever stops the cluster stops the current ones.
        start: starts backend ``index`` again and returns its process (sync: it must
            run on trio's thread, see ``cluster._spawn``).
        wait_serving: returns once that process answers ``/healthz``; raises
            :class:`StartFailed` if it exits first.
        restart: False: a backend that exits is reported, marked down and left so.
        on_change: called after a shard went down, failed a start or came back (e.g.
            to rewrite ``cluster.json``).
    """

    processes: list[P]
    start: Callable[[int], P]
    wait_serving: Callable[[int, P], Awaitable[None]]
    restart: bool = True
    restart_delay: float = 0.5
    restart_delay_max: float = 30.0
    on_change: Callable[[], None] = lambda: None
    health: list[ShardHealth] = field(init=False)

    def __post_init__(self) -> None:
        self.health = [ShardHealth(process.name) for process in self.processes]

    def readiness(self) -> tuple[int, str]:
        """``(200, "ready\\n")``, or 503 and the shards that are down."""
        down = [shard.name for shard in self.health if not shard.up]
        if not down:
            return 200, "ready\n"
        return 503, f"degraded: {' '.join(down)} down\n"

    async def watch(self, index: int) -> None:
        """Supervise backend ``index`` for ever: wait for its exit, restart it, repeat.

        Cancellation: returns at once; a backend being started stays in ``processes``
        (the caller stops it with the others).
        """
        shard = self.health[index]
        delay = self.restart_delay
        while True:
            process = self.processes[index]
            started = trio.current_time()
            status = await process.wait()
            if trio.current_time() - started >= STABLE_AFTER:
                delay = self.restart_delay
            shard.up, shard.last_exit = False, status
            self.on_change()
            if not self.restart:
                logger.warning(
                    "shard %s exited status=%s: its channels answer 503 (not restarted: "
                    "restart off; log: %s)",
                    shard.name,
                    status,
                    process.log_tail(3) or "-",
                )
                return
            logger.warning(
                "shard %s exited status=%s: its channels answer 503 until it is back; "
                "restarting in %gs (log: %s)",
                shard.name,
                status,
                delay,
                process.log_tail(3) or "-",
            )
            while not await self._restart(index, delay):
                delay = min(delay * 2, self.restart_delay_max)
            delay = min(delay * 2, self.restart_delay_max)

    async def _restart(self, index: int, delay: float) -> bool:
        """Wait ``delay``, start backend ``index``; True once it serves."""
        await trio.sleep(delay)
        shard = self.health[index]
        shard.restarts += 1
        process = self.start(index)
        self.processes[index] = process
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                await self.wait_serving(index, process)
        except (StartFailed, trio.TooSlowError) as exc:
            if process.running:
                process.send_signal(signal.SIGKILL)  # it had its chance
            with trio.CancelScope(shield=True):
                status = await process.wait()
            reason = "no answer" if isinstance(exc, trio.TooSlowError) else f"status={status}"
            logger.warning(
                "shard %s restart %d failed %s: %s; next attempt in %gs",
                shard.name,
                shard.restarts,
                reason,
                process.log_tail(1) or "-",
                min(delay * 2, self.restart_delay_max),
            )
            self.on_change()
            return False
        shard.up = True
        self.on_change()
        logger.info("shard %s back pid=%d restarts=%d", shard.name, process.pid, shard.restarts)
        return True

    async def serve_readiness(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer every request on ``listeners`` with :meth:`readiness`; runs until cancelled."""
        await trio.serve_listeners(self._answer, list(listeners), task_status=task_status)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            connection = h11.Connection(h11.SERVER)
            with (
                trio.move_on_after(PROBE_TIMEOUT),
                contextlib.suppress(h11.RemoteProtocolError, trio.BrokenResourceError),
            ):
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(4096))
                        continue
                    if not isinstance(event, h11.Request):
                        return
                    status, body = self.readiness()
                    data = body.encode()
                    headers = [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(data))),
                        ("Connection", "close"),
                    ]
                    out = connection.send(h11.Response(status_code=status, headers=headers))
                    out = (out or b"") + (connection.send(h11.Data(data=data)) or b"")
                    out += connection.send(h11.EndOfMessage()) or b""
                    await stream.send_all(out)
                    return
