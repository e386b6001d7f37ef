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
* a request body the app takes over (ASGI extension :data:`BODY_EXTENSION`; a segment
  POST does after its first byte) is handed to the app's callback by the connection's
  reader, with no ``http.request`` message, queue or task switch per chunk; once h11
  stands between two chunks, :class:`~trickle_trio.core.chunked.ChunkedBody` decodes the
  chunked framing in its place up to the last chunk, which goes back to h11;
* a request without a body learns that its client left through a cancel scope it
  hands over (ASGI extension :data:`DISCONNECT_EXTENSION`), not a task per request
  waiting in ``receive()``; the Date header is formatted once a second.

h11's private state is read in two places (the chunked reader's position, the response
writer's kind); where it is not as expected, the stock path is taken.

Everything else (parsing, 100-continue, errors, h2, WebSocket upgrades, shutdown) is
hypercorn's code. :func:`install` points ``hypercorn.trio.run.TCPServer`` at
:class:`FastTCPServer`; only apps marked with :func:`enable` get the fast classes, every
other app in the process is served by stock hypercorn. ``install`` refuses (and says so
in the log) on a hypercorn version this module was not tested with.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import hypercorn.trio.run as hypercorn_run
import trio
from h11._readers import ChunkedReader
from h11._writers import ChunkedWriter
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Request as StreamRequest
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import build_and_validate_headers, parse_socket_addr, suppress_body

from ..core.chunked import BadChunk, ChunkedBody

logger = logging.getLogger(__name__)

#: Bytes asked of the socket per read, as hypercorn (256 KiB measured no faster).
READ_SIZE = 64 * 1024
#: At most this many writes in a row complete without a scheduler pass.
YIELD_EVERY = 16
#: ASGI scope extension of a POST: ``{"take_body": f}``; ``f(sink)`` makes the server call
#: ``sink(chunk)`` (synchronously, from the connection's reader) for the rest of the body
#: instead of queueing ``http.request`` messages, and returns True; or returns False
#: (nothing changes) while body messages wait in the app's queue, so that no chunk can
#: overtake another. The end of the body and a disconnect still come through
#: ``receive()``. Chunks that arrive after the stream closed are dropped.
BODY_EXTENSION = "trickle.take_body"
#: ASGI scope extension of a request without a body: ``{"cancel_on_close": f}``;
#: ``f(cancel_scope)`` has the scope cancelled when the client goes away (instead of a
#: task waiting in ``receive()`` for ``http.disconnect``).
DISCONNECT_EXTENSION = "trickle.cancel_on_close"
#: hypercorn versions this module was tested with (it subclasses their internals).
TESTED_VERSIONS = ("0.18.",)

_FAST_APPS: weakref.WeakSet[Any] = weakref.WeakSet()


def enable(app: Any) -> None:
    """Serve ``app`` (the object handed to hypercorn) through the fast classes."""
    _FAST_APPS.add(app)


