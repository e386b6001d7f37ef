"""bench/procstat.py: what the sampler reports of a real process, read through psutil.

The measured process is a child that does known work on command (burns CPU, allocates
memory, opens files, starts threads, listens on a port) and then waits: every figure is
compared with what it did, never with a time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.procstat import ProcSampler, find_listener_pid, machine_cpu_steal

_CHILD = r"""
import socket, sys, threading, time
files, blocks, threads = [], [], []
listener = None
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "burn":  # CPU seconds of its own, reported back
        start = time.process_time()
        while time.process_time() - start < float(arg):
            pass
        print(time.process_time() - start, flush=True)
        continue
    if cmd == "alloc":  # MiB, touched so that they are resident
        blocks.append(bytearray(int(arg) * 2**20))
        for i in range(0, len(blocks[-1]), 4096):
            blocks[-1][i] = 1
    elif cmd == "free":
        blocks.clear()
    elif cmd == "open":
        files.extend(open(sys.executable, "rb") for _ in range(int(arg)))
    elif cmd == "threads":
        stop = threading.Event()
        for _ in range(int(arg)):
            threads.append(threading.Thread(target=stop.wait, daemon=True))
            threads[-1].start()
    elif cmd == "listen":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        print(listener.getsockname()[1], flush=True)
        continue
    print("ok", flush=True)
"""


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, command: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child()
    yield c
    c.close()


def test_the_server_figures_are_what_it_did(child: Child) -> None:
    sampler = ProcSampler(child.proc.pid, {})
    sampler.start()
    burnt = float(child.do("burn 0.3"))
    child.do("alloc 64")
    sampler.sample()
    child.do("free")  # the peak stays, between two samples or after the last
    child.do("open 40")
    child.do("threads 3")
    usage = sampler.stop()
    server = usage.server
    assert server is not None
    # Clock ticks are 10 ms: allow one either side.
    assert server.cpu_s >= burnt - 0.02
    assert server.peak_rss is not None
    assert server.rss_before is not None
    assert server.peak_rss - server.rss_before >= 60 * 2**20
    assert server.fds is not None
    assert server.fds >= 40
    assert server.threads is not None
    assert server.threads >= 4
    assert server.uss is not None
    assert 0 < server.uss <= server.peak_rss


def test_generator_processes_get_cpu_and_peak_but_no_server_extras(child: Child) -> None:
    sampler = ProcSampler(None, {"worker0": child.proc.pid})
    sampler.start()
    burnt = float(child.do("burn 0.2"))
    child.do("alloc 32")
    sampler.sample()
    usage = sampler.stop()
    assert usage.server is None
    worker = usage.generator["worker0"]
    assert worker.cpu_s >= burnt - 0.02
    assert worker.peak_rss is not None
    assert worker.rss_before is not None
    assert worker.peak_rss - worker.rss_before >= 30 * 2**20
    assert worker.fds is None
    assert worker.threads is None
    assert usage.generator_busy == worker.busy


def test_a_process_that_is_gone_gives_no_figures_instead_of_an_error(child: Child) -> None:
    sampler = ProcSampler(child.proc.pid, {"worker0": child.proc.pid})
    sampler.start()
    child.proc.kill()
    child.proc.wait(10)
    usage = sampler.stop()
    assert usage.server is not None
    assert usage.server.cpu_s == pytest.approx(0)
    assert usage.server.fds is None
    assert usage.generator["worker0"].cpu_s == pytest.approx(0)


def test_the_machine_counts_busy_and_total_with_steal_inside_busy() -> None:
    busy, total, steal = machine_cpu_steal()
    assert 0 < busy < total
    assert 0 <= steal <= busy


def test_the_listener_of_a_port_is_found(child: Child) -> None:
    port = int(child.do("listen"))
    assert find_listener_pid(port) == child.proc.pid
    # A port nobody listens on (bound, not listening) has no listener.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert find_listener_pid(unused.getsockname()[1]) is None


def test_through_proxy_reads_user_and_system_apart(child: Child) -> None:
    from bench.through_proxy import cpu_seconds

    burnt = float(child.do("burn 0.2"))
    user, system = cpu_seconds(child.proc.pid)
    assert user + system >= burnt - 0.02
    child.proc.kill()
    child.proc.wait(10)
    assert cpu_seconds(child.proc.pid) == (0.0, 0.0)
