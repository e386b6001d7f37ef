"""The load generator's processes: a pool of spawned workers, each running trio.

One measurement ("job") goes like this, for every worker that takes part:

1. the coordinator sends ``("job", JobSpec)``;
2. the worker sets up (connects, sends its preconnects) and answers ``("ready", None)``;
3. once every worker is ready the coordinator sends ``("go", t0)``, ``t0`` being
   ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux, so timestamps taken in
   different processes compare directly);
4. the worker runs its part and answers ``("result", dict)`` or ``("error", text)``;
5. ``("stop", None)`` at any time asks it to wrap up early (its result is still sent).

Workers share a small memory-mapped file of 64-bit counters with the coordinator: a
row per worker for the progress display, plus ``progress`` slots that scenarios use
for flow control across processes (e.g. how many segments each fan-out subscriber has
finished). Single writer per slot, aligned 8-byte stores: no locks needed.

Imports: stdlib and trio; scenario modules are imported by name inside the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import mmap
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .procstat import die_with_parent
from .servers import Endpoint

#: Counter slots per worker row (meaning is up to the scenario; see its ``progress``).
ROW = 8


@dataclass(frozen=True)
class JobSpec:
    """One worker's share of a measurement."""

    #: Module under ``bench.scenarios`` whose ``run_worker(ctl)`` runs the job.
    scenario: str
    #: The role within the scenario, e.g. "publisher" or "subscribers".
    role: str
    config: Any
    endpoint: Endpoint
    #: Which channels / subscribers are this worker's (scenario-defined).
    share: Any
    worker: int
    counters_path: str
    workers: int
    progress_slots: int
    run_id: str


class SharedCounters:
    """A file-backed array of int64: ``workers`` rows of ``ROW`` counters, then slots."""

    def __init__(self, path: str, workers: int, slots: int, *, create: bool = False) -> None:
        self.path = path
        size = max(8 * (workers * ROW + slots), 8)
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.view = memoryview(self._map).cast("q")
        self.workers = workers
        self.slots = slots

    @classmethod
    def create(cls, workers: int, slots: int) -> SharedCounters:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="trickle-bench-", dir=directory)
        os.close(fd)
        return cls(path, workers, slots, create=True)

    def row(self, worker: int) -> memoryview:
        return self.view[worker * ROW : (worker + 1) * ROW]

    def progress(self) -> memoryview:
        start = self.workers * ROW
        return self.view[start : start + self.slots]

    def totals(self) -> list[int]:
        """Each counter summed over the worker rows."""
        sums = [0] * ROW
        for w in range(self.workers):
            for i, value in enumerate(self.row(w)):
                sums[i] += value
        return sums

    def close(self, *, unlink: bool = False) -> None:
        self.view.release()
        self._map.close()
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class StopRequested(Exception):
    """The coordinator said "stop" before "go"."""