def install() -> bool:
    """Make hypercorn's trio worker build :class:`FastTCPServer` connections.

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


@dataclass(frozen=True)
class WriteParts(Event):
    """Bytes to write to the connection in one go, in order (TCP-server level event)."""

    parts: Sequence[bytes]


@dataclass(frozen=True)
class Batch(StreamEvent):
    """Stream events produced by one ASGI message, to be written together."""

    events: tuple[StreamEvent, ...]


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
                )
                await self.protocol.initiate()
                self._set_idle(idle=True)  # as hypercorn: idle until the first request
                task_group.spawn(self._watch_idle)
                try:
                    await self._read_data()
                finally:
                    self._watcher.cancel()
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

    async def _write(self, parts: Sequence[bytes]) -> None:
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                await lock.acquire()
        try:
            if not await _send_parts(self.stream, parts):
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
        receive = self._receive if hasattr(self.stream, "socket") else self._receive_tls
        timeout = self.config.read_timeout
        while True:
            try:
                if timeout is None:
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


async def _send_parts(stream: Any, parts: Sequence[bytes]) -> bool:
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
            written = os.writev(fd, pending)
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


class FastH11Protocol(H11Protocol):
    """hypercorn's H11Protocol, writing each :class:`Batch` in one go without copies,
    and decoding a taken-over chunked body itself (see :data:`BODY_EXTENSION`)."""

    _body: ChunkedBody | None = None
    #: The connection's writer (``FastTCPServer._write``), for :meth:`send_chunk`.
    write_parts: Callable[[Sequence[bytes]], Awaitable[None]] | None = None

    async def send_chunk(self, data: bytes) -> None:
        """Send ``data`` (not empty) as the next chunk of the response being sent.

        With h11 in the middle of a chunked response body (its usual state for a
        streaming GET), the chunk is framed here and written at once: h11 keeps no
        state for a chunk of body, so there is nothing to tell it. Otherwise (HTTP/1.0,
        Content-Length, an error state) it goes through h11 like any other event.
        """
        connection = self.connection
        write = self.write_parts
        if (
            write is not None
            and connection.our_state is h11.SEND_BODY
            and type(getattr(connection, "_writer", None)) is ChunkedWriter
        ):
            await write((b"%x\r\n" % len(data), data, b"\r\n"))
            return
        await self.stream_send(Batch(STREAM_ID, (Body(STREAM_ID, data),)))

    async def handle(self, event: Event) -> None:
        if type(event) is RawData:
            body = self._body
            if body is None and self._can_take_body():
                body = self._body = ChunkedBody(self.config.h11_max_incomplete_size)
            if body is not None:
                try:
                    rest = body.feed(event.data, self._deliver)
                except BadChunk:
                    self._body = None
                    # As hypercorn answers h11's RemoteProtocolError.
                    if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                        await self._send_error_response(400)
                    await self.send(Closed())
                    return
                if rest is None:
                    return
                self._body = None  # the last chunk: h11 reads the rest
                event = RawData(data=rest)
        await super().handle(event)

    def _can_take_body(self) -> bool:
        stream = self.stream
        if type(stream) is not FastHTTPStream or stream.sink is None:
            return False
        connection = self.connection
        return (
            type(connection) is h11.Connection
            and connection.their_state is h11.SEND_BODY
            and not connection.they_are_waiting_for_100_continue
            and _between_chunks(connection)
        )

    def _deliver(self, data: bytes) -> None:
        stream = self.stream
        if type(stream) is FastHTTPStream:
            stream.deliver(data)

    async def stream_send(self, event: StreamEvent) -> None:
        if type(event) is not Batch:
            await super().stream_send(event)
            return
        connection = self.connection
        assert isinstance(connection, h11.Connection)  # a WebSocket has no HTTPStream
        parts: list[bytes] = []
        for item in event.events:
            h11_event: Any
            if type(item) is Body:
                h11_event = h11.Data(data=item.data)
            elif type(item) is EndBody:
                h11_event = h11.EndOfMessage()
            else:
                assert type(item) is Response
                headers = [*item.headers, *_response_headers(self.config)]
                if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                    headers.append((b"connection", b"close"))
                h11_event = h11.Response(headers=headers, status_code=item.status_code)
            try:
                data = connection.send_with_data_passthrough(h11_event)
            except h11.LocalProtocolError:
                # As hypercorn: a client that broke its own request gets nothing more.
                if connection.their_state != h11.ERROR:
                    raise
                break
            if data:
                parts.extend(data)
        if parts:
            await self.send(WriteParts(parts))

    async def _create_stream(self, request: h11.Request) -> None:
        if _is_upgrade(request):
            await super()._create_stream(request)
            return
        self.stream = FastHTTPStream(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        self.stream.send_chunk = self.send_chunk
        if self.config.h11_pass_raw_headers:
            headers = request.headers.raw_items()
        else:
            headers = list(request.headers)
        await self.stream.handle(
            StreamRequest(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()


def _between_chunks(connection: h11.Connection) -> bool:
    """True when h11 reads a chunked body, stands between two chunks, holds no bytes.

    Reads h11's private reader state (h11 0.16); if that is not there, False: the body
    then stays with h11 (still handed to the sink, only not decoded here).
    """
    reader = getattr(connection, "_reader", None)
    return (
        type(reader) is ChunkedReader
        and getattr(reader, "_bytes_in_chunk", None) == 0
        and getattr(reader, "_bytes_to_discard", None) == b""
        and getattr(reader, "_reading_trailer", None) is False
        and not connection.trailing_data[0]
    )


_cached_headers: tuple[Any, int, list[tuple[bytes, bytes]]] | None = None


def _response_headers(config: Any) -> list[tuple[bytes, bytes]]:
    """``config.response_headers("h11")``, rebuilt once a second (its Date header)."""
    global _cached_headers
    second = int(time.time())
    cached = _cached_headers
    if cached is None or cached[0] is not config or cached[1] != second:
        cached = _cached_headers = (config, second, config.response_headers("h11"))
    return cached[2]


def _is_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" or (name == b"connection" and b"upgrade" in value.lower()):
            return True
    return False


class FastHTTPStream(HTTPStream):
    """hypercorn's HTTPStream, sending the head and end of a response with its body.

    ``http.response.start`` (status >= 200) is held; the next ``http.response.body``
    sends head, body and (when it is the last) the end as one :class:`Batch`. Any other
    message, or the app finishing, sends a held head first and then goes to hypercorn.
    """

    _held: Response | None = None
    _bare = False  # a response without a body (HEAD, 204, 304)
    #: Writes one chunk of a response body in progress (set by FastH11Protocol).
    send_chunk: Callable[[bytes], Awaitable[None]] | None = None
    #: Where the body goes once the app took it over (``BODY_EXTENSION``).
    sink: Callable[[bytes], None] | None = None
    #: Cancelled when the client goes away (``DISCONNECT_EXTENSION``).
    _on_close: trio.CancelScope | None = None

    async def handle(self, event: StreamEvent) -> None:
        if type(event) is Body and self.sink is not None:
            self.deliver(event.data if type(event.data) is bytes else bytes(event.data))
            return
        await super().handle(event)
        if type(event) is StreamRequest:
            # The scope exists and the app has not run yet (spawning does not yield).
            if self.closed:
                return
            if event.method == "POST":
                self.scope["extensions"][BODY_EXTENSION] = {"take_body": self._take_body}
            elif _bodyless(event):
                self.scope["extensions"][DISCONNECT_EXTENSION] = {
                    "cancel_on_close": self._cancel_on_close
                }
        elif type(event) is StreamClosed:
            # Not when the app ended the response itself: then this runs inside the app's
            # own send, and a cancel would land in hypercorn's connection recycling.
            if self._on_close is not None and self.state != ASGIHTTPState.CLOSED:
                self._on_close.cancel()
            # The extensions refer back to this stream, and the sink to a segment: break
            # the cycle now, or a segment would wait for the cycle collector.
            extensions = self.scope["extensions"]
            extensions.pop(BODY_EXTENSION, None)
            extensions.pop(DISCONNECT_EXTENSION, None)
            self.sink = None
            self._on_close = None

    def deliver(self, data: bytes) -> None:
        """Hand a chunk of the request body to the app's sink (dropped once closed)."""
        sink = self.sink
        if sink is not None and not self.closed:
            sink(data)

    def _take_body(self, sink: Callable[[bytes], None]) -> bool:
        queue = getattr(self.app_put, "__self__", None)
        if self.closed or not isinstance(queue, trio.MemorySendChannel):
            return False
        if queue.statistics().current_buffer_used:
            return False
        self.sink = sink
        return True

    def _cancel_on_close(self, scope: trio.CancelScope) -> None:
        self._on_close = scope
        if self.closed:
            scope.cancel()

    async def app_send(self, message: Any) -> None:
        if message is not None:
            kind = message["type"]
            if kind == "http.response.body" and self.state == ASGIHTTPState.RESPONSE:
                # A chunk in the middle of a streaming response: straight to the writer.
                if self._held is None and message.get("more_body", False) and not self._bare:
                    body = message.get("body", b"")
                    if body and not self.closed and self.send_chunk is not None:
                        await self.send_chunk(body if type(body) is bytes else bytes(body))
                        return
                await self._send_body(message)
                return
            if (
                kind == "http.response.start"
                and self.state == ASGIHTTPState.REQUEST
                and int(message["status"]) >= 200
            ):
                self.response = message
                self._bare = suppress_body(self.scope["method"], int(message["status"]))
                self._held = Response(
                    stream_id=self.stream_id,
                    headers=build_and_validate_headers(message.get("headers", [])),
                    status_code=int(message["status"]),
                )
                self.state = ASGIHTTPState.RESPONSE
                return
        if self._held is not None:
            held, self._held = self._held, None
            await self.send(held)
        await super().app_send(message)

    async def _send_body(self, message: Any) -> None:
        events: list[StreamEvent] = []
        if self._held is not None:
            events.append(self._held)
            self._held = None
        body = message.get("body", b"")
        if body and not suppress_body(self.scope["method"], int(self.response["status"])):
            events.append(Body(self.stream_id, body if type(body) is bytes else bytes(body)))
        more_body = message.get("more_body", False)
        trailers = bool(self.response.get("trailers", False))
        if not more_body and not trailers:
            events.append(EndBody(self.stream_id))
        if events:
            await self.send(Batch(self.stream_id, tuple(events)))
        if more_body:
            return
        if trailers:
            self.state = ASGIHTTPState.TRAILERS
            return
        self.state = ASGIHTTPState.CLOSED
        await self.config.log.access(self.scope, self.response, _elapsed(self))
        await self.send(StreamClosed(stream_id=self.stream_id))


def _bodyless(request: StreamRequest) -> bool:
    """True if the request can carry no body (no Content-Length or Transfer-Encoding)."""
    for name, value in request.headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (lowered == b"content-length" and value != b"0"):
            return False
    return True


def _elapsed(stream: HTTPStream) -> float:
    return time.time() - stream.start_time
