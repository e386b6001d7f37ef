"""Running measurements: targets x configurations x repetitions, alternating targets.

For every measurement: start (or look up) the target, create the channels, hand the
workers their jobs, sample CPU and memory while they run, collect and summarise, delete
the channels, stop the target. Order: ``for rep: for config: for target`` so that
servers under comparison take turns under the same load, and slow drift of the machine
(other jobs, thermal) spreads over all of them.

``find_max`` drives the live scenario's search for the largest channel count in
lockstep over the targets.

Imports: stdlib, trio and the bench's modules.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from .client import HttpError
from .procstat import ProcSampler, Usage, cpu_count, machine_cpu
from .scenarios import join, live, stream
from .scenarios.common import Outcome, create_channels, delete_channels, describe
from .servers import Endpoint, Target, open_target
from .workers import JobSpec, SharedCounters, WorkerPool

#: scenario name -> (module, metric columns: (key, header, format)).
SCENARIOS: dict[str, tuple[ModuleType, list[tuple[str, str, str]]]] = {
    "fanout": (stream, stream.METRICS["fanout"]),
    "small": (stream, stream.METRICS["small"]),
    "live": (live, live.METRICS),
    "join": (join, join.METRICS),
}


@dataclass
class RunRecord:
    """One measurement of one configuration against one target."""

    scenario: str
    config: str
    target: str
    rep: int
    params: dict[str, Any]
    outcome: Outcome | None
    usage: Usage | None
    warning: str | None = None
    error: str | None = None
    error_detail: str | None = None
    #: Other processes (or the hypervisor's steal) used more than the noise threshold.
    noisy: bool = False
    #: False for a noisy run that was repeated: kept in the JSON, left out of the figures.
    counted: bool = True

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "scenario": self.scenario,
            "config": self.config,
            "target": self.target,
            "rep": self.rep,
            "params": self.params,
            "error": self.error,
            "error_detail": self.error_detail,
            "generator_bottleneck": self.warning,
            "noisy": self.noisy,
            "counted": self.counted,
        }
        if self.outcome is not None:
            data["metrics"] = self.outcome.metrics
            data["checks"] = self.outcome.checks
            data["clean"] = self.outcome.clean
            data["notes"] = self.outcome.notes
        if self.usage is not None:
            data["usage"] = asdict(self.usage) | {
                "generator_busy": self.usage.generator_busy,
                "other_busy": self.usage.other_busy,
            }
        return data


class Progress:
    """One status line on stderr: redrawn in place on a terminal, every 10 s otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text[:200])
            self._shown = True
        elif now - self._last >= 10:
            sys.stderr.write(text + "\n")
            self._last = now
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty and self._shown:
            sys.stderr.write("\r\x1b[K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self._shown = False
        self._last = 0.0


@dataclass
class Runner:
    """Owns the worker pool and runs measurements."""

    targets: list[Target]
    workers: int = 2
    progress: Progress = field(default_factory=lambda: Progress(True))
    server_logs: Path | None = None
    #: Before each run, wait up to this many seconds for the machine to go idle.
    wait_idle: float = 0.0
    #: Niceness for started servers and the load generator (negative = favoured).
    priority: int = 0
    #: The reference server's binary, for a ``reference`` target.
    reference: Path | None = None
    #: A run is noisy when other load (steal included) passed this many cores.
    noisy_cores: float = 0.25
    records: list[RunRecord] = field(default_factory=list)
    _pool: WorkerPool | None = None
    _autogroup: int | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __enter__(self) -> Runner:
        # One process more than --workers: fanout/small give the publisher its own.
        self._pool = WorkerPool(self.workers + 1)
        self._pool.start()
        if self.priority:
            for pid in [os.getpid(), *self._pool.pids().values()]:
                renice(pid, self.priority)
            # With autogroup scheduling (Linux default), niceness only ranks processes
            # within a session; the session's group competes with the others by its own
            # nice. The servers and workers share the coordinator's session.
            self._autogroup = set_autogroup_nice(self.priority)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._autogroup is not None:
            set_autogroup_nice(self._autogroup)
            self._autogroup = None

    @property
    def pool(self) -> WorkerPool:
        assert self._pool is not None, "use the Runner as a context manager"
        return self._pool

    async def run_all(self, scenario: str, configs: list[Any], reps: int) -> list[RunRecord]:
        """Every config against every target, ``reps`` times, targets alternating."""
        out = []
        for rep, config, target in itertools.product(range(reps), configs, self.targets):
            out.append(await self.measure(scenario, config, target, rep, reps))
        return out

    async def measure(
        self, scenario: str, config: Any, target: Target, rep: int, reps: int
    ) -> RunRecord:
        module, _ = SCENARIOS[scenario]
        tag = f"[{scenario} {config.label} | {target.label} | rep {rep + 1}/{reps}]"
        record = RunRecord(scenario, config.label, target.label, rep, asdict(config), None, None)
        if self.wait_idle > 0:
            await self._wait_idle(tag)
        try:
            async with open_target(target, self.server_logs, self.reference) as endpoint:
                if self.priority and target.managed and endpoint.pid:
                    renice(endpoint.pid, self.priority)
                outcome, usage = await self._measure(module, config, endpoint, tag)
            record.outcome, record.usage = outcome, usage
            record.warning = usage.bottleneck_warning()
            # Below half a second, /proc/stat's 10 ms ticks make the figure meaningless.
            record.noisy = usage.other_busy > self.noisy_cores and usage.wall_s >= 0.5
            lag = outcome.metrics.get("lag_p99_ms", 0.0)
            stalled = outcome.metrics.get("publisher_stalls", 0) / 1000  # ~1 ms each
            if lag > 10 and stalled < 1:
                lagging = f"publishers {lag:.0f} ms (p99) behind their schedule"
                record.warning = f"{record.warning}; {lagging}" if record.warning else lagging
            elif lag > 10:
                # Not the generator: the server answered POSTs or accepted connections
                # too slowly for the next preconnect; the offered load fell short.
                outcome.notes.append(
                    f"publishers fell {lag:.0f} ms (p99) behind, waiting {stalled:.0f} s in "
                    "all for connections to the server: it is past its capacity"
                )
            channels = getattr(config, "channels", None)
            server = usage.server
            if channels and server and server.peak_rss and server.rss_before:
                # Fresh server per run: what the load added, per channel.
                outcome.metrics["rss_per_channel_kib"] = (
                    (server.peak_rss - server.rss_before) / channels / 1024
                )
        except Exception as exc:
            # One failed measurement must not end the session: record it and go on.
            record.error = describe(exc)
            record.error_detail = "".join(
                getattr(e, "details", "") for e in _leaves(exc)
            ) or "".join(traceback.format_exception(exc))
        self.records.append(record)
        self.progress.done(f"{tag} {summary_line(record)}")
        return record

    async def _wait_idle(self, tag: str, threshold: float = 0.25) -> None:
        """Wait (at most ``wait_idle`` s) until other processes use < ``threshold`` cores."""
        deadline = time.monotonic() + self.wait_idle
        while True:
            busy0, total0 = machine_cpu()
            await trio.sleep(1.0)
            busy1, total1 = machine_cpu()
            busy = (busy1 - busy0) / max(total1 - total0, 1e-9) * cpu_count()
            if busy < threshold or time.monotonic() >= deadline:
                return
            self.progress.show(f"{tag} waiting for an idle machine ({busy:.2f} cores busy)")

    async def _measure(
        self, module: ModuleType, config: Any, endpoint: Endpoint, tag: str
    ) -> tuple[Outcome, Usage]:
        run_id = f"bench{os.getpid()}x{next(self._ids)}"
        plan = module.plan(config, endpoint, self.pool.size, run_id)
        shared = SharedCounters.create(self.pool.size, plan.progress_slots)
        await create_channels(endpoint, plan.channels)
        try:
            jobs = [
                JobSpec(
                    scenario=module.__name__.rsplit(".", 1)[1],
                    role=role,
                    config=config,
                    endpoint=endpoint,
                    share=share,
                    worker=worker,
                    counters_path=shared.path,
                    workers=self.pool.size,
                    progress_slots=plan.progress_slots,
                    run_id=run_id,
                )
                for worker, role, share in plan.jobs
            ]
            generator = {"coordinator": os.getpid()} | {
                label: pid
                for label, pid in self.pool.pids().items()
                if int(label.removeprefix("worker")) in {j.worker for j in jobs}
            }
            sampler = ProcSampler(endpoint.pid, generator)
            started = 0.0

            def on_go() -> None:
                nonlocal started
                started = time.monotonic()
                sampler.start()

            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while True:
                        await trio.sleep(0.25)
                        sampler.sample()
                        if started:
                            elapsed = time.monotonic() - started
                            line = module.progress_line(config, shared.totals(), elapsed)
                            self.progress.show(f"{tag} {elapsed:.0f}s {line}")
                        else:
                            self.progress.show(f"{tag} setting up")

                nursery.start_soon(watch)
                results = await self.pool.run(
                    jobs,
                    setup_timeout=plan.setup_timeout,
                    run_timeout=plan.run_timeout,
                    on_go=on_go,
                )
                usage = sampler.stop()
                nursery.cancel_scope.cancel()
            outcome: Outcome = module.summarize(config, results)
        finally:
            shared.close(unlink=True)
            with trio.move_on_after(30, shield=True):
                with contextlib.suppress(HttpError, OSError, trio.TooSlowError):
                    await delete_channels(endpoint, plan.channels)
        return outcome, usage

    async def find_max(
        self,
        make_config: Callable[[int], Any],
        *,
        start: int,
        limit: int,
        bound_ms: float,
        reps: int,
        noisy_retries: int = 2,
    ) -> list[dict[str, Any]]:
        """Per target, the largest channel count whose live p99 < ``bound_ms``, nothing lost.

        Doubles from ``start`` until a probe fails (or ``limit``), then bisects to a
        resolution of 10% (at least 5 channels). A probe is ``reps`` runs; it passes
        when the median p99 is under the bound and no run lost or corrupted anything.
        A noisy run (other load over the threshold while it ran) is run again, up to
        ``noisy_retries`` times; the repeated one stays in the JSON, uncounted. Targets
        take turns probe by probe.
        """
        searches = {t.label: _Search(start, limit) for t in self.targets}
        while True:
            active = [t for t in self.targets if searches[t.label].next() is not None]
            if not active:
                break
            for target in active:
                search = searches[target.label]
                channels = search.next()
                assert channels is not None
                config = make_config(channels)
                runs = []
                for r in range(reps):
                    run = await self.measure("live", config, target, r, reps)
                    for _ in range(noisy_retries):
                        if not run.noisy:
                            break
                        run.counted = False
                        self.progress.done(
                            f"[live {config.label} | {target.label}] noisy "
                            f"(other CPU {run.usage.other_busy if run.usage else 0:.2f} "
                            "cores): again"
                        )
                        run = await self.measure("live", config, target, r, reps)
                    runs.append(run)
                ok_runs = [r for r in runs if r.outcome is not None]
                passed = (
                    len(ok_runs) == len(runs)
                    and all(r.outcome is not None and r.outcome.clean for r in ok_runs)
                    and statistics.median(
                        r.outcome.metrics["p99_ms"] for r in ok_runs if r.outcome is not None
                    )
                    < bound_ms
                )
                search.record(channels, passed, runs)
        return [searches[t.label].result(t.label, bound_ms) for t in self.targets]


class _Search:
    """Doubling, then bisection, over channel counts."""

    def __init__(self, start: int, limit: int) -> None:
        self.lo = 0  # largest count known to pass
        self.hi: int | None = None  # smallest count known to fail
        self.start = start
        self.limit = limit
        self.probes: list[tuple[int, bool, list[RunRecord]]] = []

    def next(self) -> int | None:
        if not self.probes:
            return self.start
        if self.hi is None:
            if self.lo >= self.limit:
                return None
            return min(self.lo * 2, self.limit)
        resolution = max(5, self.lo // 10)
        if self.hi - self.lo <= resolution:
            return None
        mid = (self.lo + self.hi) // 2
        return mid

    def record(self, channels: int, passed: bool, runs: list[RunRecord]) -> None:
        self.probes.append((channels, passed, runs))
        if passed:
            self.lo = max(self.lo, channels)
        else:
            self.hi = channels if self.hi is None else min(self.hi, channels)

    def result(self, label: str, bound_ms: float) -> dict[str, Any]:
        best = [runs for channels, ok, runs in self.probes if ok and channels == self.lo]
        warnings = [r.warning for runs in best for r in runs if r.warning]
        failing = [runs for channels, ok, runs in self.probes if not ok and channels == self.hi]
        failing_warnings = [r.warning for runs in failing for r in runs if r.warning]
        return {
            "target": label,
            "max_channels": self.lo,
            "first_failing": self.hi,
            "bound_ms": bound_ms,
            "limited_by_generator": bool(warnings),
            # The first failing probe was generator-bound: the server may carry more.
            "failure_generator_bound": bool(failing_warnings),
            "p99_ms_at_max": (
                statistics.median(
                    r.outcome.metrics["p99_ms"] for r in best[0] if r.outcome is not None
                )
                if best
                else None
            ),
            "probes": [
                {
                    "channels": channels,
                    "passed": ok,
                    "noisy": any(r.noisy for r in runs),
                    "other_cpu": [r.usage.other_busy if r.usage else None for r in runs],
                    "p99_ms": [r.outcome.metrics["p99_ms"] if r.outcome else None for r in runs],
                    "lost": [r.outcome.checks.get("lost") if r.outcome else None for r in runs],
                }
                for channels, ok, runs in self.probes
            ],
            "noisy_probes": sum(1 for _, _, runs in self.probes if any(r.noisy for r in runs)),
        }


def renice(pid: int, niceness: int) -> None:
    """Set ``pid``'s niceness (negative needs root); a warning if not allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError as exc:
        print(f"bench: cannot renice {pid} to {niceness}: {exc}", file=sys.stderr)


def set_autogroup_nice(niceness: int) -> int | None:
    """Set this session's autogroup niceness; the previous one, None if unsupported."""
    path = Path(f"/proc/{os.getpid()}/autogroup")
    try:
        previous = int(path.read_text().split("nice")[1])
        path.write_text(f"{niceness}\n")
    except (OSError, IndexError, ValueError):
        return None
    return previous


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def summary_line(record: RunRecord) -> str:
    """A one-line account of a run, for the progress log."""
    if record.error:
        return f"FAILED: {record.error.splitlines()[0][:300]}"
    assert record.outcome is not None
    assert record.usage is not None
    _, columns = SCENARIOS[record.scenario]
    metrics = record.outcome.metrics
    parts = [
        f"{header} {fmt.format(metrics[key])}" for key, header, fmt in columns if key in metrics
    ]
    usage = record.usage
    if usage.server is not None:
        parts.append(f"server {usage.server.busy:.0%} CPU")
    parts.append(f"gen {usage.generator_busy:.0%} CPU")
    bad = {k: v for k, v in record.outcome.checks.items() if v}
    if bad:
        parts.append("CHECKS FAILED " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    if record.warning:
        parts.append("(generator-bound: " + record.warning + ")")
    if record.noisy:
        steal = f", {usage.steal_busy:.2f} of it steal" if usage.steal_busy >= 0.01 else ""
        parts.append(f"(NOISY: other processes used {usage.other_busy:.2f} cores{steal})")
    return ", ".join(parts)
