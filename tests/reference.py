"""Two servers side by side on loopback, for differential tests: go-livepeer's own trickle
server (the reference, a ready binary) and ``trickle-trio serve``, each in its own process.

Both run with autocreate and the changefeed on. The reference binary is found at
``TRICKLE_REFERENCE`` or ``../shared/reference/goref-server`` beside the repository; where
it is missing or cannot execute here, the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "goref-server"
#: Headers compared between the two servers (names lower-case).
TRICKLE_HEADERS = ("lp-trickle-seq", "lp-trickle-latest", "lp-trickle-closed", "content-type")
STARTUP_TIMEOUT = 20.0


def reference_binary() -> Path:
    """The reference server's path; ``pytest.skip`` when it cannot run here."""
    path = Path(os.environ.get("TRICKLE_REFERENCE", DEFAULT_REFERENCE))
    if not path.is_file():
        pytest.skip(f"reference server not found at {path} (set TRICKLE_REFERENCE)")
    if not os.access(path, os.X_OK):
        pytest.skip(f"reference server at {path} is not executable")
    try:
        subprocess.run([str(path), "-h"], capture_output=True, timeout=10, check=False)
    except OSError as exc:
        pytest.skip(f"reference server at {path} cannot execute here: {exc}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # a separate process is starting: nothing to wait on but time
    raise RuntimeError(
        f"server did not listen on {port} in {STARTUP_TIMEOUT} s:\n{log.read_text()}"
    )


@dataclass
class Served:
    """A server process: its base URL (no trailing slash) and its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop it by its own PID (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_reference(tmp: Path) -> Served:
    port = free_port()
    log = tmp / "reference.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(reference_binary()), "-addr", f"127.0.0.1:{port}", "-log-level", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_listening(port, process, log)
    return Served("reference", f"http://127.0.0.1:{port}", process, log)


def start_ours(tmp: Path, **env: str) -> Served:
    port = free_port()
    log = tmp / "trickle-trio.log"
    environment = {**os.environ, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "trickle_trio", "serve", "--port", str(port), "--changefeed"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=REPO,
        )
    wait_listening(port, process, log)
    return Served("trickle-trio", f"http://127.0.0.1:{port}", process, log)


@pytest.fixture(scope="module", params=["fast-path", "stock-hypercorn"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    """Both servers for a test module; the reference first (it may skip the module).

    trickle-trio runs once with its fast path and once on stock hypercorn. Its teardown
    grace is set far beyond every test's deadline, so that a DELETE that waited for a
    slow reader would fail a test instead of passing late.
    """
    tmp = tmp_path_factory.mktemp("servers")
    reference = start_reference(tmp)
    fast_path = "1" if request.param == "fast-path" else "0"
    try:
        ours = start_ours(tmp, TRICKLE_TEARDOWN_GRACE="600", TRICKLE_FAST_PATH=fast_path)
    except BaseException:
        reference.stop()
        raise
    try:
        yield {"reference": reference, "trickle-trio": ours}
    finally:
        ours.stop()
        reference.stop()
