"""Running the server: the registry's nursery, the idle sweeper, hypercorn, the drain.

Nesting (outermost first), as hypercorn's own ``trio/run.py`` nests lifespan, server,
trigger: the channel nursery outlives the HTTP server. On shutdown every channel is
deleted first, so that every subscriber ends with ``Lp-Trickle-Closed`` and idle
preconnects are released; only then is hypercorn told to stop, and its
``graceful_timeout`` finds nothing left to cut.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from . import h1
from .config import Settings
from .faults import FaultPlan, load_plan
from .faults.control import FaultControl, is_loopback
from .faults.layer import FaultLayer
from .h1.admission import Admission
from .http.app import app_state, create_app
from .http.state import ServerState
from .registry import ChannelRegistry

logger = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    """The hypercorn Config for ``settings`` (one process; no read timeout)."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.include_server_header = False
    config.read_timeout = None  # would kill idle preconnects
    config.h11_max_incomplete_size = settings.max_header_bytes
    # hypercorn's default listen backlog (100) drops connections arriving in bursts
    # (hundreds of channels preconnecting at once); the kernel caps this at somaxconn.
    config.backlog = 2048
    config.accesslog = settings.access_log
    # A Logger (not "-") makes hypercorn log through logging without its own handler.
    config.errorlog = logging.getLogger("hypercorn.error")
    if settings.certfile is not None:
        config.certfile = settings.certfile
        config.keyfile = settings.keyfile
    return config


class BindError(Exception):
    """The server's address cannot be bound; the message is one line, fit for a CLI."""


def bind_sockets(settings: Settings) -> Sockets:
    """Bind and listen on ``settings``' address, before anything else starts.

    The socket is made as hypercorn makes its own (``Config.create_sockets``: address
    reuse, no Nagle, non-blocking), which on a failed bind leaves its socket to the
    garbage collector; this closes it.

    Raises:
        BindError: e.g. ``cannot bind 127.0.0.1:2939: address already in use``.
    """
    config = hypercorn_config(settings)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise BindError(f"cannot bind {config.bind[0]}: {reason}") from None
    sock.setblocking(False)
    if config.ssl_enabled:
        return Sockets(secure_sockets=[sock], insecure_sockets=[], quic_sockets=[])
    return Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])


def _close(sockets: Sockets) -> None:
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
        sock.close()


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM.

    Cancellation: the signal receiver is removed (the default handlers are back).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("shutdown signal=%s", signal.Signals(signum).name)
            return


