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
    """Return on the first SIGINT or SIGTERM."""
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
    settings: Settings, *, sockets: Sockets | None = None
) -> AsyncIterator[RunningServer]:
    """Serve ``settings`` for the duration of the block; drain and stop at its end.

    ``sockets`` are listening sockets from :func:`bind_sockets` (default: bound here,
    first). They are closed when the block ends.

    Raises:
        BindError: the address cannot be bound (raised before anything starts).
    """
    if sockets is None:
        sockets = bind_sockets(settings)
    try:
        async with _serving(settings, sockets) as server:
            yield server
    finally:
        _close(sockets)


@asynccontextmanager
async def _serving(settings: Settings, sockets: Sockets) -> AsyncIterator[RunningServer]:
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
                    app,
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
                    wrap_app(app, config.wsgi_max_body_size, "asgi"),
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
            server = RunningServer(urls, url, registry, app, state, stop, stopped, admission)
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
    shutdown_trigger: Callable[[], Awaitable[None]] | None = wait_for_signal,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (default: SIGINT/SIGTERM), then drain.

    ``task_status.started`` receives the :class:`RunningServer`. ``shutdown_trigger=None``
    serves until cancelled. ``sockets``: as for :func:`open_server`.

    Raises:
        BindError: the address cannot be bound.
    """
    async with open_server(settings, sockets=sockets) as server:
        if settings.gc_tuning:
            tune_gc()
        task_status.started(server)
        if shutdown_trigger is None:
            await trio.sleep_forever()
        await shutdown_trigger()
