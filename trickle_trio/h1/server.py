"""Serving: listening sockets, accepting in batches, TLS, the ASGI lifespan, shutdown.

Nesting, outermost first: the app's lifespan; the connections; the accept loops. On
shutdown (``shutdown_trigger`` returns) accepting stops, idle connections close, busy
ones finish their answer and close, and whatever is still under way after
``graceful_timeout`` is cancelled: a response cut there ends in a reset
(``Connection.run``), never a clean end.

Imports: trio, the stdlib and the sibling modules.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from .admission import Admission
from .connection import Connection, ServerContext
from .reactor import current_reactor

logger = logging.getLogger(__name__)

__all__ = ["ACCEPT_BATCH", "serve"]

#: Connections accepted in a row without a scheduler pass. trio's own listeners take one
#: per pass: on a busy server a burst of new connections (every channel's preconnects
#: after a restart) then waits seconds in the kernel's queue, and data on it arrives
#: late and out of order with older connections' (measured: 570 queued for ~2 s).
ACCEPT_BATCH = 64
#: Errors of accept() that mean "out of resources for now": wait, then go on.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: Longest a TLS handshake may take.
HANDSHAKE_TIMEOUT = 60.0


async def serve(
    app: Any,
    sockets: Sequence[socket.socket],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    keep_alive_timeout: float = 5.0,
    graceful_timeout: float = 5.0,
    max_head_bytes: int = 16 * 1024,
    admission: Admission | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on the listening ``sockets`` until ``shutdown_trigger``
    returns, then shut down as the module says. ``task_status.started`` gets the URLs.

    ``admission`` (default: no caps) caps the connections open at once, in all and from
    one client address: one accepted past a cap is answered and closed at once, without
    a task (:mod:`.admission`).

    Cancellation: connections are cancelled at once (responses under way are reset),
    then the lifespan's shutdown runs.
    """
    context = ServerContext(
        app=app,
        keep_alive_timeout=keep_alive_timeout,
        max_head_bytes=max_head_bytes,
        scheme="https" if ssl_context is not None else "http",
        reactor=current_reactor(),
    )
    if admission is None:
        admission = Admission()
    lifespan = _Lifespan(app)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.run)
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for sock in sockets:
                        sock.setblocking(False)
                        accepting.start_soon(
                            _accept, sock, connections, context, ssl_context, admission
                        )
                    task_status.started([_url(sock, ssl_context) for sock in sockets])
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
                context.terminated.set()
                for connection in list(context.connections):
                    connection.wake()  # an idle one closes now, a busy one after its answer
                with trio.move_on_after(graceful_timeout):
                    await context.wait_no_connections()
                # Past the graceful timeout: reset what is left (a reader that stopped
                # reading holds a write the app shields), then cancel the rest.
                for connection in list(context.connections):
                    connection.abort()
                connections.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(graceful_timeout):
                await lifespan.shutdown()
            lifespan_nursery.cancel_scope.cancel()


async def _accept(
    listener: socket.socket,
    nursery: trio.Nursery,
    context: ServerContext,
    ssl_context: ssl.SSLContext | None,
    admission: Admission,
) -> None:
    """Accept connections until cancelled: up to ACCEPT_BATCH per scheduler pass."""
    while True:
        await trio.lowlevel.wait_readable(listener)
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    logger.warning("accept failed, retrying in 0.1 s: %s", exc)
                    await trio.sleep(0.1)
                    break
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            client = admission.admit(sock, peer)
            if client is not None:
                nursery.start_soon(_connection, sock, context, ssl_context, admission, client)


async def _connection(
    sock: socket.socket,
    context: ServerContext,
    ssl_context: ssl.SSLContext | None,
    admission: Admission,
    client: str,
) -> None:
    try:
        await _serve_connection(sock, context, ssl_context)
    finally:
        admission.leave(client)


async def _serve_connection(
    sock: socket.socket, context: ServerContext, ssl_context: ssl.SSLContext | None
) -> None:
    sock.setblocking(False)
    stream: Any = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                handshake.cancel()
        if handshake.cancelled_caught:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.transport_stream.aclose()
            return
    await Connection(stream, context).run()


def _url(sock: socket.socket, ssl_context: ssl.SSLContext | None) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if ssl_context is not None else 'http'}://{host}:{port}"


class _Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after.

    An app that does not speak it (raises on the lifespan scope) is served anyway.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._to_app, self._from_server = trio.open_memory_channel[dict[str, Any]](4)
        self._complete = trio.Event()
        self._failure: str | None = None
        self._supported = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan handler; ``started`` once its startup completed.

        Raises:
            RuntimeError: the app's startup failed.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_app)
            await self._to_app.send({"type": "lifespan.startup"})
            await self._complete.wait()
            if self._failure is not None:
                raise RuntimeError(f"ASGI lifespan startup failed: {self._failure}")
            task_status.started()

    async def _run_app(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await self._app(scope, self._from_server.receive, self._send)
        except Exception:
            if not self._complete.is_set():
                self._supported = False  # an app without lifespan support
                logger.debug("the ASGI app does not speak the lifespan protocol")
            else:
                logger.exception("error in the ASGI app's lifespan")
        finally:
            self._complete.set()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.shutdown.complete"):
            self._complete.set()
        elif kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            self._failure = str(message.get("message", ""))
            self._complete.set()
        await trio.lowlevel.checkpoint()

    async def shutdown(self) -> None:
        """Run the app's shutdown and wait for it (the caller bounds the wait)."""
        if not self._supported:
            return
        self._complete = trio.Event()
        try:
            await self._to_app.send({"type": "lifespan.shutdown"})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await self._complete.wait()
