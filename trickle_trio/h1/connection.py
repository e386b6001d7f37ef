"""One HTTP/1.1 connection: its requests, each answered by the ASGI app in this task.

Rules:
1. One task per connection runs the app for one request after another, inline: no task
   and no queue per request. The socket is read elsewhere: by the reactor (plain sockets
   on Linux, :mod:`.reactor`) or by one reader task (TLS, or no epoll), which parse and
   hand over what they complete (a head, body bytes, the end of a body, the client
   gone) and wake this task only when it waits for that.
2. Writes (the head, the framing, the backlog of pushes) are :mod:`.output`'s.
3. A response that can't be finished (the app failed or was cancelled mid-body, the
   server is stopping past its graceful timeout) is never ended cleanly: the connection
   is reset, so the client sees an error, not a truncated body.
4. A connection is kept for another request only if both sides said so, the request's
   body was read to its end and the server is not stopping.

Imports: trio, the stdlib, ``.parser``, ``.output``, ``.reactor`` and the extension names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import trio

from ..http.extensions import (
    ABORT_EXTENSION,
    BODY_EXTENSION,
    CUT_EXTENSION,
    DISCONNECT_EXTENSION,
    PARTS_EXTENSION,
    PUSH_EXTENSION,
)
from .output import Output
from .parser import BadRequest, RequestHead, RequestParser
from .reactor import Reactor

logger = logging.getLogger(__name__)

__all__ = ["Connection", "ServerContext"]

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: Body bytes held for an app that does not read them before reading stops.
MAX_BUFFERED = 256 * 1024
#: Requests parsed ahead of the one being answered (pipelining) before reading stops.
MAX_PIPELINED = 16


@dataclass
class ServerContext:
    """What every connection of one server shares."""

    app: Any
    keep_alive_timeout: float
    max_head_bytes: int
    scheme: str = "http"
    #: Set when the server stops: idle connections close, busy ones after their answer.
    terminated: trio.Event = field(default_factory=trio.Event)
    reactor: Reactor | None = None
    #: Connections open now (the server resets the ones left at the graceful timeout).
    connections: set[Connection] = field(default_factory=set)
    _none_left: trio.Event | None = None

    async def wait_no_connections(self) -> None:
        """Wait until no connection is open.

        Cancellation: only the wait ends; the connections are untouched.
        """
        while self.connections:
            if self._none_left is None:
                self._none_left = trio.Event()
            await self._none_left.wait()

    def forget(self, connection: Connection) -> None:  # sync on purpose
        self.connections.discard(connection)
        if not self.connections and self._none_left is not None:
            self._none_left.set()
            self._none_left = None


class _Request:
    """A request as parsed so far: its head, body bytes not yet taken, its end."""

    __slots__ = ("buffered", "chunks", "continued", "end_given", "ended", "head", "sink")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = not head.has_body
        self.end_given = False  # receive() returned more_body=False
        self.sink: Callable[[bytes], None] | None = None
        self.continued = False  # 100 Continue sent (or not needed)


class Connection:
    """Serves one client connection; see the module's rules. :meth:`run` is its task."""

    def __init__(self, stream: Any, context: ServerContext) -> None:
        self.stream = stream
        self.context = context
        self._sock: Any = getattr(stream, "socket", None)  # None for TLS
        self._client, self._server = _addresses(
            self._sock if self._sock is not None else _tls_socket(stream)
        )
        self._parser = RequestParser(self, max_head_bytes=context.max_head_bytes)
        self._incoming: deque[_Request] = deque()  # parsed, not yet answered
        self._parsing: _Request | None = None  # the request whose bytes come in now
        self._current: _Request | None = None  # the request being answered
        self._eof = False  # the client closed or reset its side
        self._wakeup: trio.Event | None = None
        self._reading = False  # watched by the reactor / the reader may read
        self._resume_reader: trio.Event | None = None
        self._on_close: trio.CancelScope | None = None
        self._out = Output(stream, self._sock, self._gone)

    # -- the task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the connection ends.

        Cancellation (the server's graceful timeout): a response under way is cut by a
        reset; the socket is closed either way.
        """
        context = self.context
        context.connections.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._start_reading(nursery)
                try:
                    while await self._serve_next():
                        pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            context.forget(self)
            self._stop_reading()
            self._parser.close()
            self._incoming.clear()
            self._parsing = None
            out = self._out
            if out.broken or (out.started and not out.ended):
                self.abort()
            try:
                await out.close(client_gone=self._eof)
            finally:
                out.detach()  # its callback into this connection: the cycle goes now

    async def _serve_next(self) -> bool:
        """Wait for a request (at most the keep-alive timeout) and answer it; False when
        the connection is to be closed."""
        context = self.context
        with trio.move_on_after(context.keep_alive_timeout):
            while not self._incoming:
                if self._eof or self._parser.failed is not None or self._out.broken:
                    break
                if context.terminated.is_set() and not self._parser.in_head:
                    return False
                await self._wait()
        if not self._incoming:
            failed = self._parser.failed
            if failed is not None and not self._out.broken:
                await self._out.answer_error(failed.status, failed.reason)
            return False
        request = self._incoming.popleft()
        self._resume_reading()
        return await self._serve(request)

    async def _serve(self, request: _Request) -> bool:
        head = request.head
        self._current = request
        out = self._out
        out.begin(close_after=not head.keep_alive)
        if not head.expect_continue:
            request.continued = True
        try:
            scope = self._scope(head)
        except UnicodeDecodeError:
            await out.answer_error(400, "Bad Request")
            return False
        try:
            await self.context.app(scope, self._receive, self._send)
        except Exception:
            logger.exception("error in the ASGI app path=%s", scope["path"])
            if not out.started and not out.broken:
                await out.answer_error(500, "Internal Server Error")
                return False
        finally:
            self._current = None
            self._on_close = None
            request.sink = None
        if not out.ended:
            if out.started or out.broken:
                return False  # cut: run() resets the connection
            failed = self._parser.failed  # the app gave up on a body that went bad
            if failed is not None:
                await out.answer_error(failed.status, failed.reason)
            else:
                await out.answer_error(500, "Internal Server Error")
            return False
        return (
            not out.close_after
            and request.ended
            and not self._eof
            and not out.broken
            and not self.context.terminated.is_set()
        )

    def _scope(self, head: RequestHead) -> dict[str, Any]:
        raw_path, _, query = head.target.partition(b"?")
        extensions: dict[str, Any] = {
            ABORT_EXTENSION: {"abort": self.abort},
            CUT_EXTENSION: {"cut": self.cut},
        }
        if head.has_body:
            extensions[BODY_EXTENSION] = {"take_body": self._take_body}
        else:
            extensions[DISCONNECT_EXTENSION] = {"cancel_on_close": self._cancel_on_close}
            extensions[PARTS_EXTENSION] = {"send": self._out.send_parts}
            if self._sock is not None:
                extensions[PUSH_EXTENSION] = {
                    "try_send": self._out.try_push,
                    "flush": self._out.flush,
                }
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version,
            "method": head.method,
            "scheme": self.context.scheme,
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": head.headers,
            "client": self._client,
            "server": self._server,
            "extensions": extensions,
        }

    # -- waking ------------------------------------------------------------------------

    async def _wait(self) -> None:
        """Wait for the next thing the readers hand over (or :meth:`wake`)."""
        event = self._wakeup
        if event is None:
            event = self._wakeup = trio.Event()
        await event.wait()

    def wake(self) -> None:  # sync on purpose
        """Make the connection look at its state again (the server is stopping)."""
        self._wake()

    def _wake(self) -> None:
        event = self._wakeup
        if event is not None:
            self._wakeup = None
            event.set()

    # -- parser events (sync: called by whatever reads) ---------------------------------

    def on_head(self, head: RequestHead) -> None:
        request = _Request(head)
        self._parsing = request
        self._incoming.append(request)
        self._wake()

    def on_body(self, data: bytes) -> None:
        request = self._parsing
        if request is None or request.end_given:
            return
        sink = request.sink
        if sink is not None:
            sink(data)
            return
        request.chunks.append(data)
        request.buffered += len(data)
        if request is self._current:
            self._wake()

    def on_end(self) -> None:
        request = self._parsing
        if request is not None:
            request.ended = True
            self._parsing = None
            if request is self._current:
                self._wake()

    def _gone(self) -> None:
        """The client closed its side (or the connection broke): tell whoever listens."""
        self._eof = True
        scope = self._on_close
        if scope is not None:
            scope.cancel()
        self._wake()

    # -- reading -----------------------------------------------------------------------

    def _start_reading(self, nursery: trio.Nursery) -> None:
        reactor = self.context.reactor
        if self._sock is not None and reactor is not None:
            self._reading = True
            reactor.watch(self._sock.fileno(), self._on_readable)
        else:
            self._reading = True
            nursery.start_soon(self._read_in_task)

    def _stop_reading(self) -> None:
        self._reading = False
        reactor = self.context.reactor
        if self._sock is not None and reactor is not None and self._sock.fileno() >= 0:
            reactor.unwatch(self._sock.fileno())

    def _too_much_waiting(self) -> bool:
        parsing = self._parsing
        return len(self._incoming) > MAX_PIPELINED or (
            parsing is not None and parsing.sink is None and parsing.buffered > MAX_BUFFERED
        )

    def _resume_reading(self) -> None:
        if self._reading or self._eof or self._parser.failed is not None:
            return
        if self._too_much_waiting():
            return
        self._reading = True
        reactor = self.context.reactor
        if self._sock is not None and reactor is not None:
            if self._sock.fileno() >= 0:
                reactor.watch(self._sock.fileno(), self._on_readable)
        elif self._resume_reader is not None:
            self._resume_reader.set()

    def _on_readable(self) -> bool:
        """The reactor's callback: read once and parse; False to stop being watched."""
        fd = self._sock.fileno()
        if fd < 0:
            self._reading = False
            return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        keep = self._take_bytes(data)
        if not keep:
            self._reading = False
        return keep

    async def _read_in_task(self) -> None:
        """The reader for TLS connections (and where there is no reactor)."""
        while True:
            if not self._reading:
                self._resume_reader = trio.Event()
                await self._resume_reader.wait()
                self._resume_reader = None
                continue
            try:
                data = bytes(await self.stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not self._take_bytes(data):
                self._reading = False
                if self._eof or self._parser.failed is not None:
                    return

    def _take_bytes(self, data: bytes) -> bool:
        """Parse what was read (``b""``: the client left); False: stop reading."""
        if not data:
            self._gone()
            return False
        try:
            self._parser.feed(data)
        except BadRequest:
            self._gone_bad()
            return False
        return not self._too_much_waiting()

    def _gone_bad(self) -> None:
        scope = self._on_close
        if scope is not None:
            scope.cancel()
        self._wake()

    # -- ASGI receive ------------------------------------------------------------------

    async def _receive(self) -> dict[str, Any]:
        request = self._current
        while True:
            if request is None:
                await trio.lowlevel.checkpoint()
                return {"type": "http.disconnect"}
            if request.chunks:
                chunk = request.chunks.popleft()
                request.buffered -= len(chunk)
                self._resume_reading()
                await trio.lowlevel.checkpoint()
                more = bool(request.chunks) or not request.ended
                if not more:
                    request.end_given = True
                return {"type": "http.request", "body": chunk, "more_body": more}
            if request.ended and not request.end_given:
                request.end_given = True
                await trio.lowlevel.checkpoint()
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._eof or self._out.broken or self._parser.failed is not None or self._out.ended:
                await trio.lowlevel.checkpoint()
                return {"type": "http.disconnect"}
            if not request.continued:
                request.continued = True
                await self._out.send_continue()
            await self._wait()

    def _take_body(self, sink: Callable[[bytes], None]) -> bool:
        request = self._current
        if request is None or request.chunks or request is not self._parsing:
            return False
        request.sink = sink
        return True

    def _cancel_on_close(self, scope: trio.CancelScope) -> None:
        self._on_close = scope
        if self._eof or self._out.broken:
            scope.cancel()

    # -- ASGI send ---------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            request = self._current
            assert request is not None
            head = request.head
            self._out.start(
                int(message["status"]),
                message.get("headers", ()),
                method=head.method,
                http_version=head.http_version,
                body_unread=not request.ended,
                stopping=self.context.terminated.is_set(),
            )
            await trio.lowlevel.checkpoint()
        elif kind == "http.response.body":
            body = message.get("body", b"")
            await self._out.body((body,) if body else (), more=message.get("more_body", False))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    # -- ending ------------------------------------------------------------------------

    def abort(self) -> None:  # sync on purpose
        """Reset the connection now (RST, unsent bytes dropped): every wait on the socket
        fails at once, and the client sees an error, never a clean end of a cut response."""
        self._stop_reading()
        self._out.abort(self._sock if self._sock is not None else _tls_socket(self.stream))

    def cut(self, reset: bool) -> None:  # sync on purpose
        """``CUT_EXTENSION`` (fault injection): :meth:`abort` (RST), or end the
        connection now with a FIN after what was written (the kernel resets instead if
        bytes of the client's are still unread, or when it sends more)."""
        if reset:
            self.abort()
            return
        self._stop_reading()
        self._out.broken = True  # never reused; run() finds the socket closed already
        sock = self._sock if self._sock is not None else _tls_socket(self.stream)
        if sock is None or sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()  # trio wakes every task waiting on it (ClosedResourceError)


def _addresses(sock: Any) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """(client, server) as ASGI wants them, or None where unknown."""
    found: list[tuple[str, int] | None] = []
    for get in ("getpeername", "getsockname"):
        try:
            address = getattr(sock, get)()
        except (OSError, AttributeError):
            address = None
        found.append((str(address[0]), int(address[1])) if isinstance(address, tuple) else None)
    return found[0], found[1]


def _tls_socket(stream: Any) -> Any:
    return getattr(getattr(stream, "transport_stream", None), "socket", None)
