"""One HTTP/1.1 connection: its requests, each answered by the ASGI app in this task.

Rules:
1. One task per connection runs the app for one request after another, inline: no task
   and no queue per request. The socket is read elsewhere: by the reactor (plain sockets
   on Linux, :mod:`.reactor`) or by one reader task (TLS, or no epoll), which parse and
   hand over what they complete (a head, body bytes, the end of a body, the client
   gone) and wake this task only when it waits for that.
2. Writes come from this task (the app's sends), or, for a chunk of a streaming
   response, from any task through :meth:`Connection.try_push`, which never waits: what
   the socket does not take goes to a backlog that the next write sends first. Nothing
   is ever written while another write is under way.
3. A response that can't be finished (the app failed or was cancelled mid-body, the
   server is stopping past its graceful timeout) is never ended cleanly: the connection
   is reset, so the client sees an error, not a truncated body.
4. A connection is kept for another request only if both sides said so, the request's
   body was read to its end and the server is not stopping.

Imports: trio, the stdlib, ``.parser``, ``.reactor`` and the extension names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import trio

from ..http.extensions import (
    BODY_EXTENSION,
    CUT_EXTENSION,
    DISCONNECT_EXTENSION,
    PARTS_EXTENSION,
    PUSH_EXTENSION,
)
from .parser import BadRequest, RequestHead, RequestParser
from .reactor import Reactor

logger = logging.getLogger(__name__)

__all__ = ["Connection", "ServerContext"]

#: Bytes asked of the socket per read.
READ_SIZE = 64 * 1024
#: Buffers per ``writev`` (Linux refuses more than 1024).
IOV_MAX = 1024
#: Body bytes held for an app that does not read them before reading stops.
MAX_BUFFERED = 256 * 1024
#: Requests parsed ahead of the one being answered (pipelining) before reading stops.
MAX_PIPELINED = 16
#: Longest a closing connection reads (and drops) what its client still sends.
LINGER = 1.0
#: At most this many writes in a row complete without a scheduler pass.
YIELD_EVERY = 16

_REASONS = {
    100: b"Continue",
    200: b"OK",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    470: b"",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"


def _status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>``: HTTP/1.1 whatever the request's version, as Go's
    net/http and h11 answer (RFC 9110 §6.2: the highest version the server speaks)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        _STATUS_LINES[status] = line
    return line


_date: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    """``Date: ...\\r\\n``, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        _date = (now, b"date: " + stamp.encode() + _CRLF)
    return _date[1]


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
        """Wait until no connection is open."""
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
        # The response being written.
        self._status = 0
        self._head: list[bytes] | None = None  # held until the first body bytes
        self._started = False  # the head is written (or queued in the backlog)
        self._ended = False
        self._chunked = False
        self._bare = False  # no body may be sent (HEAD, 204, 304)
        self._close_after = False
        # Writes.
        self._writing = False
        self._backlog: list[bytes | memoryview] = []
        self._broken = False
        self._unyielded = 0

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
            if self._broken or (self._started and not self._ended):
                self.abort()
            await self._close()

    async def _serve_next(self) -> bool:
        """Wait for a request (at most the keep-alive timeout) and answer it; False when
        the connection is to be closed."""
        context = self.context
        with trio.move_on_after(context.keep_alive_timeout):
            while not self._incoming:
                if self._eof or self._parser.failed is not None or self._broken:
                    break
                if context.terminated.is_set() and not self._parser.in_head:
                    return False
                await self._wait()
        if not self._incoming:
            failed = self._parser.failed
            if failed is not None and not self._broken:
                await self._answer_error(failed.status, failed.reason)
            return False
        request = self._incoming.popleft()
        self._resume_reading()
        return await self._serve(request)

    async def _serve(self, request: _Request) -> bool:
        head = request.head
        self._current = request
        self._status = 0
        self._head = None
        self._started = self._ended = self._chunked = self._bare = False
        self._close_after = not head.keep_alive
        if not head.expect_continue:
            request.continued = True
        try:
            scope = self._scope(head)
        except UnicodeDecodeError:
            await self._answer_error(400, "Bad Request")
            return False
        try:
            await self.context.app(scope, self._receive, self._send)
        except Exception:
            logger.exception("error in the ASGI app path=%s", scope["path"])
            if not self._started and not self._broken:
                await self._answer_error(500, "Internal Server Error")
                return False
        finally:
            self._current = None
            self._on_close = None
            request.sink = None
        if not self._ended:
            if self._started or self._broken:
                return False  # cut: run() resets the connection
            failed = self._parser.failed  # the app gave up on a body that went bad
            if failed is not None:
                await self._answer_error(failed.status, failed.reason)
            else:
                await self._answer_error(500, "Internal Server Error")
            return False
        return (
            not self._close_after
            and request.ended
            and not self._eof
            and not self._broken
            and not self.context.terminated.is_set()
        )

    def _scope(self, head: RequestHead) -> dict[str, Any]:
        raw_path, _, query = head.target.partition(b"?")
        extensions: dict[str, Any] = {CUT_EXTENSION: {"cut": self.cut}}
        if head.has_body:
            extensions[BODY_EXTENSION] = {"take_body": self._take_body}
        else:
            extensions[DISCONNECT_EXTENSION] = {"cancel_on_close": self._cancel_on_close}
            extensions[PARTS_EXTENSION] = {"send": self._send_parts}
            if self._sock is not None:
                extensions[PUSH_EXTENSION] = {"try_send": self.try_push, "flush": self.flush}
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
            if self._eof or self._broken or self._parser.failed is not None or self._ended:
                await trio.lowlevel.checkpoint()
                return {"type": "http.disconnect"}
            if not request.continued:
                request.continued = True
                if not self._started:
                    await self._write((_CONTINUE,))
            await self._wait()

    def _take_body(self, sink: Callable[[bytes], None]) -> bool:
        request = self._current
        if request is None or request.chunks or request is not self._parsing:
            return False
        request.sink = sink
        return True

    def _cancel_on_close(self, scope: trio.CancelScope) -> None:
        self._on_close = scope
        if self._eof or self._broken:
            scope.cancel()

    # -- ASGI send ---------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._status:
                raise RuntimeError("response already started")
            self._start(int(message["status"]), message.get("headers", ()))
            await trio.lowlevel.checkpoint()
        elif kind == "http.response.body":
            body = message.get("body", b"")
            await self._body((body,) if body else (), more=message.get("more_body", False))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    async def _send_parts(self, parts: Sequence[bytes], more_body: bool) -> None:
        await self._body(parts, more=more_body)

    def _start(self, status: int, headers: Any) -> None:
        request = self._current
        assert request is not None
        head = request.head
        self._status = status
        self._bare = head.method == "HEAD" or status in (204, 304)
        lines = [_status_line(status), _date_header()]
        length = None
        close = False
        for name, value in headers:
            lower = bytes(name).lower()
            if lower == b"content-length":
                length = value
            elif lower == b"connection" and b"close" in bytes(value).lower():
                close = True
            elif lower == b"date":
                lines[1] = b""
            lines.append(bytes(name) + b": " + bytes(value) + _CRLF)
        if length is None and not self._bare:
            if head.http_version == "1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # the body ends with the connection
        if not request.ended and not close:
            close = True  # a body we did not read: don't parse what follows
        if self.context.terminated.is_set():
            close = True
        if close and not self._close_after:
            self._close_after = True
        if self._close_after and not _has_close(headers):
            lines.append(b"connection: close\r\n")
        lines.append(_CRLF)
        self._head = lines

    async def _body(self, parts: Sequence[bytes], *, more: bool) -> None:
        if self._ended or not self._status:
            if not self._status:
                raise RuntimeError("response body before its start")
            return
        out: list[bytes | memoryview] = []
        if self._head is not None:
            out.extend(self._head)
            self._head = None
        if parts and not self._bare:
            if self._chunked:
                size = sum(map(len, parts)) if len(parts) != 1 else len(parts[0])
                if size:
                    out.append(b"%x\r\n" % size)
                    out.extend(parts)
                    out.append(_CRLF)
            else:
                out.extend(parts)
        if not more:
            self._ended = True
            if self._chunked:
                out.append(_LAST_CHUNK)
        self._started = True
        if out:
            await self._write(out)

    def try_push(self, parts: Sequence[bytes]) -> int:
        """``PUSH_EXTENSION``: the next chunk of a streaming body, now or not at all.

        0: nothing sent (no chunked body under way, a write in progress or backlogged,
        the socket full or gone); 1: sent; 2: sent in part, the rest backlogged (an
        awaited :meth:`flush` must follow). Never a checkpoint.
        """
        if (
            self._writing
            or self._backlog
            or not self._started
            or self._ended
            or not self._chunked
            or self._head is not None
            or self._broken
        ):
            return 0
        fd = self._sock.fileno()
        if fd < 0:
            return 0
        size = sum(map(len, parts)) if len(parts) != 1 else len(parts[0])
        if not size:
            return 1
        framed = [b"%x\r\n" % size, *parts, _CRLF]
        try:
            written = os.writev(fd, framed)
        except OSError:  # BlockingIOError included: nothing was written
            return 0
        for index, part in enumerate(framed):
            if written < len(part):
                self._backlog = [memoryview(part)[written:], *framed[index + 1 :]]
                return 2
            written -= len(part)
        return 1

    async def flush(self) -> None:
        """Write what :meth:`try_push` left in the backlog."""
        await self._write(())

    # -- writing -----------------------------------------------------------------------

    async def _answer_error(self, status: int, reason: str) -> None:
        body = reason.encode() + b"\n"
        head = [
            _status_line(status),
            _date_header(),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self._started = self._ended = True
        await self._write(head)

    async def _write(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write ``parts`` whole (the backlog first).

        Cancellation: a write cut short leaves the connection unusable: it is marked
        broken, and ``run`` resets it.
        """
        if self._broken:
            await trio.lowlevel.checkpoint()
            return
        pending: list[bytes | memoryview] = (
            [*self._backlog, *parts] if self._backlog else [part for part in parts if part]
        )
        self._backlog = []
        if self._sock is None:
            await self._write_tls(pending)
            return
        self._writing = True
        immediate = True
        try:
            sock = self._sock
            while pending:
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("connection closed")
                try:
                    written = os.writev(
                        fd, pending if len(pending) <= IOV_MAX else pending[:IOV_MAX]
                    )
                except BlockingIOError:
                    written = 0
                while written:
                    first = pending[0]
                    if written >= len(first):
                        written -= len(first)
                        del pending[0]
                    else:
                        pending[0] = memoryview(first)[written:]
                        written = 0
                if pending:
                    immediate = False
                    await trio.lowlevel.wait_writable(sock)
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            self._broken = True
            self._gone()
        except BaseException:
            self._broken = True  # cut mid-write (cancelled): never reused, reset
            raise
        finally:
            self._writing = False
        if not immediate:
            self._unyielded = 0
        elif self._unyielded < YIELD_EVERY:
            # Written without waiting and without a scheduler pass: the app yields
            # anyway (a subscriber waits for its next chunk), so only every
            # YIELD_EVERY-th such write yields, for fairness.
            self._unyielded += 1
        else:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_tls(self, pending: list[bytes | memoryview]) -> None:
        self._writing = True
        try:
            await self.stream.send_all(b"".join(pending))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken = True
            self._gone()
        except BaseException:
            self._broken = True
            raise
        finally:
            self._writing = False

    def abort(self) -> None:  # sync on purpose
        """Reset the connection now (RST, unsent bytes dropped): every wait on the socket
        fails at once, and the client sees an error, never a clean end of a cut response."""
        self._broken = True
        sock = self._sock if self._sock is not None else _tls_socket(self.stream)
        if sock is None or sock.fileno() < 0:
            return
        self._stop_reading()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # trio wakes every task waiting on it (ClosedResourceError)

    def cut(self, reset: bool) -> None:  # sync on purpose
        """``CUT_EXTENSION``: end the connection now, mid-request: :meth:`abort` (RST),
        or a FIN after what was written (the kernel resets instead if the client's
        unread bytes are still queued, or if it keeps sending)."""
        if reset:
            self.abort()
            return
        self._broken = True
        sock = self._sock if self._sock is not None else _tls_socket(self.stream)
        if sock is None or sock.fileno() < 0:
            return
        self._stop_reading()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()  # trio wakes every task waiting on it (ClosedResourceError)

    async def _close(self) -> None:
        """Close gracefully: FIN after the last answer, then read and drop what the
        client still sends, until it closes too (at most :data:`LINGER` seconds), so
        that the kernel does not reset the connection (and lose our answer) over bytes
        we never read: a 413 or 404 answered while the body still comes in."""
        self._stop_reading()
        try:
            if not self._broken and not self._eof and self._sock is not None:
                with (
                    trio.move_on_after(LINGER),
                    contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError
                    ),
                ):
                    await self.stream.send_eof()
                    while await self.stream.receive_some(READ_SIZE):
                        pass
        finally:
            await self._close_stream()

    async def _close_stream(self) -> None:
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self.stream.aclose()


def _has_close(headers: Any) -> bool:
    return any(
        bytes(name).lower() == b"connection" and b"close" in bytes(value).lower()
        for name, value in headers
    )


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
