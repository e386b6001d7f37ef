"""CPU and memory of processes, through psutil (figures where psutil supports the OS).

``ProcSampler`` takes a snapshot of a set of PIDs before and after a measurement and
samples resident memory in between, so a run reports, per process, CPU seconds used,
the busiest share of one core, and peak RSS; for the server also its unique memory
(USS), open file descriptors and threads at the end of the run. The machine's total CPU
use is sampled too, so that load from unrelated processes (other test runs on the box)
shows up as "other" instead of silently slowing everything down.

psutil has no peak RSS: that one figure (``VmHWM``, and resetting it through
``clear_refs``) is read from ``/proc`` directly, Linux only (elsewhere: the sampled peak).

Imports: stdlib and psutil.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field

import psutil

_GONE = (psutil.Error, OSError)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except _GONE:
        return None


def peak_rss_bytes(pid: int) -> int | None:
    """``VmHWM``: the peak RSS of ``pid`` since start (or since :func:`reset_peak_rss`)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores.

    Busy includes steal: time the hypervisor gave this VM's CPUs to others.
    """
    busy, total, _ = machine_cpu_steal()
    return busy, total


def machine_cpu_steal() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds of the whole machine since boot."""
    times = psutil.cpu_times()
    # Guest time is already counted in user time (and guest_nice in nice).
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return (total - idle, total, getattr(times, "steal", 0.0))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans left behind
    when the coordinator is killed); a no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cpu_count() -> int:
    """The cores this process may run on."""
    with contextlib.suppress(AttributeError, psutil.Error):
        affinity = psutil.Process().cpu_affinity()
        if affinity:
            return len(affinity)
    return psutil.cpu_count() or 1


def find_listener_pid(port: int) -> int | None:
    """The PID of the process listening on TCP ``port`` on this machine, if visible.

    Best effort: None when not found or not permitted (another user's server).
    """
    try:
        connections = psutil.net_connections(kind="tcp")
    except _GONE:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


@dataclass
class ProcUsage:
    """What one process used during a measurement."""

    cpu_s: float = 0.0
    #: CPU seconds / wall seconds: 1.0 = one core fully busy.
    busy: float = 0.0
    peak_rss: int | None = None
    rss_before: int | None = None
    #: At the end of the run (the server only): unique memory (what killing it frees),
    #: open file descriptors, threads.
    uss: int | None = None
    fds: int | None = None
    threads: int | None = None


@dataclass
class Usage:
    """CPU and memory over one measurement window."""

    wall_s: float = 0.0
    server: ProcUsage | None = None
    #: Each load-generator process (workers and the coordinator), by label.
    generator: dict[str, ProcUsage] = field(default_factory=dict)
    #: Busy cores over the window on the whole machine (all processes, steal included).
    machine_busy: float = 0.0
    cores: int = 1
    #: Cores' worth of time the hypervisor gave to other guests (part of other_busy).
    steal_busy: float = 0.0

    @property
    def generator_busy(self) -> float:
        return sum(p.busy for p in self.generator.values())

    @property
    def generator_max_busy(self) -> float:
        return max((p.busy for p in self.generator.values()), default=0.0)

    @property
    def other_busy(self) -> float:
        """Busy cores used by neither the server nor the load generator (noise)."""
        server = self.server.busy if self.server else 0.0
        return max(0.0, self.machine_busy - server - self.generator_busy)

    def bottleneck_warning(self) -> str | None:
        """Why the load generator may have limited this figure, or None.

        A generator process near one full core cannot go faster; and on a saturated
        machine where the server is not near a full core, the generator (or outside
        load) took the CPU the server needed.
        """
        reasons = []
        if self.generator_max_busy >= 0.9:
            reasons.append(f"a generator process used {self.generator_max_busy:.0%} of a core")
        server_busy = self.server.busy if self.server else None
        if (
            self.machine_busy >= 0.9 * self.cores
            and server_busy is not None
            and server_busy < 0.85
            and self.generator_busy >= server_busy
        ):
            reasons.append(
                f"machine saturated ({self.machine_busy:.2f}/{self.cores} cores) while the "
                f"server used {server_busy:.0%} of a core"
            )
        return "; ".join(reasons) or None


