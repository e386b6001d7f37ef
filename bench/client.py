"""The load generator's HTTP/1.1 client: raw non-blocking sockets on trio, one ``Conn``
for both ways of driving it.

Only what the benchmarks need, as cheap per call as possible: a hand-written request
writer (``sendmsg`` of header, data and trailer without joining them), a response-head
parser, and an incremental chunked / Content-Length decoder (``Body``) that hands the
caller ``memoryview`` slices of the connection's one reused receive buffer, so that no
payload byte is copied between the kernel and the checksum.

A ``Conn`` is driven either by a trio task (``send``, ``read_head``, ``read_body``: they
wait for the socket) or synchronously by the live engine's reactor (``write``, ``flush``,
``recv``, ``parse_head`` and ``Body.feed``, which never wait: see ``reactor.py``). Both
ways share the same buffer, head parser and body decoder.

Why hand-written and not h11/httpx: see bench/README ("How the load generator works").

Rules:
- A ``Conn`` is used by one owner at a time; nothing here locks.
- Payload views passed to ``on_data`` are valid only during the call.
- A fast path that never blocks still yields to trio every few calls, so that one busy
  stream cannot starve the other tasks of its process.
- On cancellation the awaiting methods leave the connection in an unknown state: the
  caller closes it (a pool never sees it again).

Imports: stdlib and trio only (never trickle_trio.client: the bench must measure any server
with the same client).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .reactor import Reactor

RECV_SIZE = 256 * 1024
_YIELD_EVERY = 8
_CRLF = b"\r\n"
_MAX_SIZE_LINE = 1024


class HttpError(Exception):
    """The peer broke the HTTP framing, or the connection broke or ended early."""


@dataclass(slots=True)
class Head:
    """A response's status line and headers (names lower-cased)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class Conn:
    """One keep-alive HTTP/1.1 connection to ``host:port``: a non-blocking socket, a
    receive buffer (``buf[start:end]`` received but not yet consumed) and a send backlog
    (``out``, used by ``write`` only)."""

    __slots__ = (
        "_fast",
        "buf",
        "closed",
        "end",
        "fd",
        "host",
        "idle_since",
        "out",
        "reader",
        "sock",
        "start",
        "view",
    )

    def __init__(self, sock: socket.socket, host: bytes, recv_size: int = RECV_SIZE) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.host = host
        self.closed = False
        self.buf = bytearray(recv_size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.out = bytearray()
        #: Called by the reactor when readable (None = not watched for reading).
        self.reader: Callable[[], None] | None = None
        #: ``time.monotonic()`` when it last went idle (see ``put_idle``).
        self.idle_since = time.monotonic()
        self._fast = 0

    @classmethod
    async def open(cls, host: str, port: int, recv_size: int = RECV_SIZE) -> Conn:
        """Connect (TCP_NODELAY on) to ``host:port``. Cancelled: the socket is closed."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            err = sock.connect_ex((host, port))
            if err == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            else:
                await trio.lowlevel.checkpoint()
            if err:
                raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
        except BaseException:
            sock.close()
            raise
        return cls(sock, f"{host}:{port}".encode(), recv_size)

    def reusable(self, max_idle: float) -> bool:
        """Still fit to carry a request: open, idle at most ``max_idle`` seconds (servers
        close idle keep-alive connections: hypercorn after 5 s), nothing unread, and not
        closed or reset by the server."""
        if self.closed or self.start < self.end:
            return False
        if time.monotonic() - self.idle_since > max_idle:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF, or bytes nobody asked for

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    # -- synchronous: never waits (the reactor's side) ---------------------------------

    def write(self, data: bytes | bytearray, reactor: Reactor) -> None:
        """Send ``data`` now, or queue what the socket won't take for ``reactor`` to
        flush when the socket is writable."""
        if self.closed:
            raise HttpError("send on a closed connection")
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise HttpError(f"send failed: {exc}") from exc
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            reactor.update(self)

    def flush(self) -> None:
        """Send what the socket takes of the backlog."""
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as exc:
            raise HttpError(f"send failed: {exc}") from exc
        del self.out[:sent]

    def recv(self) -> int:
        """Receive after the unconsumed bytes; the count, 0 at EOF, -1 if none yet.

        Unconsumed bytes (a partial head or size line: small) move to the front first.
        """
        start, end = self.start, self.end
        if start == end:
            start = end = 0
        elif start:
            self.buf[: end - start] = self.view[start:end]
            start, end = 0, end - start
        self.start = start
        if end == len(self.buf):
            raise HttpError("response head or chunk line too long")
        try:
            n = self.sock.recv_into(self.view[end:])
        except BlockingIOError:
            self.end = end
            return -1
        except OSError as exc:
            raise HttpError(f"recv failed: {exc}") from exc
        self.end = end + n
        return n

    def parse_head(self) -> Head | None:
        """A response head from the buffer (1xx responses are skipped), or None if it is
        not complete yet."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n", self.start, self.end)
            if end < 0:
                return None
            lines = buf[self.start : end].decode("latin-1").split("\r\n")
            self.start = end + 4
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise HttpError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                continue  # 100 Continue keepalives on an idle POST
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return Head(status, headers)

    # -- awaiting: one trio task drives the connection ---------------------------------

    async def send(self, *parts: bytes | bytearray | memoryview) -> None:
        """Send ``parts`` in order (one ``sendmsg`` when the socket buffer has room)."""
        if self.closed:
            raise HttpError("connection closed")
        sock = self.sock
        if len(parts) == 1:
            # Fast path: one buffer that the socket takes whole (the usual case).
            try:
                sent = sock.send(parts[0])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.close()
                raise HttpError(f"send failed: {exc}") from exc
            if sent == len(parts[0]):
                await self._maybe_yield()
                return
            parts = (memoryview(parts[0])[sent:],)
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            try:
                sent = sock.sendmsg(views) if len(views) > 1 else sock.send(views[0])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                self.close()
                raise HttpError(f"send failed: {exc}") from exc
            while sent:
                first = len(views[0])
                if sent >= first:
                    sent -= first
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0
        await self._maybe_yield()

    async def _maybe_yield(self) -> None:
        self._fast += 1
        if self._fast >= _YIELD_EVERY:
            self._fast = 0
            await trio.lowlevel.checkpoint()

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Send a request head (and a small whole body with Content-Length)."""
        await self.send(request_head(self.host, method, path, headers, body_length=len(body)), body)

    async def _fill(self) -> int:
        """Receive more bytes after the unconsumed ones, waiting for some; how many (0
        at EOF). A broken connection is closed."""
        while True:
            try:
                n = self.recv()
            except HttpError:
                self.close()
                raise
            if n >= 0:
                await self._maybe_yield()
                return n
            self._fast = 0
            await trio.lowlevel.wait_readable(self.sock)

    async def read_head(self) -> Head:
        """Read a response's status line and headers (1xx responses are skipped)."""
        while (head := self.parse_head()) is None:
            if not await self._fill():
                self.close()
                raise HttpError("connection closed before the response head")
        return head

    async def read_body(self, head: Head, on_data: Callable[[memoryview], object]) -> int:
        """Read ``head``'s body, passing each piece to ``on_data``; return its length.

        The connection is closed afterwards unless the response allows keep-alive.
        """
        headers = head.headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if chunked or "content-length" in headers or head.status in (204, 304):
            body = Body(head)
            while not body.feed(self, on_data):
                if not await self._fill():
                    self.close()
                    raise HttpError("connection closed inside a body")
            total = body.total
        else:
            total = await self._read_until_close(on_data)
        if not head.keep_alive:
            self.close()
        return total

    async def read_body_bytes(self, head: Head) -> bytes:
        """The whole body of ``head`` as bytes (for small control responses)."""
        parts: list[bytes] = []
        await self.read_body(head, lambda piece: parts.append(bytes(piece)))
        return b"".join(parts)

    async def _read_until_close(self, on_data: Callable[[memoryview], object]) -> int:
        total = 0
        while True:
            if self.start < self.end:
                on_data(self.view[self.start : self.end])
                total += self.end - self.start
                self.start = self.end
            if not await self._fill():
                self.close()
                return total


