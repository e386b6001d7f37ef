"""The two ways to run it, as separate processes: ``trickle-trio serve`` and plain hypercorn.

Both must drain on SIGTERM: a waiting subscriber ends with ``Lp-Trickle-Closed`` (not a
cut stream) and the process exits promptly, well inside hypercorn's graceful timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio

from .sockets import POLL_INTERVAL, Conn, call, connect, until

LIMIT = 20
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as under systemd
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            reply = await call(url, "GET", "/healthz")
        except OSError:
            await trio.sleep(POLL_INTERVAL)
            continue
        assert reply.status == 200
        return


@dataclass
class Streams:
    """One of each kind of request a drain must end, on channel ``cam``."""

    publisher: Conn  # seq 0, mid-segment: one chunk sent, the body still open
    reader: Conn  # seq 0, has read that chunk
    waiting: Conn  # seq 1, no segment there yet
    preconnect: Conn  # seq 1, headers only, no body byte

    async def aclose(self) -> None:
        for conn in (self.publisher, self.reader, self.waiting, self.preconnect):
            await conn.aclose()


async def attached(url: str, channel: str, *, publishers: int, subscribers: int) -> None:
    """Poll the server's ``/_status`` until ``channel`` has that many POSTs and GETs."""
    while True:
        listing = {
            c["channel"]: c
            for c in json.loads((await call(url, "GET", "/_status")).body)["channels"]
        }
        entry = listing.get(channel)
        if entry and entry["publishers"] >= publishers and entry["subscribers"] >= subscribers:
            return
        await trio.sleep(POLL_INTERVAL)


async def open_streams(url: str) -> Streams:
    publisher = await connect(url)
    await publisher.start("POST", "/cam/0")
    await publisher.send(b"frame")
    # Two connections are served in no particular order: wait for the channel to exist.
    while (await call(url, "GET", "/cam/next")).status != 200:  # ruff: ignore[async-busy-wait]
        await trio.sleep(POLL_INTERVAL)
    reader = await connect(url)
    await reader.start("GET", "/cam/0")
    await reader.end()
    assert (await reader.head()).status == 200
    assert await reader.chunk() == b"frame"  # attached: the server streams to it now
    waiting = await connect(url)
    await waiting.start("GET", "/cam/1")
    await waiting.end()
    preconnect = await connect(url)
    await preconnect.start("POST", "/cam/1")
    await attached(url, "cam", publishers=2, subscribers=2)
    return Streams(publisher, reader, waiting, preconnect)


async def assert_drained(streams: Streams) -> dict[str, str]:
    """Every request ends with a terminal answer, none cut, none a 5xx.

    Returns the publisher's answer headers.
    """
    assert await streams.reader.chunk() is None  # a clean end of the body, not a cut stream
    assert streams.reader.reply.body == b"frame"  # the whole segment as it was written
    answer = await streams.publisher.response()
    assert answer.status < 500, answer
    assert answer.headers["lp-trickle-closed"] == "terminated"
    ended = await streams.waiting.response()
    assert ended.status < 500, ended
    assert ended.headers["lp-trickle-closed"] == "terminated"
    released = await streams.preconnect.head()
    assert released.status < 500, released
    assert released.headers["lp-trickle-closed"] == "terminated"
    assert streams.preconnect.h11.our_state is h11.SEND_BODY  # released before its body ended
    await streams.aclose()
    return answer.headers


async def subscribe_and_terminate(
    url: str, process: subprocess.Popen[bytes], *, group: bool
) -> tuple[int, dict[str, str]]:
    """Open streams of every kind; SIGTERM; each must end cleanly.

    Returns the exit code and the publisher's answer headers.
    """
    streams = await open_streams(url)
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    headers = await assert_drained(streams)
    await until(lambda: process.poll() is not None)
    return process.returncode, headers


async def test_serve_drains_on_sigterm_and_says_how_it_runs(
    port: int, processes: list[subprocess.Popen[bytes]]
) -> None:
    process = start([str(BIN / "trickle-trio"), "serve", "--port", str(port)])
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(LIMIT):
        await wait_until_serving(url, process)
        code, headers = await subscribe_and_terminate(url, process, group=False)
    assert headers["lp-trickle-closed"] == "terminated"
    assert code == 0
    assert process.stdout is not None
    output = process.stdout.read().decode()
    assert "autocreate=on" in output
    assert "127.0.0.1" in output
    assert "loopback only" in output
    assert "drained channels=1" in output
    assert "fast path on" in output


