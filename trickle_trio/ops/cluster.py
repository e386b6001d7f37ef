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

import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..core.wire import normalize_base_path
from .haproxy import (
    BIND_ATTEMPTS,
    DEFAULT_LONGEST_IDLE,
    DRAIN_TIMEOUT,
    PROXY_EXIT_TIMEOUT,
    STARTUP_TIMEOUT,
    TEMPLATE,
    ClusterError,
    Shard,
    duration,
    find_haproxy,
    render_config,
)
from .processes import Child, free_port, wait_answering
from .supervisor import StartFailed, Supervisor

logger = logging.getLogger(__name__)


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
                await wait_answering(backends[index], shard.host, shard.port, "/healthz")
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

    Cancellation: the same orderly stop runs (shielded, bounded by the timeouts above),
    then the cancellation propagates: no child outlives the call.

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
                    await wait_answering(proxy, options.host, port, path)
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
            await wait_answering(child, shard.host, shard.port, "/healthz")
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
        duration(options.stream_timeout),
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