class Body:
    """Incremental decoder of one response body (chunked or Content-Length), in place in
    a ``Conn``'s receive buffer: ``feed`` consumes what the buffer holds."""

    __slots__ = ("chunked", "crlf", "need", "total", "trailer")

    def __init__(self, head: Head) -> None:
        self.chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        self.need = 0 if self.chunked else int(head.headers.get("content-length", "0"))
        #: Bytes of the CRLF after a chunk still due.
        self.crlf = 0
        #: After the last chunk: trailer lines (normally none) until an empty line.
        self.trailer = False
        #: Payload bytes passed to ``on_data`` so far.
        self.total = 0

    def feed(self, conn: Conn, on_data: Callable[[memoryview], object]) -> bool:
        """Consume what ``conn``'s buffer holds; True once the body is complete.

        ``need`` is payload still due in the current chunk, ``crlf`` the bytes of the
        CRLF after it; when both are 0 a size line comes next. Nothing is copied except
        a size line split across two reads (moved to the front of the buffer by ``recv``).
        """
        buf, view = conn.buf, conn.view
        pos, size = conn.start, conn.end
        if not self.chunked:
            take = min(self.need, size - pos)
            if take:
                on_data(view[pos : pos + take])
            conn.start = pos + take
            self.need -= take
            self.total += take
            return not self.need
        while pos < size:
            if self.need:
                take = self.need if self.need < size - pos else size - pos
                on_data(view[pos : pos + take])
                pos += take
                self.total += take
                self.need -= take
                if not self.need:
                    self.crlf = 2
            elif self.crlf:
                take = self.crlf if self.crlf < size - pos else size - pos
                pos += take
                self.crlf -= take
            else:
                end = buf.find(_CRLF, pos, size)
                if end < 0:
                    if size - pos > _MAX_SIZE_LINE:
                        raise HttpError("chunk size line too long")
                    break
                if self.trailer:
                    empty = end == pos
                    pos = end + 2
                    if empty:
                        conn.start = pos
                        return True
                    continue
                try:
                    chunk = int(buf[pos:end].split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError(f"bad chunk size line {bytes(buf[pos:end])!r}") from None
                pos = end + 2
                if chunk:
                    self.need = chunk
                else:
                    self.trailer = True
        conn.start = pos
        return False


def take_idle(pool: list[Conn], max_idle: float, opened: set[Conn] | None = None) -> Conn | None:
    """The most recently idled reusable connection of ``pool``; stale ones are closed
    (and taken out of ``opened``)."""
    while pool:
        conn = pool.pop()
        if conn.reusable(max_idle):
            return conn
        conn.close()
        if opened is not None:
            opened.discard(conn)
    return None


def put_idle(pool: list[Conn], conn: Conn) -> None:
    """Hand ``conn`` to ``pool`` after a complete response."""
    conn.idle_since = time.monotonic()
    pool.append(conn)


class ConnPool:
    """Idle keep-alive connections to one server, most recently used first.

    A connection that sat idle longer than ``max_idle`` (servers close idle keep-alive
    connections: hypercorn after 5 s) or that the server has already closed is dropped
    instead of reused, so that a request never goes out on a dead connection.
    """

    def __init__(self, host: str, port: int, *, max_idle: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[Conn] = []
        self.open_conns: set[Conn] = set()

    async def get(self) -> Conn:
        """A reusable idle connection, else a new one."""
        conn = take_idle(self._idle, self.max_idle, self.open_conns)
        if conn is None:
            conn = await Conn.open(self.host, self.port)
            self.open_conns.add(conn)
        return conn

    def put(self, conn: Conn) -> None:
        """Hand a connection back after a complete response (closed ones are dropped)."""
        if conn.closed:
            self._drop(conn)
        else:
            put_idle(self._idle, conn)

    def _drop(self, conn: Conn) -> None:
        conn.close()
        self.open_conns.discard(conn)

    def close(self) -> None:
        for conn in self.open_conns:
            conn.close()
        self.open_conns.clear()
        self._idle.clear()


def request_head(
    host: bytes,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    body_length: int | None = 0,
) -> bytes:
    """A request head; ``body_length=None`` means a chunked (streaming) body."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    if body_length is None:
        lines.append(b"Transfer-Encoding: chunked")
    elif body_length or method in ("POST", "PUT"):
        lines.append(b"Content-Length: %d" % body_length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk_prefix(length: int) -> bytes:
    """The size line that precedes ``length`` payload bytes in a chunked body."""
    return b"%x\r\n" % length


LAST_CHUNK = b"0\r\n\r\n"
