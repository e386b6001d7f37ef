"""``trickle-trio cluster``: several ``trickle-trio serve`` processes behind HAProxy.

One process uses one core and holds its channels' state, so a deployment that outgrows it
shards channels: HAProxy hashes each request's channel name (the first path segment after
the base path) onto one of N backends, consistently, and streams both ways. The config
is ``trickle_trio/haproxy.cfg.in``, rendered here for the backends at hand; ``deploy/README.md``
explains each setting.

    trickle-trio cluster [--workers N] [--host H] [--port P] [--base-path /p/]
                         [--autocreate/--no-autocreate] [--changefeed] [--idle-timeout S]
                         [--config FILE] [--stream-timeout S] [--run-dir DIR]
                         [--no-restart] [--restart-delay S] [--restart-delay-max S]
    trickle-trio cluster --print-config --backend [ID=]HOST:PORT [--backend ...] [--port P]

Lifecycle (:func:`run_cluster`): pick free loopback ports, start the backends, wait until
each answers ``/healthz``, check and start HAProxy, wait until it routes to every shard,
write ``cluster.json`` in the run directory, then supervise. On SIGTERM/SIGINT, HAProxy
soft-stops first (it stops accepting; streams in flight go on), then every backend drains
(subscribers end with ``Lp-Trickle-Closed`` and preconnects are released, through the
still-running proxy), and HAProxy, with nothing left to carry, exits. A backend that dies
is restarted on its address with backoff (``trickle_trio.supervisor``; ``--no-restart``
leaves it down): its channel names answer 503 meanwhile, the others are untouched, and
the proxy's ``/readyz`` answers ``503 degraded: b2 down`` until it is back.
HAProxy dying stops everything (exit status 1).

Children run in their own sessions (a terminal's Ctrl-C reaches only this process, which
orders the shutdown) and are sent SIGTERM by the kernel if this process dies
(``PR_SET_PDEATHSIG``), so none of them outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from string import Template
from typing import Any

import trio

from .client.cli import HelpFormatter
from .core.wire import normalize_base_path
from .supervisor import StartFailed, Supervisor

logger = logging.getLogger(__name__)

#: The HAProxy config template (package data: an installed wheel has it too).
TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg.in"
#: How long backends and the proxy may take to answer after they are started.
STARTUP_TIMEOUT = 30.0
#: How long one readiness probe may take (something else may hold the port, mute).
PROBE_TIMEOUT = 1.0
#: How often a backend is started on a fresh port when its first one was taken meanwhile.
BIND_ATTEMPTS = 3
#: How long backends may take to drain (teardown grace + graceful timeout, with room).
DRAIN_TIMEOUT = 30.0
#: How long HAProxy may take to exit once the backends are gone, before a hard stop.
PROXY_EXIT_TIMEOUT = 5.0
#: HAProxy's own bound on a soft stop (``hard-stop-after``), a safety net.
HARD_STOP_AFTER = "60s"
#: The longest a trickle request idles by design with the backends' defaults:
#: ``idle_timeout`` (300 s) + ``sweep_interval`` (60 s).
DEFAULT_LONGEST_IDLE = 360.0
_PR_SET_PDEATHSIG = 1


class ClusterError(Exception):
    """The cluster cannot start or go on; the message is one line, fit for a CLI."""


@dataclass(frozen=True)
class Shard:
    """One backend as HAProxy sees it: name ``b<id>``, address, and its ring ``id``.

    HAProxy's consistent-hash ring depends on the ids (and weights) only, so a channel's
    shard is a function of its name and the set of ids, whatever the addresses.
    """

    id: int
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"b{self.id}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @classmethod
    def parse(cls, spec: str, default_id: int) -> Shard:
        """``[ID=]HOST:PORT`` (``[v6]:PORT`` for IPv6); the id defaults to the position."""
        ident, sep, address = spec.rpartition("=")
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            shard = cls(int(ident) if sep else default_id, host, int(port))
        except ValueError:
            shard = None
        if shard is None or not host or shard.id < 1 or not 0 < shard.port < 65536:
            raise ClusterError(f"--backend wants [ID=]HOST:PORT with ID >= 1, not {spec!r}")
        return shard


@dataclass(frozen=True)
class ClusterOptions:
    """What ``trickle-trio cluster`` was asked for. Durations in seconds."""

    workers: int = 2
    #: Address and port the proxy binds; backends always bind loopback.
    host: str = "127.0.0.1"
    port: int = 2939
    base_path: str = "/"
    autocreate: bool = True
    changefeed: bool = False
    #: Passed to every backend when set (else their default or configuration applies).
    idle_timeout: float | None = None
    #: A TOML settings file for every backend (``serve --config``).
    config: str | None = None
    #: HAProxy's client and server inactivity timeouts (idle streams are normal).
    stream_timeout: float = 3600.0
    #: Where configs, logs and ``cluster.json`` go; None = a temporary directory.
    run_dir: str | None = None
    haproxy: str | None = None
    template: Path = TEMPLATE
    log_level: str = "info"
    #: Restart a backend that exits, after ``restart_delay`` seconds, doubling after each
    #: failed start up to ``restart_delay_max`` (see ``trickle_trio.supervisor``).
    restart: bool = True
    restart_delay: float = 0.5
    restart_delay_max: float = 30.0
    #: Remote backends, for ``--print-config``.
    backends: tuple[Shard, ...] = ()


@dataclass(frozen=True)
class ClusterInfo:
    """A running cluster, as written to ``cluster.json``."""

    url: str
    run_dir: str
    proxy_pid: int
    shards: list[dict[str, Any]]


# --- the config --------------------------------------------------------------------------


def channel_field(base_path: str) -> int:
    """The ``field(N,/)`` index of the channel name in a request path under ``base_path``.

    ``/cam/0`` splits into ``"", "cam", "0"``: field 2; each base path segment adds one.
    """
    return 2 + len([part for part in base_path.split("/") if part])


def _duration(seconds: float) -> str:
    """HAProxy's time syntax, in whole seconds when exact."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def render_config(
    shards: Sequence[Shard],
    *,
    bind: str,
    base_path: str = "/",
    stream_timeout: float = 3600.0,
    template: Path = TEMPLATE,
    readiness: str | None = None,
) -> str:
    """The HAProxy config for ``shards``, listening on ``bind`` (``HOST:PORT``).

    ``readiness`` (``HOST:PORT``): where the proxy's ``/readyz`` is answered (the
    cluster's :class:`~trickle_trio.supervisor.Supervisor`, which knows which shards are
    down); without it the proxy answers ``ready`` itself while it runs.

    Raises:
        ClusterError: the template cannot be read, or two shards share an id.
    """
    if len({shard.id for shard in shards}) != len(shards):
        raise ClusterError("two backends have the same id")
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterError(f"cannot read the HAProxy template {template}: {exc.strerror}") from None
    base = normalize_base_path(base_path)

    def paths(name: str) -> str:
        return " ".join(dict.fromkeys([f"/{name}", f"{base}{name}"]))

    rules = (
        f"    use-server {shard.name} if {{ var(txn.shard) -m str {shard.name} }}"
        for shard in shards
    )
    servers = (f"    server {shard.name} {shard.address} id {shard.id}" for shard in shards)
    if readiness is None:
        readyz_rule = (
            "    http-request return status 200 content-type text/plain "
            f'string "ready\\n" if {{ path {paths("readyz")} }}'
        )
        readiness_route = readiness_backend = ""
    else:
        readyz_rule = "    # /readyz: the cluster's supervisor says which shards are down (below)"
        readiness_route = (
            f"    use_backend readiness if {{ path {paths('readyz')} }}"
            " !{ var(txn.shard) -m found }"
        )
        readiness_backend = (
            "\n# `trickle-trio cluster`'s supervisor: 200 ready, or 503 degraded: <shards> down.\n"
            f"backend readiness\n    server supervisor {readiness}"
        )
    return Template(text).substitute(
        bind=bind,
        hard_stop_after=HARD_STOP_AFTER,
        stream_timeout=_duration(stream_timeout),
        per_shard_path="%[path]" if base == "/" else f"%[path,regsub(^{base},/)]",
        healthz_paths=paths("healthz"),
        readyz_paths=paths("readyz"),
        per_shard_paths=f"{paths('metrics')} {paths('_status')}",
        page_paths=paths("_/watch"),
        readyz_rule=readyz_rule,
        readiness_route=readiness_route,
        readiness_backend=readiness_backend,
        changes_path=f"{base}_changes",
        shard_names=" ".join(shard.name for shard in shards),
        channel_field=channel_field(base),
        use_server_rules="\n".join(rules),
        servers="\n".join(servers),
    )


