"""A real trickle-trio server in a child process, for test suites that are not Trio.

The ``trickle_server_process`` fixture is plain (sync) pytest, so it serves asyncio
(pytest-asyncio, anyio) and synchronous tests alike, and under ``pytest -n`` (xdist)
each worker starts its own servers on ports the kernel picks. It runs ``python -m
trickle_trio serve`` on 127.0.0.1, port 0, with the fault control route on, waits until
the server answers (it writes its URL to a file once it does: ``--url-file``), yields a
:class:`ServerProcess` (``.url``, ``.faults``: a :class:`FaultClient`), and
stops it by its own PID after the test (SIGTERM, then SIGKILL after 10 s). A failing
test's report carries the server's log. Extra ``serve`` flags:
``@pytest.mark.trickle_serve("--max-segment-bytes", "65536")``.

Without the fixture: ``with start_server_process(directory) as server: ...``.

Imports only the stdlib, pytest and the sans-IO fault plan (the server itself runs in
the child).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from ..faults.plan import Action, FaultPlanError, action_to_dict

__all__ = [
    "FaultClient",
    "ServerProcess",
    "pytest_configure",
    "pytest_runtest_makereport",
    "start_server_process",
    "trickle_server_process",
]

#: Longest a child server may take to answer after it was started.
START_TIMEOUT: Final = 30.0
#: Longest a child server may take to stop after SIGTERM (then SIGKILL).
STOP_TIMEOUT: Final = 10.0
#: How often the start-up wait looks for the URL file.
POLL_INTERVAL: Final = 0.02
#: The lines of a server's log a failing test's report carries.
LOG_LINES: Final = 200

_PROCESSES = pytest.StashKey[list["ServerProcess"]]()


class FaultClient:
    """A sync client of a server's fault control route (``/_/faults``), stdlib only.

    ``add("cut", route="segment-post", seq=3, of="request", after=1000)`` (or
    ``add(Cut(of="request", after=1000), route="segment-post", seq=3)``) adds a rule and
    returns it as the server lists it (with its ``id``); ``rules()``, ``fired()``,
    ``remove(id)`` and ``clear()`` do what they say.

    Raises (every method):
        FaultPlanError: the server refused a rule (400); the message is its reason.
        RuntimeError: any other unexpected answer (a refusal: 401, 403), or no answer.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/_/faults"
        self._token = token
        self._timeout = timeout

    def add(self, action: str | Action, /, **fields: Any) -> dict[str, Any]:
        """Add one rule: ``action`` (a name or an action object) and its match/fields."""
        rule = {"action": action, **fields} if isinstance(action, str) else {}
        if not isinstance(action, str):
            rule = {**action_to_dict(action), **fields}
        added: list[dict[str, Any]] = self._call("POST", "", rule)["rules"]
        return added[0]

    def add_rules(self, rules: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add several rules (their plain-data form) at once: all or none."""
        added: list[dict[str, Any]] = self._call("POST", "", list(rules))["rules"]
        return added

    def rules(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = self._call("GET", "")["rules"]
        return rules

    def fired(self) -> list[dict[str, Any]]:
        """What fired, oldest first (each names its rule, the request and its path)."""
        fired: list[dict[str, Any]] = self._call("GET", "/fired")["fired"]
        return fired

    def remove(self, rule_id: int) -> None:
        self._call("DELETE", f"/{rule_id}")

    def clear(self) -> None:
        """Remove every rule and forget what fired."""
        self._call("DELETE", "")

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token is not None:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                reason = str(json.loads(text).get("error", text))
            except (ValueError, AttributeError):
                reason = text.strip()
            if exc.code == 400:
                raise FaultPlanError(reason) from None
            raise RuntimeError(f"{method} {self.url}{path}: {exc.code} {reason}") from None
        except OSError as exc:
            raise RuntimeError(f"{method} {self.url}{path}: no answer: {exc}") from None


class ServerProcess:
    """A child ``trickle-trio serve`` process (see the module).

    Attributes:
        url: ``http://127.0.0.1:PORT``, the prefix of every channel URL.
        faults: the client of its fault control route.
        pid: the child's process id.
        log_path: where its output goes.
    """

    def __init__(self, popen: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.popen = popen
        self.url = url
        self.log_path = log_path
        self.faults = FaultClient(url)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, lines: int = LOG_LINES) -> str:
        """The last ``lines`` lines of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM (the server drains and exits), SIGKILL if it has not exited within
        :data:`STOP_TIMEOUT`; its exit status."""
        return _stop(self.popen)


def _stop(popen: subprocess.Popen[bytes]) -> int:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
        try:
            return popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGKILL)
    return popen.wait()


def _child_environment(extra: dict[str, str] | None) -> dict[str, str]:
    """The test's environment without its ``TRICKLE_*`` settings (the child's settings
    are the fixture's), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRICKLE_")}
    env.update(extra or {})
    return env


@contextmanager
def start_server_process(
    directory: Path,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[ServerProcess]:
    """Run ``python -m trickle_trio serve`` (fault control on, 127.0.0.1, port 0, plus
    ``args``) for the duration of the block; its URL and log files go in ``directory``.

    Raises:
        RuntimeError: it exited, or did not answer within ``timeout`` (with its log).
    """
    directory.mkdir(parents=True, exist_ok=True)
    url_file = directory / "url"
    log_path = directory / "server.log"
    url_file.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "trickle_trio",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--faults-control",
        "--url-file",
        str(url_file),
        *args,
    ]
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_environment(env),
            start_new_session=True,  # a ^C in the terminal reaches pytest, not the server
        )
    try:
        url = _wait_for_url(popen, url_file, log_path, timeout)
        yield ServerProcess(popen, url, log_path)
    finally:
        _stop(popen)


def _wait_for_url(
    popen: subprocess.Popen[bytes], url_file: Path, log_path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            return url_file.read_text(encoding="utf-8").strip()
        status = popen.poll()
        if status is not None or time.monotonic() > deadline:
            log = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            what = f"exited with status {status}" if status is not None else "did not answer"
            raise RuntimeError(
                f"trickle-trio serve (pid {popen.pid}) {what} within {timeout:g} s:\n{log}"
            )
        time.sleep(POLL_INTERVAL)  # waiting on another process: no event to wait for


@pytest.fixture
def trickle_server_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A trickle-trio server in a child process (see the module); stopped after the test."""
    marker = request.node.get_closest_marker("trickle_serve")
    args = [str(arg) for arg in marker.args] if marker is not None else []
    directory = tmp_path_factory.mktemp("trickle-server")
    with start_server_process(directory, args=args) as server:
        request.node.stash.setdefault(_PROCESSES, []).append(server)
        yield server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "trickle_serve(*flags): extra 'trickle-trio serve' flags for trickle_server_process",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failing test's report carries the log of each server process it used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for server in item.stash.get(_PROCESSES, []):
        report.sections.append((f"trickle-trio server log (pid {server.pid})", server.log()))