class ProcSampler:
    """Samples CPU and RSS of a server PID and of generator PIDs over a window.

    Call ``start()`` when the load starts, ``sample()`` every so often while it runs
    (for the peak RSS), then ``stop()`` for the :class:`Usage`. A process that is gone
    (or unreadable) gives no figures instead of an error.
    """

    def __init__(self, server_pid: int | None, generator_pids: dict[str, int]) -> None:
        self.server_pid = server_pid
        self.generator_pids = generator_pids
        self._t0 = 0.0
        self._machine0 = (0.0, 0.0, 0.0)
        # psutil.Process checks a PID's start time, so a reused PID is not read as ours.
        self._procs: dict[int, psutil.Process | None] = {}
        self._cpu0: dict[int, float | None] = {}
        self._peak: dict[int, int] = {}
        self._rss0: dict[int, int | None] = {}

    def _pids(self) -> list[int]:
        pids = list(self.generator_pids.values())
        if self.server_pid is not None:
            pids.append(self.server_pid)
        return pids

    def _cpu(self, pid: int) -> float | None:
        proc = self._procs.get(pid)
        try:
            times = proc.cpu_times() if proc else None
        except _GONE:
            return None
        return times.user + times.system if times else None

    def _rss(self, pid: int) -> int | None:
        proc = self._procs.get(pid)
        try:
            return int(proc.memory_info().rss) if proc else None
        except _GONE:
            return None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine0 = machine_cpu_steal()
        for pid in self._pids():
            self._procs[pid] = _process(pid)
            self._cpu0[pid] = self._cpu(pid)
            self._rss0[pid] = self._rss(pid)
            self._peak[pid] = self._rss0[pid] or 0
        if self.server_pid is not None:
            reset_peak_rss(self.server_pid)

    def sample(self) -> None:
        for pid in self._pids():
            rss = self._rss(pid)
            if rss is not None and rss > self._peak.get(pid, 0):
                self._peak[pid] = rss

    def stop(self) -> Usage:
        self.sample()
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy1, total1, steal1 = machine_cpu_steal()
        busy0, total0, steal0 = self._machine0
        cores = cpu_count()
        span = max(total1 - total0, 1e-9)
        machine_busy = (busy1 - busy0) / span * cores if total1 else 0.0
        steal_busy = (steal1 - steal0) / span * cores if total1 else 0.0

        def usage(pid: int) -> ProcUsage:
            before, after = self._cpu0.get(pid), self._cpu(pid)
            cpu = (after - before) if before is not None and after is not None else 0.0
            figures = ProcUsage(
                cpu_s=cpu,
                busy=cpu / wall,
                peak_rss=self._peak.get(pid) or None,
                rss_before=self._rss0.get(pid),
            )
            if pid == self.server_pid:
                _server_figures(self._procs.get(pid), figures)
            return figures

        return Usage(
            wall_s=wall,
            server=usage(self.server_pid) if self.server_pid is not None else None,
            generator={label: usage(pid) for label, pid in self.generator_pids.items()},
            machine_busy=machine_busy,
            cores=cores,
            steal_busy=steal_busy,
        )


def _server_figures(proc: psutil.Process | None, figures: ProcUsage) -> None:
    """Add the server's peak RSS since ``start`` (``VmHWM``, which sees peaks between
    two samples), USS, open fds and threads to ``figures``, as far as they are readable."""
    if proc is None:
        return
    hwm = peak_rss_bytes(proc.pid)
    if hwm is not None and (figures.peak_rss is None or hwm > figures.peak_rss):
        figures.peak_rss = hwm
    with contextlib.suppress(*_GONE, AttributeError), proc.oneshot():  # no fds: Windows
        figures.threads = proc.num_threads()
        figures.fds = proc.num_fds()
        figures.uss = int(proc.memory_full_info().uss)