def find_haproxy(explicit: str | None = None) -> str | None:
    """The HAProxy binary: ``explicit``, else on PATH, else in the usual sbin folders."""
    candidates = (
        [explicit]
        if explicit
        else [shutil.which("haproxy"), "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
    )
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


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
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
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
        """Wait for the process to exit (without blocking trio); its exit status."""
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


async def _wait_answering(child: Child, host: str, port: int, path: str) -> None:
    """Poll ``GET path`` until it answers 200; fail if ``child`` exits meanwhile."""
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


def _backend_argv(options: ClusterOptions, shard: Shard) -> list[str]:
    argv = [sys.executable, "-m", "trickle_trio", "serve"]
    argv += ["--host", shard.host, "--port", str(shard.port), "--base-path", options.base_path]
    argv.append("--autocreate" if options.autocreate else "--no-autocreate")
    argv.append("--changefeed" if options.changefeed else "--no-changefeed")
    if options.idle_timeout is not None:
        argv += ["--idle-timeout", str(options.idle_timeout)]
    if options.config is not None:
        argv += ["--config", options.config]
    return [*argv, "--log-level", options.log_level]


def _open_run_dir(run_dir: str | None) -> Path:
    """``run_dir`` (created if missing), or a fresh temporary directory."""
    if run_dir is None:
        return Path(tempfile.mkdtemp(prefix="trickle-cluster-"))
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prepare(
    options: ClusterOptions, haproxy: str, run_dir: Path, readiness: str
) -> tuple[list[Shard], Path, str]:
    """Shards on free ports, the HAProxy config (checked by HAProxy) and its version."""
    shards = [Shard(i, "127.0.0.1", free_port()) for i in range(1, options.workers + 1)]
    config_path = _write_config(options, shards, run_dir, readiness)
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        detail = " | ".join((check.stderr or check.stdout).strip().splitlines()[-3:])
        raise ClusterError(f"HAProxy rejects {config_path}: {detail}")
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True, check=False)
    words = version.stdout.split()  # "HAProxy version 2.6.12-1 2023/03/10 - https://..."
    return shards, config_path, f"HAProxy {words[2]}" if len(words) > 2 else "HAProxy"