class Control:
    """A worker's side of the coordinator protocol, inside its ``trio.run``."""

    def __init__(self, conn: multiprocessing.connection.Connection, job: JobSpec) -> None:
        self.job = job
        self._conn = conn
        self._go = trio.Event()
        self.t0 = 0.0
        self.stop_requested = trio.Event()
        self.shared = SharedCounters(job.counters_path, job.workers, job.progress_slots)
        #: This worker's row of counters (for the progress display).
        self.counters = self.shared.row(job.worker)
        #: The cross-process slots (flow control).
        self.progress = self.shared.progress()
        for i in range(ROW):
            self.counters[i] = 0

    async def listen(self) -> None:
        """Receive "go" and "stop" until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self._conn.fileno())
            kind, value = self._conn.recv()
            if kind == "go":
                self.t0 = value
                self._go.set()
            elif kind == "stop":
                self.stop_requested.set()

    async def ready(self) -> float:
        """Say "ready" and wait for "go"; returns the start time (``time.monotonic``).

        Raises:
            StopRequested: the coordinator gave up on this measurement before "go".
        """
        self._conn.send(("ready", None))
        async with trio.open_nursery() as nursery:

            async def stop_first() -> None:
                await self.stop_requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_first)
            await self._go.wait()
            nursery.cancel_scope.cancel()
        if not self._go.is_set():
            raise StopRequested
        return self.t0

    async def run_until_stopped(self, fn: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``fn()``; cancel it if "stop" arrives. True if it ran to completion."""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await self.stop_requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await fn()
            nursery.cancel_scope.cancel()
        return not self.stop_requested.is_set()

    def release(self) -> None:
        self.counters.release()
        self.progress.release()
        self.shared.close()


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: run jobs until told to exit (None) or the pipe closes."""
    die_with_parent()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        _kind, job = message
        try:
            result = trio.run(_run_job, conn, job)
        except BaseException as exc:
            conn.send(("error", (_describe(exc), traceback.format_exc())))
        else:
            conn.send(("result", result))


async def _run_job(conn: multiprocessing.connection.Connection, job: JobSpec) -> Any:
    module = importlib.import_module(f"bench.scenarios.{job.scenario}")
    run: Callable[[Control], Awaitable[Any]] = module.run_worker
    ctl = Control(conn, job)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctl.listen)
            result = await run(ctl)
            nursery.cancel_scope.cancel()
        return result
    finally:
        ctl.release()


class WorkerError(RuntimeError):
    """A worker failed: the message says how, ``details`` holds the tracebacks."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def _describe(exc: BaseException) -> str:
    """A one-line account of ``exc``, with the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions[:3])
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


class WorkerPool:
    """``size`` spawned worker processes, reused across measurements."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def start(self) -> None:
        for i in range(self.size):
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=_worker_main, args=(child,), name=f"bench-worker-{i}", daemon=True
            )
            process.start()
            child.close()
            self._workers.append(_Worker(process, parent))

    def pids(self) -> dict[str, int]:
        return {f"worker{i}": w.process.pid or 0 for i, w in enumerate(self._workers)}

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        deadline = time.monotonic() + 5
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2)
            w.conn.close()
        self._workers.clear()

    def restart(self) -> None:
        """Kill every worker and spawn fresh ones (after a job that would not stop)."""
        for w in self._workers:
            if w.process.is_alive():
                w.process.kill()
            w.process.join(2)
            w.conn.close()
        self._workers.clear()
        self.start()

    async def _recv(self, worker: int) -> tuple[str, Any]:
        conn = self._workers[worker].conn
        while not conn.poll():
            if not self._workers[worker].process.is_alive() and not conn.poll():
                raise WorkerError(f"worker {worker} died")
            with trio.move_on_after(0.5):
                await trio.lowlevel.wait_readable(conn.fileno())
        message: tuple[str, Any] = conn.recv()
        return message

    async def run(
        self,
        jobs: list[JobSpec],
        *,
        setup_timeout: float,
        run_timeout: float,
        on_go: Callable[[], None] = lambda: None,
    ) -> list[Any]:
        """Run one measurement: ``jobs[i]`` on worker ``jobs[i].worker``; their results.

        Raises:
            WorkerError: a worker failed (the pool is restarted if one would not stop).
            trio.TooSlowError: set-up took longer than ``setup_timeout``.
        """
        for job in jobs:
            self._workers[job.worker].conn.send(("job", job))
        results: dict[int, Any] = {}
        errors: list[str] = []
        details: list[str] = []

        ready: set[int] = set()
        all_ready = trio.Event()
        failed = trio.Event()
        finished = trio.Event()

        async def collect(job: JobSpec) -> None:
            try:
                kind, value = await self._recv(job.worker)
                if kind == "ready":
                    ready.add(job.worker)
                    if len(ready) == len(jobs):
                        all_ready.set()
                    kind, value = await self._recv(job.worker)
            except WorkerError as exc:
                kind, value = "error", (str(exc), "")
            if kind == "result":
                results[job.worker] = value
            else:
                summary, detail = value
                errors.append(f"worker {job.worker} ({job.role}): {summary}")
                details.append(detail)
                all_ready.set()
                failed.set()
            if len(results) + len(errors) == len(jobs):
                finished.set()

        async def wait_done_or_failed() -> None:
            async with trio.open_nursery() as waiters:

                async def first(event: trio.Event) -> None:
                    await event.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(first, finished)
                waiters.start_soon(first, failed)

        stuck = False
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(collect, job)
            with trio.move_on_after(setup_timeout) as setup_scope:
                await all_ready.wait()
            if setup_scope.cancelled_caught:
                errors.append(f"set-up took longer than {setup_timeout:.0f} s")
                failed.set()
            if not failed.is_set():
                on_go()
                t0 = time.monotonic()
                for job in jobs:
                    self._workers[job.worker].conn.send(("go", t0))
                with trio.move_on_after(run_timeout):
                    await wait_done_or_failed()
            if not finished.is_set():
                for job in jobs:
                    if job.worker not in results:
                        self._workers[job.worker].conn.send(("stop", None))
                with trio.move_on_after(10):
                    await finished.wait()
                if not finished.is_set():
                    stuck = True
                    errors.append("a worker did not stop; the pool was restarted")
            nursery.cancel_scope.cancel()
        if stuck:
            self.restart()
        if errors:
            raise WorkerError("; ".join(errors), "\n".join(details))
        return [results[job.worker] for job in jobs]
