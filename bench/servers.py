"""The servers under test: ones the bench starts itself, and ones given by URL.

A *target* is written on the command line as ``--url SPEC``:

- ``trickle-trio``: start ``python -m trickle_trio serve`` on a free loopback port, in
  its own process, fresh for every measurement (so its peak RSS is that run's);
- ``reference``: start go-livepeer's own trickle server (``goref-server``, a binary:
  ``--reference PATH``, ``TRICKLE_BENCH_REFERENCE``, or
  ``../shared/reference/goref-server`` beside the repository) the same way, with its
  changefeed off and its log at ``warn`` as trickle-trio's is at ``warning``;
- ``baseline``: start ``bench/baseline_relay.py`` (a bare ASGI relay on hypercorn+trio,
  no protocol features) the same way;
- ``http://host:port/base/``: a server someone else runs (it must autocreate channels);
  its PID is looked up from the listening port when it runs on this machine.

Any of them may carry a label: ``--url go=http://127.0.0.1:8080/``. The target labelled
``reference`` (``--url reference`` or ``--url reference=http://...``) is the one the
tables' ratio column compares with.

Imports: stdlib, trio and the bench's own client.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import trio

from .client import Conn, HttpError
from .procstat import find_listener_pid

MANAGED = {"trickle-trio", "reference", "baseline"}
#: Where this package was imported from: a checkout's root, or site-packages.
_ROOT = Path(__file__).resolve().parent.parent
#: The reference server, relative to the repository.
REFERENCE_DEFAULT = Path("..") / "shared" / "reference" / "goref-server"
REFERENCE_LABEL = "reference"


@dataclass(frozen=True)
class Reference:
    """The reference server's binary: where, which build, or why it cannot run."""

    path: Path
    problem: str | None = None
    sha256: str | None = None
    #: The go-livepeer commit it was built from, if its README says.
    commit: str | None = None


def resolve_reference(flag: str | None) -> Reference:
    """The reference binary from ``--reference``, ``TRICKLE_BENCH_REFERENCE``, or the
    default beside the repository (the current directory when not run from a checkout)."""
    chosen = flag or os.environ.get("TRICKLE_BENCH_REFERENCE")
    if chosen:
        path = Path(chosen)
    else:
        repo = _ROOT if (_ROOT / "pyproject.toml").exists() else Path.cwd()
        path = (repo / REFERENCE_DEFAULT).resolve()
    if not path.is_file():
        return Reference(path, f"{path} does not exist (give --reference PATH)")
    if not os.access(path, os.X_OK):
        return Reference(path, f"{path} is not executable")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    commit = None
    readme = path.parent / "README.md"
    if readme.is_file():
        found = re.search(r"commit\s+([0-9a-f]{40})", readme.read_text(errors="replace"))
        commit = found.group(1) if found else None
    return Reference(path, None, digest, commit)


@dataclass(frozen=True)
class Target:
    """A server to measure, as given on the command line."""

    label: str
    #: "trickle-trio", "baseline", or None for a server given by URL.
    managed: str | None
    url: str | None = None

    def __str__(self) -> str:
        return f"{self.label}={self.url or self.managed}"

    @property
    def is_reference(self) -> bool:
        return self.label == REFERENCE_LABEL

    @classmethod
    def parse(cls, spec: str) -> Target:
        label, sep, rest = spec.partition("=")
        if not sep or "://" in label:
            label, rest = "", spec
        if rest in MANAGED:
            return cls(label or rest, rest)
        parts = urlsplit(rest)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"--url wants trickle-trio, reference, baseline or http://host:port/, not {spec!r}"
            )
        return cls(label or f"{parts.hostname}:{parts.port or 80}", None, rest)


@dataclass(frozen=True)
class Endpoint:
    """Where a running server answers: address, base path, and PID when known."""

    host: str
    port: int
    base_path: str
    pid: int | None
    label: str

    def path(self, channel: str, seq: int | str | None = None) -> str:
        return f"{self.base_path}{channel}" + ("" if seq is None else f"/{seq}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(kind: str, port: int, reference: Path | None = None) -> list[str]:
    if kind == "reference":
        if reference is None:
            raise RuntimeError("no reference binary (give --reference PATH)")
        addr = f"127.0.0.1:{port}"
        return [str(reference), "-addr", addr, "-changefeed=false", "-log-level", "warn"]
    if kind == "trickle-trio":
        return [
            sys.executable,
            "-m",
            "trickle_trio",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    return [sys.executable, "-m", "bench.baseline_relay", "--port", str(port)]


async def wait_healthy(
    host: str,
    port: int,
    path: str,
    *,
    within: float,
    process: trio.Process | None = None,
    any_answer: bool = False,
) -> None:
    """Poll ``GET path`` until it answers 2xx (with ``any_answer``: anything at all, for a
    server without a health route).

    Raises:
        trio.TooSlowError: no 2xx within ``within`` seconds.
        RuntimeError: ``process`` exited meanwhile.
    """
    with trio.fail_after(within):
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with code {process.returncode}")
            try:
                conn = await Conn.open(host, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            try:
                await conn.request("GET", path)
                head = await conn.read_head()
                await conn.read_body_bytes(head)
                if 200 <= head.status < 300 or any_answer:
                    return
            except HttpError:
                pass
            finally:
                conn.close()
            await trio.sleep(0.05)


def _open_log(log_dir: Path | None, name: str) -> IO[bytes] | None:
    return open(log_dir / name, "wb") if log_dir else None


@contextlib.asynccontextmanager
async def open_target(
    target: Target, log_dir: Path | None = None, reference: Path | None = None
) -> AsyncIterator[Endpoint]:
    """The target's endpoint for the block; a managed server lives exactly that long.

    ``reference``: the binary a ``reference`` target runs.
    """
    if target.managed is None:
        assert target.url is not None
        parts = urlsplit(target.url)
        port = parts.port or 80
        host = parts.hostname or "127.0.0.1"
        base = parts.path if parts.path.endswith("/") else parts.path + "/"
        pid = find_listener_pid(port) if host in ("127.0.0.1", "localhost") else None
        yield Endpoint(host, port, base, pid, target.label)
        return
    last_error: Exception | None = None
    # The servers import the same code as this process: this package's parent first.
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _attempt in range(3):
        port = free_port()
        log = _open_log(log_dir, f"{target.label}-{port}.log")
        output = log if log is not None else subprocess.DEVNULL
        proc = await trio.lowlevel.open_process(
            _command(target.managed, port, reference),
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            cwd=_ROOT,
            env=env,
        )
        try:
            try:
                await wait_healthy(
                    "127.0.0.1",
                    port,
                    "/healthz",
                    within=20,
                    process=proc,
                    any_answer=target.managed == "reference",  # it has no health route
                )
            except (trio.TooSlowError, RuntimeError) as exc:
                last_error = RuntimeError(f"{target.label} did not start on port {port}: {exc}")
                continue
            yield Endpoint("127.0.0.1", port, "/", proc.pid, target.label)
            return
        finally:
            await stop_process(proc)
            if log is not None:
                log.close()
    assert last_error is not None
    raise last_error


async def stop_process(proc: trio.Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the process."""
    with trio.CancelScope(shield=True):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await proc.wait()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        with trio.move_on_after(5):
            await proc.wait()