def test_serve_rejects_bad_settings_in_one_line() -> None:
    result = subprocess.run(
        [str(BIN / "trickle-trio"), "serve", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "trickle-trio: port must be 0..65535, not 70000"
    )


def test_serve_on_a_taken_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "trickle-trio"), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trickle-trio: cannot bind 127.0.0.1:{port}: address already in use"
    ]
    assert "serving" not in result.stdout


def hypercorn(port: int, workers: int, *, ignore_sigint: bool) -> subprocess.Popen[bytes]:
    """``hypercorn trickle_trio.asgi:app`` (the trio worker) in its own process group.

    The SIGINT disposition is set, not inherited from whoever runs the tests: a shell
    starts background jobs (``cmd &``) with SIGINT ignored, a terminal with it default.
    """
    disposition = signal.SIG_IGN if ignore_sigint else signal.SIG_DFL
    argv = [str(BIN / "hypercorn"), "trickle_trio.asgi:app", "--worker-class", "trio"]
    argv += ["--workers", str(workers), "--bind", f"127.0.0.1:{port}"]
    return subprocess.Popen(
        argv,
        env={**os.environ, "TRICKLE_AUTOCREATE": "1", "TRICKLE_BASE_PATH": "/"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as under systemd
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),  # only a syscall
    )


def workers_of(parent: int) -> list[int]:
    """The hypercorn workers (multiprocessing ``spawn`` children) of ``parent`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and b"--multiprocessing-fork" in cmdline:
            found.append(int(entry.name))
    return found


def output_of(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    return process.stdout.read().decode()


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds hypercorn's worker in /proc"
)


@linux_only
@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("target", ["parent", "group"])
async def test_plain_hypercorn_drains_when_sigterm_reaches_the_parent(
    port: int, processes: list[subprocess.Popen[bytes]], target: str, ignore_sigint: bool
) -> None:
    # `kill PID`, `docker stop` and Kubernetes signal the parent only; systemd's default
    # KillMode the whole group (parent and worker).
    process = hypercorn(port, 1, ignore_sigint=ignore_sigint)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(LIMIT):
        await wait_until_serving(url, process)
        (worker,) = workers_of(process.pid)
        code, _ = await subscribe_and_terminate(url, process, group=target == "group")
        await until(lambda: not Path(f"/proc/{worker}").exists())
    assert code == 0
    output = output_of(process)
    assert output.count("draining channels") == 1, output
    if target == "parent":
        assert "shutdown requested=parent: draining channels" in output
    assert "drained channels=1" in output
    assert "fast path on" not in output  # plain hypercorn is hypercorn


@linux_only
async def test_plain_hypercorn_worker_drains_on_its_own_sigterm_and_is_replaced(
    port: int, processes: list[subprocess.Popen[bytes]]
) -> None:
    process = hypercorn(port, 1, ignore_sigint=False)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(LIMIT):
        await wait_until_serving(url, process)
        (worker,) = workers_of(process.pid)
        streams = await open_streams(url)
        os.kill(worker, signal.SIGTERM)
        await assert_drained(streams)
        # The worker stops once drained; hypercorn's parent starts a fresh one.
        await until(lambda: workers_of(process.pid) not in ([], [worker]))
        assert (await call(url, "GET", "/readyz")).status == 200  # the new worker's
        assert (await call(url, "GET", "/cam/next")).status == 404  # the channel went
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        await until(lambda: process.poll() is not None)
    assert process.returncode == 0
    output = output_of(process)
    assert "shutdown signal=SIGTERM: draining channels" in output
    assert "drained channels=1" in output
    assert "drained channels=0" in output  # the replacement, stopped by its parent


@pytest.mark.parametrize(
    ("ignore_sigint", "signum"),
    [(False, signal.SIGTERM), (True, signal.SIGTERM), (False, signal.SIGINT)],
    ids=["sigterm", "sigterm-sigint-ignored", "sigint"],
)
async def test_plain_hypercorn_without_workers_drains_and_exits(
    port: int,
    processes: list[subprocess.Popen[bytes]],
    ignore_sigint: bool,
    signum: signal.Signals,
) -> None:
    # --workers 0: hypercorn serves in its own process, no parent to stop it.
    process = hypercorn(port, 0, ignore_sigint=ignore_sigint)
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(LIMIT):
        await wait_until_serving(url, process)
        streams = await open_streams(url)
        if ignore_sigint:
            process.send_signal(signal.SIGINT)  # ignored: the kernel discards it here
        process.send_signal(signum)
        await assert_drained(streams)
        await until(lambda: process.poll() is not None)
    assert process.returncode == 0
    output = output_of(process)
    assert f"shutdown signal={signum.name}: draining channels" in output
    assert "drained channels=1" in output