def tune_gc() -> None:
    """Fewer, cheaper collections: the long-lived start-up objects (modules, the app,
    settings) go to the permanent generation so that full collections don't walk them,
    and the young generation is collected after 20,000 allocations instead of 700.

    The data path allocates small, short-lived objects (ASGI messages, events) at a high
    rate; with the defaults that meant frequent gen-2 sweeps over every module object
    and pauses of tens of milliseconds on the live path. The older generations keep
    their default ratios (10, 10): with 50/100 the 25-minute soak ran no full collection
    at all and RSS climbed 11 MiB on cyclic garbage of closed connections (bench/SOAK.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


@dataclass
class RunningServer:
    """A server started by :func:`open_server`.

    Attributes:
        urls: what hypercorn bound, e.g. ``["http://127.0.0.1:40123"]``.
        url: the first of them plus the base path, without a trailing slash: the
            prefix of every channel URL (``f"{server.url}/{channel}"``).
        registry: the channels, for in-process inspection or the local API.
        faults: the fault plan applied to its requests, if it was started with one
            (``open_server(..., faults=plan)``, ``faults``/``faults_control`` settings);
            None otherwise, and then no request is ever faulted.
    """

    urls: list[str]
    url: str
    registry: ChannelRegistry
    app: QuartTrio
    state: ServerState
    _stop: trio.Event
    _stopped: trio.Event
    #: The connection caps at accept (trickle-trio's own server), or None (hypercorn).
    admission: Admission | None = None
    faults: FaultPlan | None = None

    async def shutdown(self) -> None:
        """Drain every channel, then stop the HTTP server; returns once it has stopped
        (every connection closed or reset at the graceful timeout). The channels'
        nursery and the lifespan end with the ``open_server`` block.

        Cancellation: the wait is abandoned; the shutdown, once begun, goes on.
        """
        self._stop.set()
        await self._stopped.wait()


@asynccontextmanager
async def open_server(
    settings: Settings, *, sockets: Sockets | None = None, faults: FaultPlan | None = None
) -> AsyncIterator[RunningServer]:
    """Serve ``settings`` for the duration of the block; drain and stop at its end.

    ``sockets`` are listening sockets from :func:`bind_sockets` (default: bound here,
    first). They are closed when the block ends. ``faults``: a fault plan applied to
    the server's requests (:mod:`trickle_trio.faults`; default: the ``faults`` file
    setting's, an empty one with ``faults_control``, else none at all).

    Cancellation (of the block or from outside): the HTTP server is cancelled (every
    response under way is cut visibly, by a reset), the channels' nursery is cancelled
    (every channel deleted) and the sockets are closed; nothing outlives the block.

    Raises:
        BindError: the address cannot be bound (raised before anything starts).
        FaultPlanError: the ``faults`` file can't be read or holds a bad rule.
    """
    plan = faults if faults is not None else plan_of(settings)
    if sockets is None:
        sockets = bind_sockets(settings)
    try:
        async with _serving(settings, sockets, plan) as server:
            yield server
    finally:
        _close(sockets)


def plan_of(settings: Settings) -> FaultPlan | None:
    """The fault plan ``settings`` ask for: the ``faults`` file's rules, an empty plan
    for ``faults_control``, or None (no fault layer at all).

    Raises:
        FaultPlanError: the file can't be read or holds a bad rule.
    """
    if settings.faults is not None:
        return load_plan(settings.faults)
    return FaultPlan() if settings.faults_control else None


def with_faults(app: Any, plan: FaultPlan, settings: Settings) -> FaultLayer:
    """``app`` (from :func:`create_app`) behind the fault layer applying ``plan``, with
    the control route when ``settings.faults_control`` is on."""
    state = app_state(app)
    control = FaultControl(plan, settings, state.base_path) if settings.faults_control else None
    if control is not None and settings.faults_token is None and not is_loopback(settings.host):
        logger.warning(
            "fault control route refused host=%s: a non-loopback bind needs faults_token",
            settings.host,
        )
    if not settings.fast_path:
        # Said once here; a cut or drop that fires on stock hypercorn is logged as a warning.
        logger.info("faults: stock hypercorn (fast_path off) can't cut; cut and drop fail")
    return FaultLayer(app, plan, state, control=control)


@asynccontextmanager
async def _serving(
    settings: Settings, sockets: Sockets, plan: FaultPlan | None
) -> AsyncIterator[RunningServer]:
    async with trio.open_nursery() as channel_nursery:
        registry = ChannelRegistry.from_settings(channel_nursery, settings)
        await channel_nursery.start(
            partial(
                registry.run_sweeper,
                idle_timeout=settings.idle_timeout,
                sweep_interval=settings.sweep_interval,
            )
        )
        app = create_app(settings, registry)
        state = app_state(app)
        asgi: Any = app if plan is None else with_faults(app, plan, settings)
        config = hypercorn_config(settings)
        stop = trio.Event()

        async def drain_then_stop() -> None:
            await stop.wait()
            logger.info("drained channels=%d", await state.drain())

        stopped = trio.Event()
        admission = None
        async with trio.open_nursery() as server_nursery:
            if settings.fast_path:
                admission = Admission(settings.max_connections, settings.max_connections_per_client)
                registry.add_gauges(admission.gauges)
                serving: Any = partial(
                    h1.serve,
                    asgi,
                    [*sockets.insecure_sockets, *sockets.secure_sockets],
                    shutdown_trigger=drain_then_stop,
                    keep_alive_timeout=settings.keep_alive_timeout,
                    graceful_timeout=settings.graceful_timeout,
                    max_head_bytes=settings.max_header_bytes,
                    admission=admission,
                    ssl_context=_ssl_context(settings),
                )
            else:
                serving = partial(
                    worker_serve,  # hypercorn.trio.serve, with the sockets bound already
                    wrap_app(asgi, config.wsgi_max_body_size, "asgi"),
                    config,
                    sockets=sockets,
                    shutdown_trigger=drain_then_stop,
                )
            urls: list[str] = await server_nursery.start(_until_stopped, serving, stopped)
            if settings.fast_path:
                logger.info("fast path on: trickle-trio's HTTP/1.1 server on %s", " ".join(urls))
            else:
                logger.info("fast path off: stock hypercorn on %s", " ".join(urls))
            url = urls[0] + state.base_path.rstrip("/")
            server = RunningServer(
                urls, url, registry, app, state, stop, stopped, admission, faults=plan
            )
            try:
                yield server
            finally:
                stop.set()
        channel_nursery.cancel_scope.cancel()


async def _until_stopped(
    serving: Any, stopped: trio.Event, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    """Run the HTTP server; ``stopped`` is set when it has returned (or failed)."""
    try:
        await serving(task_status=task_status)
    finally:
        stopped.set()


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for trickle-trio's own server: HTTP/1.1 only (it speaks no HTTP/2)."""
    if settings.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.certfile, settings.keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def run_server(
    settings: Settings,
    *,
    sockets: Sockets | None = None,
    faults: FaultPlan | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = wait_for_signal,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (default: SIGINT/SIGTERM), then drain.

    ``task_status.started`` receives the :class:`RunningServer`. ``shutdown_trigger=None``
    serves until cancelled. ``sockets``, ``faults``: as for :func:`open_server`.

    Raises:
        BindError: the address cannot be bound.
    """
    async with open_server(settings, sockets=sockets, faults=faults) as server:
        if settings.gc_tuning:
            tune_gc()
        task_status.started(server)
        if shutdown_trigger is None:
            await trio.sleep_forever()
        await shutdown_trigger()