def _write_config(
    options: ClusterOptions, shards: list[Shard], run_dir: Path, readiness: str
) -> Path:
    host = f"[{options.host}]" if ":" in options.host else options.host
    config = render_config(
        shards,
        bind=f"{host}:{options.port}",
        base_path=options.base_path,
        stream_timeout=options.stream_timeout,
        template=options.template,
        readiness=readiness,
    )
    config_path = run_dir / "haproxy.cfg"
    config_path.write_text(config, encoding="utf-8")
    return config_path


async def _start_backends(
    options: ClusterOptions, shards: list[Shard], run_dir: Path, backends: list[Child]
) -> bool:
    """Start a backend per shard into ``backends`` and wait until each answers.

    A port is picked free and bound by the backend a moment later; should something else
    take it meanwhile (the backend says ``cannot bind``), the shard moves to another
    free port, up to ``BIND_ATTEMPTS`` times. Returns whether any shard moved (its
    address in ``shards`` is then the new one).

    Raises:
        ClusterError: a backend exited while starting, for another reason or too often.
    """
    moved = False
    for shard in shards:
        backends.append(_start_backend(options, shard, run_dir))
    for index in range(len(shards)):
        for attempt in range(1, BIND_ATTEMPTS + 1):
            shard = shards[index]
            try:
                await _wait_answering(backends[index], shard.host, shard.port, "/healthz")
                break
            except ClusterError:
                child = backends[index]
                lost_port = child.popen.returncode == 2 and "cannot bind" in child.log_tail(1)
                if not lost_port or attempt == BIND_ATTEMPTS:
                    raise
            shards[index] = dataclasses.replace(shard, port=free_port(shard.host))
            logger.info(
                "shard %s: port %d was taken meanwhile; starting on %d",
                shard.name,
                shard.port,
                shards[index].port,
            )
            backends[index] = _start_backend(options, shards[index], run_dir)
            moved = True
    return moved


