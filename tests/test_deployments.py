"""The two ways to run it, as separate processes: ``trickle-trio serve`` and plain hypercorn.

Both must drain on SIGTERM: a waiting subscriber ends with ``Lp-Trickle-Closed`` (not a
cut stream) and the process exits promptly, well inside hypercorn's graceful timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


async def subscribe_and_terminate(
    url: str, process: subprocess.Popen[bytes], *, group: bool
) -> tuple[int, dict[str, str]]:
    """A publisher mid-segment and a subscriber reading it; SIGTERM; both must end cleanly.

    Returns the exit code and the publisher's answer headers.
    """
    publisher = await connect(url)
    await publisher.start("POST", "/cam/0")
    await publisher.send(b"frame")
    # Two connections are served in no particular order: wait for the channel to exist.
    while (await call(url, "GET", "/cam/next")).status != 200:  # ruff: ignore[async-busy-wait]
        await trio.sleep(POLL_INTERVAL)
    subscriber: Conn = await connect(url)
    await subscriber.start("GET", "/cam/0")
    await subscriber.end()
    assert (await subscriber.head()).status == 200
    assert await subscriber.chunk() == b"frame"  # attached: the server streams to it now
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    assert await subscriber.chunk() is None  # a clean end of the body, not a cut stream
    answer = await publisher.response()
    await subscriber.aclose()
    await publisher.aclose()
    await until(lambda: process.poll() is not None)
    return process.returncode, answer.headers


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


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_plain_hypercorn_deployment_drains_on_sigterm(
    port: int, processes: list[subprocess.Popen[bytes]], workers: str
) -> None:
    process = start(
        [
            str(BIN / "hypercorn"),
            "trickle_trio.asgi:app",
            "--worker-class",
            "trio",
            "--workers",
            workers,
            "--bind",
            f"127.0.0.1:{port}",
        ],
        env={"TRICKLE_AUTOCREATE": "1", "TRICKLE_BASE_PATH": "/"},
    )
    processes.append(process)
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(LIMIT):
        await wait_until_serving(url, process)
        # systemd's default KillMode sends SIGTERM to the whole group (parent + worker).
        code, headers = await subscribe_and_terminate(url, process, group=True)
    assert headers["lp-trickle-closed"] == "terminated"
    assert code == 0
    assert process.stdout is not None
    assert "fast path on" in process.stdout.read().decode()  # in the worker, too
