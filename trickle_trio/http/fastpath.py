"""A leaner HTTP/1.1 write path inside hypercorn, for connections serving trickle-trio.

hypercorn 0.18 turns every ASGI message into its own socket write: a GET answered with a
status line, one chunk and the end costs three ``send`` calls, and every chunk passes
through h11 (which joins the chunk's size line, payload and CRLF into a new bytes object),
a lock, a shielded cancel scope and trio's ``SocketStream``. With many subscribers that
per-write cost, not the bytes, is what limits fan-out (bench/README.md). This module
subclasses hypercorn's own classes, without editing them, so that:

* a response's head is held until the app's next body message and leaves with it, and a
  body message that ends the response carries the terminating chunk too: a GET answered
  with one chunk is one write instead of three (Go's ``net/http`` also sends the head
  with the first body write);
* body framing uses h11's data-passthrough API and the pieces leave in one
  ``os.writev``: the payload is never copied in Python (TLS streams get one join); a
  chunk in the middle of a chunked response skips the event layers altogether (framed
  here, written at once);
* the keep-alive idle timer is one task per connection whose state flips, instead of a
  task started and cancelled around every request;
* reads take no per-read cancel scope when there is no read timeout, and a socket the
  last read drained is waited on before it is read (no read failing with EAGAIN for
  every chunk of a live stream);
* a write that completes at once does not also pass through the scheduler (every
  ``YIELD_EVERY``-th does): the app yields anyway while it waits for its next chunk;
* a request body the app takes over (ASGI extension :data:`~.faststream.BODY_EXTENSION`; a segment
  POST does after its first byte) is handed to the app's callback by the connection's
  reader, with no ``http.request`` message, queue or task switch per chunk; once h11
  stands between two chunks, :class:`~trickle_trio.core.chunked.ChunkedBody` decodes the
  chunked framing in its place up to the last chunk, which goes back to h11; while such
  a body waits for its next chunk, its socket waits in the
  :class:`~trickle_trio.http.reactor.Reactor` (one task, one epoll set for all of them),
  which reads and decodes the chunk without waking the connection's task;
* chunks waiting for a reader leave as they are, several in one ``writev``, never
  joined (ASGI extension :data:`~.faststream.PARTS_EXTENSION`);
* a streaming response can be written to without waiting from another task
  (:meth:`FastTCPServer.try_write`, ASGI extension :data:`~.faststream.PUSH_EXTENSION`):
  a publisher's task writes each new chunk to its live subscribers as it appends it,
  so no subscriber task is woken per chunk; what a socket takes only in part waits in a
  backlog that the next write sends first;
* a request without a body learns that its client left through a cancel scope it
  hands over (ASGI extension :data:`~.faststream.DISCONNECT_EXTENSION`), not a task per request
  waiting in ``receive()``; the Date header is formatted once a second.

h11's private state is read in two places (the chunked reader's position, the response
writer's kind); where it is not as expected, the stock path is taken.

This module owns the connection (reads, writes, the keep-alive timer) and installs the
fast classes; the HTTP/1.1 protocol and stream classes are in
:mod:`trickle_trio.http.faststream`. Everything else (parsing, 100-continue, errors, h2,
WebSocket upgrades, shutdown) is hypercorn's code. :func:`install` points
``hypercorn.trio.run.TCPServer`` at :class:`FastTCPServer`; only apps marked with
:func:`enable` get the fast classes, every other app in the process is served by stock
hypercorn. ``install`` refuses (and says so in the log) on a hypercorn version this
module was not tested with.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hypercorn.trio.run as hypercorn_run
import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from ..core.chunked import BadChunk
from .faststream import FastH11Protocol, WriteParts
from .listener import install_for_hypercorn
from .reactor import Reactor, current_reactor

logger = logging.getLogger(__name__)

#: Bytes asked of the socket per read, as hypercorn (256 KiB measured no faster).
READ_SIZE = 64 * 1024
#: Buffers per ``writev`` (Linux refuses more than 1024).
IOV_MAX = 1024
#: At most this many writes in a row complete without a scheduler pass.
YIELD_EVERY = 16
#: hypercorn versions this module was tested with (it subclasses their internals).
TESTED_VERSIONS = ("0.18.",)

_FAST_APPS: weakref.WeakSet[Any] = weakref.WeakSet()


def enable(app: Any) -> None:
    """Serve ``app`` (the object handed to hypercorn) through the fast classes."""
    _FAST_APPS.add(app)


def install() -> bool:
    """Make hypercorn's trio worker build :class:`FastTCPServer` connections, and
    accept connections in batches (:mod:`trickle_trio.http.listener`).

    Idempotent. Returns False, and leaves hypercorn alone, when the installed hypercorn
    is not one this module was tested with.
    """
    if getattr(hypercorn_run, "TCPServer", None) is FastTCPServer:
        return True
    version = _hypercorn_version()
    if not version.startswith(TESTED_VERSIONS):
        logger.warning("fast path off: untested hypercorn version=%s", version)
        return False
    setattr(hypercorn_run, "TCPServer", FastTCPServer)  # ruff: ignore[set-attr-with-constant] (not re-exported)
    install_for_hypercorn()
    logger.info("fast path on hypercorn=%s", version)
    return True


def _hypercorn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hypercorn")
    except PackageNotFoundError:  # pragma: no cover - hypercorn is a dependency
        return "unknown"


def _is_fast(app: Any) -> bool:
    # hypercorn wraps the app it was given (ASGIWrapper.app).
    return getattr(app, "app", app) in _FAST_APPS


# -- the connection ----------------------------------------------------------------------


class FastTCPServer(TCPServer):
    """hypercorn's per-connection server; fast protocol and writes for enabled apps.

    Writes are shielded from cancellation, as hypercorn's are: a response is never cut
    in the middle of a write. A client that stops reading therefore holds the writing
    task until the connection closes (hypercorn behaves the same).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast = _is_fast(self.app)
        self._idle = True
        self._idle_deadline = 0.0
        self._idle_wait = trio.CancelScope()
        self._watcher = trio.CancelScope()
        self._drained = False  # the last read emptied the socket
        self._unyielded = 0  # writes since the last scheduler pass in _write
        # What try_write could not write at once; the next _write sends it first.
        self._backlog: list[bytes | memoryview] = []
        # Set while this connection's socket waits in the reactor (see _read_data).
        self._reactor: Reactor | None = None
        self._handed: bytes | None = None  # what _read_ready leaves for the task
        self._bad_body = False
        self._closing = False  # _close began: never wait in the reactor again

    async def run(self) -> None:
        if not self._fast:
            await super().run()
            return
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            sock = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # not TLS
            alpn_protocol = "http/1.1"
            sock = self.stream.socket
            ssl = False
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = FastProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),  # as hypercorn: a copy per connection
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                    write=self._write,
                    try_write=None if ssl else self.try_write,
                )
                await self.protocol.initiate()
                self._set_idle(idle=True)  # as hypercorn: idle until the first request
                task_group.spawn(self._watch_idle)
                try:
                    await self._read_data()
                finally:
                    self._watcher.cancel()
                    if trio.current_effective_deadline() == -math.inf:
                        # Cancelled from outside: hypercorn's graceful timeout ran out
                        # with a response still under way (a reader that stopped
                        # reading). Its writes are shielded and would wait for the
                        # client for ever: reset the connection instead, so that the
                        # cut is visible and nothing waits.
                        self._abort()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if not self._fast:
            await super().protocol_send(event)
        elif type(event) is WriteParts:
            await self._write(event.parts)
        elif type(event) is RawData:
            await self._write((event.data,))
        elif type(event) is Updated:
            self._set_idle(idle=event.idle)
        else:
            await super().protocol_send(event)

    def try_write(self, parts: Sequence[bytes]) -> int:
        """Write ``parts`` now, without waiting, if no other write is under way.

        Returns 0 when nothing was written (a write is in progress or backlogged, the
        socket is full, closed or broken: the caller then sends through the awaited
        path, which also finds out about a broken connection), 1 when everything was
        written, 2 when only a part was: the rest waits in a backlog that the next
        write sends first (``_write(())`` sends only that). Plain sockets only. Never a
        checkpoint.
        """
        if self._backlog or self.send_lock.locked():
            return 0
        fd = self.stream.socket.fileno()
        if fd < 0:
            return 0
        try:
            written = os.writev(fd, parts)
        except OSError:  # BlockingIOError included: nothing was written
            return 0
        for index, part in enumerate(parts):
            if written < len(part):
                self._backlog = [memoryview(part)[written:], *parts[index + 1 :]]
                return 2
            written -= len(part)
        return 1

    async def _write(self, parts: Sequence[bytes]) -> None:
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                await lock.acquire()
        try:
            pending: Sequence[bytes | memoryview] = parts
            if self._backlog:
                pending = [*self._backlog, *parts]
                self._backlog = []
            if not await _send_parts(self.stream, pending):
                self._unyielded = 0
            elif self._unyielded < YIELD_EVERY:
                # Written without blocking and without a scheduler pass: the app yields
                # anyway (a subscriber waits for its next chunk), so only every
                # YIELD_EVERY-th such write yields, for fairness to other tasks.
                self._unyielded += 1
            else:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
        finally:
            lock.release()

    async def _read_data(self) -> None:
        plain = hasattr(self.stream, "socket")
        receive = self._receive if plain else self._receive_tls
        timeout = self.config.read_timeout
        reactor = current_reactor() if plain and timeout is None else None
        while True:
            h11_protocol: Any = self.protocol.protocol  # hypercorn may switch it (h2c)
            try:
                if (
                    reactor is not None
                    and self._drained
                    and type(h11_protocol) is FastH11Protocol
                    and h11_protocol.decoding_body
                ):
                    # A taken-over body between two chunks: wait in the reactor, which
                    # decodes the chunks that follow without waking this task.
                    data = await self._wait_in_reactor(reactor)
                    if data is None:
                        if self._bad_body:
                            self._bad_body = False
                            await h11_protocol.body_failed()
                        continue
                elif timeout is None:
                    data = await receive()
                else:
                    with trio.fail_after(timeout):
                        data = await receive()
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(data if type(data) is bytes else bytes(data)))
            if not data:
                break
        await self.protocol.handle(Closed())

    async def _wait_in_reactor(self, reactor: Reactor) -> bytes | None:
        """Let the reactor read the socket (``_read_ready``) until it hands back bytes
        for this task (None: nothing to handle; the socket may have been closed).

        Cancellation: the socket leaves the reactor; nothing was lost.
        """
        sock: Any = self.stream.socket
        fd = sock.fileno()
        if fd < 0 or self._closing:
            raise trio.ClosedResourceError("connection closed")
        self._reactor = reactor
        try:
            await reactor.wait(fd, self._read_ready)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        finally:
            self._reactor = None
        data, self._handed = self._handed, None
        return data

    def _read_ready(self) -> bool:
        """The reactor's callback: read once and decode; True to stay in the reactor.

        Hands back to the task (False) a read that is not one more piece of the body
        between chunks: end of stream, a full read (a burst: the task reads on by
        itself), the bytes after the body's last chunk, or bad framing.
        """
        fd = self.stream.socket.fileno()
        if fd < 0:
            return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        self._drained = len(data) < READ_SIZE
        protocol: Any = self.protocol.protocol
        if (
            not data
            or not self._drained
            or type(protocol) is not FastH11Protocol
            or not protocol.decoding_body
        ):
            self._handed = data
            return False
        try:
            rest = protocol.feed_body(data)
        except BadChunk:
            self._bad_body = True
            return False
        if rest is None:
            return True
        self._handed = rest
        return False

    def _abort(self) -> None:  # sync on purpose
        """Reset the connection now (RST: no FIN, unsent bytes dropped): every write or
        wait on the socket fails at once, and the client sees an error, never a clean end
        of a response that was cut."""
        self._closing = True
        sock: Any = self.stream.socket if hasattr(self.stream, "socket") else None
        if sock is None:  # TLS: the transport's socket
            sock = getattr(getattr(self.stream, "transport_stream", None), "socket", None)
        if sock is None or sock.fileno() < 0:
            return
        reactor = self._reactor
        if reactor is not None:
            reactor.release(sock.fileno())
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # trio wakes every task waiting on it (ClosedResourceError)
        logger.warning("connection reset at shutdown: a response was still under way")

    async def _close(self) -> None:
        # Wake a reader waiting in the reactor before its socket goes (a closed fd leaves
        # the epoll set silently), and keep it from going back there meanwhile.
        self._closing = True
        reactor = self._reactor
        if reactor is not None:
            reactor.release(self.stream.socket.fileno())
        await super()._close()

    async def _receive_tls(self) -> bytes:
        return bytes(await self.stream.receive_some(READ_SIZE))

    async def _receive(self) -> bytes:
        """The next bytes from a plain socket (``b""`` at end of stream).

        A stream that sends a little at a time (a live publisher) left the socket
        drained by the last read: then wait for readiness first, rather than read,
        fail with EAGAIN, wait and read again as ``receive_some`` does. One scheduler
        pass per read either way. Cancellation: while waiting, nothing was read.
        """
        sock: Any = self.stream.socket
        wait = self._drained
        while True:
            if sock.fileno() < 0:  # closed by hypercorn (an error answer, shutdown)
                raise trio.ClosedResourceError("connection closed")
            if wait:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("connection closed")
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                wait = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            self._drained = len(data) < READ_SIZE
            return data

    # -- keep-alive idle timeout: one watcher task per connection -------------------------

    def _set_idle(self, *, idle: bool) -> None:
        # Called twice per request: only fields change, the watcher reads them when it
        # wakes (a wake-up per request cost more than the rest of the timer).
        self._idle = idle
        if idle:
            self._idle_deadline = trio.current_time() + self.config.keep_alive_timeout
            if self.context.terminated.is_set():
                self._idle_wait.cancel()  # shutting down: close now that it is idle

    async def _watch_idle(self) -> None:
        """Close the connection when idle past the keep-alive timeout, or at shutdown.

        A busy connection (a request in flight) is never closed here, as in hypercorn;
        while busy the watcher wakes once per keep-alive timeout to look again.
        Cancellation: the connection's end cancels ``self._watcher``; nothing is closed then.
        """
        terminated = self.context.terminated
        timeout = self.config.keep_alive_timeout
        with self._watcher:
            while True:
                now = trio.current_time()
                if self._idle and (terminated.is_set() or now >= self._idle_deadline):
                    break
                if terminated.is_set():  # busy while shutting down: _set_idle wakes us
                    with trio.CancelScope() as self._idle_wait:
                        await trio.sleep_forever()
                    continue
                wake_at = self._idle_deadline if self._idle else now + timeout
                with trio.move_on_at(wake_at) as self._idle_wait:
                    await terminated.wait()
        if self._watcher.cancelled_caught:
            return
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


