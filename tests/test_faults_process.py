"""The child-process server fixture (trickle_trio.testing.process): in a plain pytest
test here, and in a generated asyncio suite (pytest-asyncio, anyio, a sync test and a
failing one) run by pytest in a subprocess with two xdist workers; ``serve --faults``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trickle_trio.faults import FaultPlanError
from trickle_trio.testing.process import ServerProcess, start_server_process

#: Longest a pytest run in a subprocess may take (it starts servers in processes too).
SUBPROCESS_TIMEOUT = 120


def status_of(method: str, url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_fixture_serves_and_takes_faults(trickle_server_process: ServerProcess) -> None:
    server = trickle_server_process
    assert server.url.startswith("http://127.0.0.1:")
    assert status_of("POST", f"{server.url}/cam/0", b"a") == 200
    rule = server.faults.add("answer", route="segment-post", seq=1, status=404)
    assert status_of("POST", f"{server.url}/cam/1", b"b") == 404
    assert status_of("POST", f"{server.url}/cam/2", b"c") == 200
    assert [(f["rule"], f["path"]) for f in server.faults.fired()] == [(rule["id"], "/cam/1")]
    with pytest.raises(FaultPlanError, match="route must be one of"):
        server.faults.add("drop", route="publish")
    assert "fast path on" in server.log()


@pytest.mark.trickle_serve("--max-segment-bytes", "10")
def test_the_marker_passes_serve_flags(trickle_server_process: ServerProcess) -> None:
    assert status_of("POST", f"{trickle_server_process.url}/cam/0", b"x" * 100) == 413
    assert status_of("POST", f"{trickle_server_process.url}/cam/1", b"x" * 10) == 200


def test_serve_applies_a_toml_plan_and_refuses_a_bad_one(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[rule]]\nroute = "create"\naction = "answer"\nstatus = 503\n')
    with start_server_process(tmp_path / "server", args=["--faults", str(plan)]) as server:
        assert [rule["status"] for rule in server.faults.rules()] == [503]
        assert status_of("POST", f"{server.url}/cam", b"") == 503
        assert status_of("POST", f"{server.url}/cam", b"") == 200
    plan.write_text('[[rule]]\naction = "cut"\nhow = "slam"\n')
    done = subprocess.run(
        [sys.executable, "-m", "trickle_trio", "serve", "--port", "0", "--faults", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"trickle-trio: {plan}: rule 1: cut: how must be one of rst, fin, not 'slam'"
    )


def test_a_server_that_cannot_start_fails_the_fixture_with_its_log(tmp_path: Path) -> None:
    with (
        pytest.raises(
            RuntimeError, match=r"(?s)exited with status 2 within .*max_channels must be >= 1"
        ),
        start_server_process(tmp_path, args=["--max-channels", "0"]),
    ):
        pass  # pragma: no cover - never reached


ASYNCIO_SUITE = """
import asyncio
import os
import aiohttp
import anyio
import pytest


async def publish_and_read(url):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/cam/0", data=b"hello") as response:
            assert response.status == 200
        async with session.get(f"{url}/cam/0") as response:
            return await response.read()


@pytest.mark.asyncio
async def test_asyncio(trickle_server_process):
    trickle_server_process.faults.add("answer", route="next", status=503)
    assert await publish_and_read(trickle_server_process.url) == b"hello"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{trickle_server_process.url}/cam/next") as response:
            assert response.status == 503
    record(trickle_server_process)


@pytest.fixture
def anyio_backend():
    return "asyncio"  # an asyncio suite


@pytest.mark.anyio
async def test_anyio(trickle_server_process):
    assert await publish_and_read(trickle_server_process.url) == b"hello"
    await anyio.sleep(0)
    record(trickle_server_process)


def test_sync(trickle_server_process):
    assert asyncio.run(publish_and_read(trickle_server_process.url)) == b"hello"
    record(trickle_server_process)


def test_failing(trickle_server_process):
    assert asyncio.run(publish_and_read(trickle_server_process.url)) == b"goodbye"


def record(server):
    with open(os.environ["RECORD_FILE"], "a") as file:
        file.write(f"{os.environ.get('PYTEST_XDIST_WORKER')} {server.pid} {server.url}\\n")
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def test_the_fixture_under_pytest_asyncio_anyio_and_two_xdist_workers(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(ASYNCIO_SUITE))
    (tmp_path / "pytest.ini").write_text(INI)
    record = tmp_path / "record.txt"
    env = {**os.environ, "RECORD_FILE": str(record)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q", "-rN"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "1 failed, 3 passed" in output, output
    # The failing test's report carries its server's log.
    assert "trickle-trio server log (pid " in output, output
    assert "fast path on: trickle-trio's HTTP/1.1 server" in output, output
    rows = [line.split() for line in record.read_text().splitlines()]
    assert len(rows) == 3
    assert {worker for worker, _, _ in rows} <= {"gw0", "gw1"}
    assert len({pid for _, pid, _ in rows}) == 3  # a server per test
    assert len({url for _, _, url in rows}) == 3  # each on its own port
    for _, pid, _ in rows:  # every one stopped
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
