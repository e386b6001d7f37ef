"""The processes of ``trickle-trio cluster``: spawning children that die with their
parent, their logs, free ports and readiness probes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from .haproxy import PR_SET_PDEATHSIG, PROBE_TIMEOUT, ClusterError

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- processes ---------------------------------------------------------------------------


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel for SIGTERM when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # we died before the request took effect
            os._exit(1)

    return hook


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with its output appended to ``log_path``.

    Synchronous on purpose: PR_SET_PDEATHSIG fires when the *thread* that forked exits,
    and ``trio.run_process`` forks from a worker thread that may retire at any time; this
    runs on the thread of ``trio.run``, which lives as long as the cluster.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # only prctl, resolved before the fork
        )


class Child:
    """A process the cluster started: a backend or the proxy."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.popen = _spawn(argv, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signum)

    async def wait(self) -> int:
        """Wait for the process to exit (without blocking trio); its exit status.

        Cancellation: only the wait ends; the process runs on.
        """
        if self.popen.returncode is None:
            pidfd_open: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
            try:
                fd = pidfd_open(self.popen.pid) if pidfd_open is not None else None
            except OSError:  # pragma: no cover - a kernel before 5.3
                fd = None
            if fd is None:  # pragma: no cover - not Linux
                while self.running:  # ruff: ignore[async-busy-wait] - no exit notification
                    await trio.sleep(0.05)
            else:
                try:
                    await trio.lowlevel.wait_readable(fd)
                finally:
                    os.close(fd)
        return self.popen.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


async def http_status(host: str, port: int, path: str) -> int:
    """The status code of ``GET path`` on a fresh connection.

    Cancellation: the connection is closed; no status.

    Raises:
        OSError: no connection, or it closed before a status line.
    """
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode("ascii"))
        head = b""
        while b"\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                raise OSError("connection closed before the status line")
            head += data
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP status line: {head[:40]!r}") from None


async def wait_answering(child: Child, host: str, port: int, path: str) -> None:
    """Poll ``GET path`` until it answers 200; fail if ``child`` exits meanwhile.

    Cancellation: polling stops; the child is left running (its owner stops it).
    """
    while True:
        if not child.running:
            raise ClusterError(
                f"{child.name} exited with status {child.popen.returncode} while starting: "
                f"{child.log_tail() or child.log_path}"
            )
        with contextlib.suppress(OSError), trio.move_on_after(PROBE_TIMEOUT):
            if await http_status(host, port, path) == 200:
                return
        await trio.sleep(0.05)


# --- the cluster -------------------------------------------------------------------------
