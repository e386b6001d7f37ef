"""A minimal HTTP/1.1 client for the load generator: raw non-blocking sockets on trio.

Only what the benchmarks need, as cheap per call as possible: a hand-written request
writer (``sendmsg`` of header, data and trailer without joining them), a response-head
parser, and a chunked / Content-Length / until-close body reader that hands the caller
``memoryview`` slices of one reused receive buffer, so that no payload byte is copied
between the kernel and the checksum.

Rules:
- A ``Conn`` is used by one task at a time; nothing here locks.
- Payload views passed to ``on_data`` are valid only during the call.
- A fast path that never blocks still yields to trio every few calls, so that one busy
  stream cannot starve the other tasks of its process.

Imports: stdlib and trio only (never trickle_trio.client: the bench must measure any server
with the same client).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

RECV_SIZE = 256 * 1024
_YIELD_EVERY = 8
_CRLF = b"\r\n"


class HttpError(Exception):
    """The peer broke the HTTP framing, or the connection ended early."""


@dataclass(slots=True)
class Head:
    """A response's status line and headers (names lower-cased)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class Conn:
    """One keep-alive HTTP/1.1 connection to ``host:port``."""

    __slots__ = (
        "_end",
        "_fast",
        "_rbuf",
        "_rview",
        "_start",
        "closed",
        "host",
        "idle_since",
        "sock",
    )

    def __init__(self, sock: socket.socket, host: bytes) -> None:
        self.sock = sock
        self.host = host
        self.closed = False
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        # Received but not yet consumed: ``_rbuf[_start:_end]``.
        self._start = 0
        self._end = 0
        self._fast = 0
        #: ``time.monotonic()`` when it last went back to a pool.
        self.idle_since = 0.0

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        """Connect (TCP_NODELAY on) to ``host:port``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            err = sock.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
            if err:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
            else:
                await trio.lowlevel.checkpoint()
        except BaseException:
            sock.close()
            raise
        return cls(sock, f"{host}:{port}".encode())

    def peer_closed(self) -> bool:
        """True if the server has closed (or reset) this idle connection."""
        if self.closed or self._start < self._end:
            return self.closed
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        # EOF, or bytes nobody asked for: either way the connection is not reusable.
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    # -- writing -----------------------------------------------------------------------

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

    # -- reading -----------------------------------------------------------------------

    async def _fill(self) -> int:
        """Receive more bytes after the unconsumed ones; how many (0 at EOF).

        Unconsumed bytes (a partial head or size line: small) move to the front first.
        """
        start, end = self._start, self._end
        if end - start > RECV_SIZE // 2:
            raise HttpError("response head or chunk line too long")
        if start == end:
            start = end = 0
        elif start:
            self._rbuf[: end - start] = self._rview[start:end]
            start, end = 0, end - start
        self._start, self._end = start, end
        sock = self.sock
        view = self._rview[end:]
        while True:
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                self._fast = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                self.close()
                raise HttpError(f"recv failed: {exc}") from exc
            self._end = end + n
            await self._maybe_yield()
            return n

    async def read_head(self) -> Head:
        """Read a response's status line and headers (1xx responses are skipped)."""
        rbuf = self._rbuf
        while True:
            end = rbuf.find(b"\r\n\r\n", self._start, self._end)
            while end < 0:
                if not await self._fill():
                    self.close()
                    raise HttpError("connection closed before the response head")
                end = rbuf.find(b"\r\n\r\n", self._start, self._end)
            lines = rbuf[self._start : end].decode("latin-1").split("\r\n")
            self._start = end + 4
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

    async def read_body(self, head: Head, on_data: Callable[[memoryview], object]) -> int:
        """Read ``head``'s body, passing each piece to ``on_data``; return its length.

        The connection is closed afterwards unless the response allows keep-alive.
        """
        headers = head.headers
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = await self._read_chunked(on_data)
        elif "content-length" in headers:
            total = await self._read_length(int(headers["content-length"]), on_data)
        elif head.status in (204, 304):
            total = 0
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

    async def _read_length(self, length: int, on_data: Callable[[memoryview], object]) -> int:
        remaining = length
        while True:
            take = min(remaining, self._end - self._start)
            if take:
                on_data(self._rview[self._start : self._start + take])
                self._start += take
                remaining -= take
            if not remaining:
                return length
            if not await self._fill():
                self.close()
                raise HttpError("connection closed inside a body")

    async def _read_until_close(self, on_data: Callable[[memoryview], object]) -> int:
        total = 0
        while True:
            if self._start < self._end:
                on_data(self._rview[self._start : self._end])
                total += self._end - self._start
                self._start = self._end
            if not await self._fill():
                self.close()
                return total

    async def _read_chunked(self, on_data: Callable[[memoryview], object]) -> int:
        """Decode a chunked body in place; payload slices go to ``on_data`` as they arrive.

        ``need`` is payload still due in the current chunk, ``crlf`` the bytes of the CRLF
        after it; when both are 0 a size line comes next. Nothing is copied except a size
        line split across two reads (moved to the front of the buffer by ``_fill``).
        """
        total = need = crlf = 0
        rbuf, view = self._rbuf, self._rview
        while True:
            pos, size = self._start, self._end
            while pos < size:
                if need:
                    take = need if need < size - pos else size - pos
                    on_data(view[pos : pos + take])
                    total += take
                    pos += take
                    need -= take
                    if not need:
                        crlf = 2
                elif crlf:
                    take = crlf if crlf < size - pos else size - pos
                    pos += take
                    crlf -= take
                else:
                    end = rbuf.find(_CRLF, pos, size)
                    if end < 0:
                        if size - pos > 1024:
                            raise HttpError("chunk size line too long")
                        break
                    chunk = int(rbuf[pos:end].split(b";", 1)[0], 16)
                    pos = end + 2
                    if chunk == 0:
                        self._start = pos
                        await self._finish_trailer()
                        return total
                    need = chunk
            self._start = pos
            if not await self._fill():
                self.close()
                raise HttpError("connection closed inside a chunked body")

    async def _finish_trailer(self) -> None:
        """Consume the (normally empty) trailer after the last chunk."""
        rbuf = self._rbuf
        while True:
            if self._end - self._start >= 2 and rbuf.startswith(_CRLF, self._start):
                self._start += 2
                return
            end = rbuf.find(b"\r\n\r\n", self._start, self._end)
            if end >= 0:
                self._start = end + 4
                return
            if not await self._fill():
                self.close()
                raise HttpError("connection closed inside a trailer")


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
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since <= self.max_idle and not conn.peer_closed():
                return conn
            self._drop(conn)
        conn = await Conn.open(self.host, self.port)
        self.open_conns.add(conn)
        return conn

    def put(self, conn: Conn) -> None:
        """Hand a connection back after a complete response (closed ones are dropped)."""
        if conn.closed:
            self._drop(conn)
        else:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

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