async def _send_parts(stream: Any, parts: Sequence[bytes | memoryview]) -> bool:
    """Write ``parts`` whole; True if no wait was needed. Shielded while waiting.

    A plain socket gets ``os.writev`` (no join); a TLS stream gets one joined write.
    Raises BrokenResourceError when the peer is gone, ClosedResourceError when the
    stream was closed under us.
    """
    sock = getattr(stream, "socket", None)
    if sock is None or not hasattr(os, "writev"):
        with trio.CancelScope(shield=True):
            await stream.send_all(b"".join(parts))
        return False
    pending: list[bytes | memoryview] = [part for part in parts if part]
    immediate = True
    while pending:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("connection closed")
        try:
            written = os.writev(fd, pending if len(pending) <= IOV_MAX else pending[:IOV_MAX])
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        while written:
            head = pending[0]
            if written >= len(head):
                written -= len(head)
                del pending[0]
            else:
                pending[0] = memoryview(head)[written:]
                written = 0
        if pending:
            immediate = False
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("connection closed")
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_writable(sock)
    return immediate


# -- the protocol ------------------------------------------------------------------------


class FastProtocolWrapper(ProtocolWrapper):
    """hypercorn's ProtocolWrapper, with :class:`FastH11Protocol` for HTTP/1.1."""

    def __init__(
        self,
        app: Any,
        config: Any,
        context: Any,
        task_group: Any,
        state: Any,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Any,
        alpn_protocol: str | None = None,
        *,
        write: Callable[[Sequence[bytes]], Awaitable[None]] | None = None,
        try_write: Callable[[Sequence[bytes]], int] | None = None,
    ) -> None:
        if alpn_protocol == "h2":
            super().__init__(
                app, config, context, task_group, state, ssl, client, server, send, alpn_protocol
            )
            return
        self.app = app
        self.config = config
        self.context = context
        self.task_group = task_group
        self.ssl = ssl
        self.client = client
        self.server = server
        self.send = send
        self.state = state
        self.protocol = FastH11Protocol(
            app, config, context, task_group, state, ssl, client, server, send
        )
        self.protocol.write_parts = write
        self.protocol.try_write = try_write