async def run_cluster(
    options: ClusterOptions,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[ClusterInfo] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the cluster until ``shutdown_trigger`` returns, then stop it in order.

    The default trigger is the first SIGINT or SIGTERM. Their receiver is installed before
    any child starts and stays until the last one is gone: a second signal cannot cut
    the orderly stop short (it is bounded by ``DRAIN_TIMEOUT`` and ``PROXY_EXIT_TIMEOUT``).
    Returns 0 after a requested stop, 1 when HAProxy died on its own.

    Raises:
        ClusterError: HAProxy is missing, rejects the config, or a process failed to start.
    """
    haproxy = find_haproxy(options.haproxy)
    if haproxy is None:
        raise ClusterError(
            "haproxy not found: install it (Debian/Ubuntu: apt-get install haproxy) "
            "or pass --haproxy PATH"
        )
    longest_idle = (
        DEFAULT_LONGEST_IDLE if options.idle_timeout is None else options.idle_timeout + 60
    )
    if options.stream_timeout <= longest_idle:
        logger.warning(
            "stream_timeout=%s is not above idle_timeout + sweep_interval (~%ss): "
            "HAProxy may cut idle preconnects and waiting subscribers",
            options.stream_timeout,
            longest_idle,
        )
    options = dataclasses.replace(options, port=options.port or free_port(options.host))
    with contextlib.ExitStack() as stack:
        if shutdown_trigger is None:
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))

            async def first_signal() -> None:
                async for signum in signals:
                    logger.info("cluster stopping signal=%s", signal.Signals(signum).name)
                    return

            shutdown_trigger = first_signal
        return await _run(options, haproxy, shutdown_trigger, task_status)


async def _run(
    options: ClusterOptions,
    haproxy: str,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[ClusterInfo],
) -> int:
    port = options.port
    run_dir = await trio.to_thread.run_sync(_open_run_dir, options.run_dir)
    backends: list[Child] = []
    proxy: Child | None = None
    code = 0
    keep_run_dir = False  # a failed start keeps its logs
    try:
        # The supervisor's readiness endpoint, on loopback, for the proxy's /readyz.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        readiness = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        shards, config_path, version = await trio.to_thread.run_sync(
            _prepare, options, haproxy, run_dir, readiness
        )
        async with trio.open_nursery() as nursery:

            async def stop_on_trigger() -> None:
                await shutdown_trigger()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_trigger)
            with trio.fail_after(STARTUP_TIMEOUT):
                if await _start_backends(options, shards, run_dir, backends):
                    config_path = await trio.to_thread.run_sync(
                        _write_config, options, shards, run_dir, readiness
                    )
                supervisor = _supervisor(options, shards, backends, run_dir)
                await nursery.start(supervisor.serve_readiness, listeners)
                argv = [haproxy, "-db", "-f", str(config_path)]
                proxy = Child("haproxy", argv, run_dir / "haproxy.log")
                for shard in shards:
                    path = f"/_shard/{shard.name}/healthz"
                    await _wait_answering(proxy, options.host, port, path)
            info = _announce(options, run_dir, version, proxy, shards, backends)
            supervisor.on_change = partial(_write_state, info, proxy, supervisor)
            task_status.started(info)
            for index in range(len(backends)):
                nursery.start_soon(supervisor.watch, index)
            code = await _watch_proxy(proxy)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _unwrap(group)
        keep_run_dir = isinstance(error, (trio.TooSlowError, ClusterError))
        if isinstance(error, trio.TooSlowError):
            raise ClusterError(
                f"not serving after {STARTUP_TIMEOUT:g} s; logs kept in {run_dir}"
            ) from None
        if isinstance(error, ClusterError):
            raise error from None
        raise
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proxy, backends)
        if options.run_dir is None and not keep_run_dir:
            await trio.to_thread.run_sync(partial(shutil.rmtree, run_dir, ignore_errors=True))
    logger.info("cluster stopped")
    return code


def _start_backend(options: ClusterOptions, shard: Shard, run_dir: Path) -> Child:
    return Child(shard.name, _backend_argv(options, shard), run_dir / f"{shard.name}.log")


def _supervisor(
    options: ClusterOptions, shards: list[Shard], backends: list[Child], run_dir: Path
) -> Supervisor[Child]:
    """The backends' supervisor; ``backends`` is the list it keeps current."""

    def start(index: int) -> Child:
        return _start_backend(options, shards[index], run_dir)

    async def wait_serving(index: int, child: Child) -> None:
        shard = shards[index]
        try:
            await _wait_answering(child, shard.host, shard.port, "/healthz")
        except ClusterError as exc:
            raise StartFailed(str(exc)) from None

    return Supervisor(
        backends,
        start,
        wait_serving,
        restart=options.restart,
        restart_delay=options.restart_delay,
        restart_delay_max=options.restart_delay_max,
    )


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single exception inside (nested) one-member groups, else the group itself."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


def _announce(
    options: ClusterOptions,
    run_dir: Path,
    version: str,
    proxy: Child,
    shards: list[Shard],
    backends: list[Child],
) -> ClusterInfo:
    host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{host}:{options.port}{normalize_base_path(options.base_path)}"
    listing = [
        {
            "name": shard.name,
            "id": shard.id,
            "url": shard.url,
            "pid": child.pid,
            "up": True,
            "restarts": 0,
            "log": str(child.log_path),
            "via_proxy": f"http://{host}:{options.port}/_shard/{shard.name}/",
        }
        for shard, child in zip(shards, backends, strict=True)
    ]
    info = ClusterInfo(url.rstrip("/"), str(run_dir), proxy.pid, listing)
    _write_state(info, proxy)
    logger.info(
        "cluster serving %s workers=%d proxy=%s stream_timeout=%s autocreate=%s run_dir=%s",
        url,
        len(shards),
        version,
        _duration(options.stream_timeout),
        "on" if options.autocreate else "off",
        run_dir,
    )
    for entry in listing:
        logger.info(
            "shard %s %s pid=%d via %s",
            entry["name"],
            entry["url"],
            entry["pid"],
            entry["via_proxy"],
        )
    return info


def _write_state(
    info: ClusterInfo, proxy: Child, supervisor: Supervisor[Child] | None = None
) -> None:
    """(Re)write ``cluster.json``: the shards' current pids, whether each is up."""
    if supervisor is not None:
        for entry, process, health in zip(
            info.shards, supervisor.processes, supervisor.health, strict=True
        ):
            entry.update(pid=process.pid, up=health.up, restarts=health.restarts)
    run_dir = Path(info.run_dir)
    state = {**info.__dict__, "proxy_log": str(proxy.log_path)}
    partial_file = run_dir / "cluster.json.tmp"  # renamed: readers never see half of it
    partial_file.write_text(json.dumps(state, indent=2), encoding="utf-8")
    partial_file.replace(run_dir / "cluster.json")


async def _watch_proxy(proxy: Child) -> int:
    status = await proxy.wait()
    logger.error(
        "haproxy exited status=%s; stopping the cluster: %s", status, proxy.log_tail() or "-"
    )
    return 1


async def _stop(proxy: Child | None, backends: list[Child]) -> None:
    """Soft-stop the proxy, drain every backend through it, then let the proxy go."""
    if proxy is not None:
        proxy.send_signal(signal.SIGUSR1)  # no new connections; streams in flight go on
    for child in backends:
        child.send_signal(signal.SIGTERM)  # trickle-trio serve drains, then exits
    with trio.move_on_after(DRAIN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for child in backends:
                nursery.start_soon(child.wait)
    for child in backends:
        if child.running:
            logger.warning("shard %s still draining after %ss; killed", child.name, DRAIN_TIMEOUT)
            child.send_signal(signal.SIGKILL)
        await child.wait()
    if proxy is None:
        return
    with trio.move_on_after(PROXY_EXIT_TIMEOUT):
        await proxy.wait()
    if proxy.running:
        logger.warning("haproxy still up %ss after the backends; hard stop", PROXY_EXIT_TIMEOUT)
        proxy.send_signal(signal.SIGTERM)
        with trio.move_on_after(PROXY_EXIT_TIMEOUT):
            await proxy.wait()
        proxy.send_signal(signal.SIGKILL)
    await proxy.wait()


# --- command line ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


CLUSTER_DESCRIPTION = """\
Run several trickle-trio serve processes behind HAProxy on one machine: HAProxy hashes
each request's channel name onto one backend, so every request of a channel reaches the
process that owns it. One backend per core; HAProxy needs some CPU too. SIGTERM or
Ctrl-C stops HAProxy accepting, drains every backend, then stops. A backend that exits
is restarted, with backoff; meanwhile the proxy's /readyz answers 503 and names it.

With --print-config it only prints the HAProxy config for remote backends (--backend),
to run HAProxy on a proxy machine of its own. Needs HAProxy (apt-get install haproxy).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``cluster`` on the ``trickle-trio`` subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "cluster",
        help="run N servers behind HAProxy, channels sharded by name",
        description=CLUSTER_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--workers", type=_positive_int, default=2, help="backend processes (default 2)")
    add("--host", default="127.0.0.1", help="address the proxy binds (default 127.0.0.1)")
    add("--port", type=int, default=2939, help="port the proxy binds (default 2939; 0 = any)")
    add("--base-path", default="/", help="path prefix of every route (default /)")
    add(
        "--autocreate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create channels on first publish",
    )
    add(
        "--changefeed",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a _changes channel per shard (default off)",
    )
    add(
        "--idle-timeout",
        type=float,
        help="seconds before idle channels go, on every backend (default 300)",
    )
    add(
        "--config",
        help="TOML settings file for every backend, as serve --config (default: none)",
    )
    add(
        "--stream-timeout",
        type=float,
        default=3600.0,
        help="HAProxy's idle timeout for streams, above idle-timeout + sweep (default 3600)",
    )
    add("--run-dir", help="keep config, logs and cluster.json here (default: a temp dir)")
    add("--haproxy", help="the HAProxy binary (default: haproxy on PATH or in /usr/sbin)")
    add("--template", default=str(TEMPLATE), help="HAProxy config template")
    add(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart a backend that exits (default on)",
    )
    add(
        "--restart-delay",
        type=float,
        metavar="SECONDS",
        default=0.5,
        help="seconds before the first restart; doubles after each failed start (default 0.5)",
    )
    add(
        "--restart-delay-max",
        type=float,
        metavar="SECONDS",
        default=30.0,
        help="the longest wait between restarts (default 30)",
    )
    add("--log-level", default="info", help="debug, info, warning, error (default info)")
    add(
        "--print-config",
        action="store_true",
        help="print the HAProxy config for the --backend list and exit",
    )
    add(
        "--backend",
        action="append",
        default=[],
        metavar="[ID=]HOST:PORT",
        help="a remote backend for --print-config, repeatable (ids default to 1, 2, ...)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> ClusterOptions:
    """The options of a parsed ``cluster`` command line."""
    backends = tuple(Shard.parse(spec, i) for i, spec in enumerate(args.backend, start=1))
    if args.print_config and not backends:
        raise ClusterError("--print-config needs at least one --backend HOST:PORT")
    if not 0 <= args.port <= 65535:
        raise ClusterError(f"port must be 0..65535, not {args.port}")
    if not 0 < args.restart_delay <= args.restart_delay_max:
        raise ClusterError("--restart-delay wants 0 < delay <= --restart-delay-max")
    return ClusterOptions(
        workers=args.workers,
        host=args.host,
        port=args.port,
        base_path=args.base_path,
        autocreate=args.autocreate,
        changefeed=args.changefeed,
        idle_timeout=args.idle_timeout,
        config=args.config,
        stream_timeout=args.stream_timeout,
        run_dir=args.run_dir,
        haproxy=args.haproxy,
        template=Path(args.template),
        log_level=args.log_level,
        restart=args.restart,
        restart_delay=args.restart_delay,
        restart_delay_max=args.restart_delay_max,
        backends=backends,
    )


def config_for_backends(options: ClusterOptions) -> str:
    """``--print-config``: the HAProxy config for the remote ``options.backends``."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    return render_config(
        options.backends,
        bind=f"{host}:{options.port}",
        base_path=options.base_path,
        stream_timeout=options.stream_timeout,
        template=options.template,
    )
