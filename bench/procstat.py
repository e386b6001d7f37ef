"""CPU and memory of processes, read from ``/proc`` (Linux only; elsewhere: no figures).

``ProcSampler`` takes a snapshot of a set of PIDs before and after a measurement and
samples resident memory in between, so a run reports, per process, CPU seconds used,
the busiest share of one core, and peak RSS. The machine's total CPU use is sampled
too, so that load from unrelated processes (other test runs on the box) shows up as
"other" instead of silently slowing everything down.

Imports: stdlib and trio.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

import trio

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces: fields start after the last ")".
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` now (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
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
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return (0.0, 0.0, 0.0)
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return ((total - idle) / _TICK, total / _TICK, steal / _TICK)


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
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def find_listener_pid(port: int) -> int | None:
    """The PID of the process listening on TCP ``port`` on this machine, if visible.

    Looks the listening socket's inode up in ``/proc/net/tcp{,6}`` and then finds the
    process holding it among ``/proc/*/fd``. Best effort: None when not found or not
    permitted (another user's server).
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        return int(entry)
        except OSError:
            continue
    return None


@dataclass
class ProcUsage:
    """What one process used during a measurement."""

    cpu_s: float = 0.0
    #: CPU seconds / wall seconds: 1.0 = one core fully busy.
    busy: float = 0.0
    peak_rss: int | None = None
    rss_before: int | None = None


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

    Use ``start()``, run ``sample_loop`` in a nursery while the load runs, then
    ``stop()`` for the :class:`Usage`.
    """

    def __init__(self, server_pid: int | None, generator_pids: dict[str, int]) -> None:
        self.server_pid = server_pid
        self.generator_pids = generator_pids
        self._t0 = 0.0
        self._cpu0: dict[int, float | None] = {}
        self._machine0 = (0.0, 0.0, 0.0)
        self._peak: dict[int, int] = {}
        self._rss0: dict[int, int | None] = {}

    def _pids(self) -> list[int]:
        pids = list(self.generator_pids.values())
        if self.server_pid is not None:
            pids.append(self.server_pid)
        return pids

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._machine0 = machine_cpu_steal()
        for pid in self._pids():
            self._cpu0[pid] = cpu_seconds(pid)
            self._rss0[pid] = rss_bytes(pid)
            self._peak[pid] = self._rss0[pid] or 0
        if self.server_pid is not None:
            reset_peak_rss(self.server_pid)

    def sample(self) -> None:
        for pid in self._pids():
            rss = rss_bytes(pid)
            if rss is not None and rss > self._peak.get(pid, 0):
                self._peak[pid] = rss

    async def sample_loop(self, interval: float = 0.2) -> None:
        while True:
            self.sample()
            await trio.sleep(interval)

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
            before, after = self._cpu0.get(pid), cpu_seconds(pid)
            cpu = (after - before) if before is not None and after is not None else 0.0
            peak = self._peak.get(pid) or None
            if pid == self.server_pid:
                hwm = peak_rss_bytes(pid)
                if hwm is not None and (peak is None or hwm > peak):
                    peak = hwm
            return ProcUsage(cpu_s=cpu, busy=cpu / wall, peak_rss=peak, rss_before=self._rss0[pid])

        return Usage(
            wall_s=wall,
            server=usage(self.server_pid) if self.server_pid is not None else None,
            generator={label: usage(pid) for label, pid in self.generator_pids.items()},
            machine_busy=machine_busy,
            cores=cores,
            steal_busy=steal_busy,
        )
