"""The cluster's supervisor on its own: restarts, backoff, readiness (level 2, MockClock).

Processes are fakes that exit when the test says; a start fails or succeeds as scripted.
The real thing (``trickle-trio cluster``, HAProxy, a backend killed with SIGKILL) is in
``tests/test_cluster.py``.
"""

from __future__ import annotations

import itertools
import signal

import pytest
import trio
import trio.testing

from trickle_trio.ops.supervisor import STABLE_AFTER, StartFailed, Supervisor

_pids = itertools.count(100)


class FakeProcess:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = next(_pids)
        self.status: int | None = None
        self._exited = trio.Event()

    @property
    def running(self) -> bool:
        return self.status is None

    def exit(self, status: int) -> None:
        self.status = status
        self._exited.set()

    def send_signal(self, signum: int) -> None:
        self.exit(-signum)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.status is not None
        return self.status

    def log_tail(self, lines: int = 5) -> str:
        return "trickle-trio: bad settings"


class Script:
    """Starts fake backends; the first ``failures`` starts exit with status 2."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.started: list[tuple[float, FakeProcess]] = []

    def start(self, index: int) -> FakeProcess:
        process = FakeProcess(f"b{index + 1}")
        self.started.append((trio.current_time(), process))
        return process

    async def wait_serving(self, index: int, process: FakeProcess) -> None:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            process.exit(2)
            raise StartFailed("exited with status 2 while starting")

    def times(self) -> list[float]:
        return [when for when, _ in self.started]


class Changes:
    """The supervisor's ``on_change`` as something to wait for."""

    def __init__(self, watched: Supervisor[FakeProcess]) -> None:
        self.watched = watched
        self.seen: list[tuple[int, str]] = []
        self._event = trio.Event()
        watched.on_change = self._changed

    def _changed(self) -> None:
        self.seen.append(self.watched.readiness())
        self._event.set()
        self._event = trio.Event()

    async def until_up(self, index: int) -> None:
        while not self.watched.health[index].up:
            await self._event.wait()

    async def until_down(self, index: int) -> None:
        while self.watched.health[index].up:
            await self._event.wait()


def supervisor(script: Script, count: int = 2, **options: float | bool) -> Supervisor[FakeProcess]:
    processes = [FakeProcess(f"b{i + 1}") for i in range(count)]
    return Supervisor(processes, script.start, script.wait_serving, **options)  # type: ignore[arg-type]


async def test_a_dead_backend_is_restarted_with_a_doubling_capped_delay(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    script = Script(failures=4)
    watched = supervisor(script, restart_delay=1.0, restart_delay_max=4.0)
    changes = Changes(watched)
    nursery.start_soon(watched.watch, 1)
    assert watched.readiness() == (200, "ready\n")
    killed = watched.processes[1]
    killed.exit(-signal.SIGKILL)
    await trio.testing.wait_all_tasks_blocked()
    assert watched.readiness() == (503, "degraded: b2 down\n")
    assert watched.health[1].last_exit == -signal.SIGKILL
    await changes.until_up(1)
    # Four failed starts, then one that serves: 1 s, then 2, 4, 4, 4 (capped) between.
    assert script.times() == [1.0, 3.0, 7.0, 11.0, 15.0]
    assert watched.processes[1] is script.started[-1][1]  # the list is kept current
    assert watched.health[1].restarts == 5
    assert watched.readiness() == (200, "ready\n")
    assert changes.seen[0] == (503, "degraded: b2 down\n")
    assert changes.seen[-1] == (200, "ready\n")
    assert watched.processes[0].running  # the other shard was never touched


async def test_the_delay_starts_over_once_a_backend_stayed_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    script = Script()
    watched = supervisor(script, restart_delay=1.0, restart_delay_max=30.0)
    changes = Changes(watched)
    nursery.start_soon(watched.watch, 0)

    async def kill_after(seconds: float) -> float:
        await trio.sleep(seconds)
        died = trio.current_time()
        watched.processes[0].exit(-signal.SIGKILL)
        await changes.until_down(0)
        await changes.until_up(0)
        return script.started[-1][0] - died

    assert await kill_after(0) == pytest.approx(1.0)
    assert await kill_after(5) == pytest.approx(2.0)  # died again soon: the delay doubled
    # Up for a minute: recovered, the delay starts over.
    assert await kill_after(STABLE_AFTER) == pytest.approx(1.0)


async def test_with_restart_off_a_dead_backend_stays_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script()
    watched = supervisor(script, restart=False)
    watched.processes[0].exit(1)
    with trio.fail_after(1):
        await watched.watch(0)  # returns: nothing more to do for that shard
    assert script.started == []
    assert watched.readiness() == (503, "degraded: b1 down\n")
    watched.processes[1].exit(1)
    await watched.watch(1)
    assert watched.readiness() == (503, "degraded: b1 b2 down\n")


async def test_a_start_that_never_answers_is_killed_and_retried(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    script = Script()

    async def wait_serving(index: int, process: FakeProcess) -> None:
        if len(script.started) == 1:  # the first start hangs
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()

    processes = [FakeProcess("b1")]
    watched = Supervisor(processes, script.start, wait_serving, restart_delay=1.0)
    changes = Changes(watched)
    nursery.start_soon(watched.watch, 0)
    processes[0].exit(-signal.SIGKILL)
    await changes.until_down(0)
    await changes.until_up(0)
    first, second = (process for _, process in script.started)
    assert first.status == -signal.SIGKILL  # killed after STARTUP_TIMEOUT
    assert second.running
    assert watched.health[0].restarts == 2
