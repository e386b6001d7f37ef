"""Synchronous HTTP/1.1 connections for many sockets in one trio task: ``SyncConn``
(non-blocking socket, in-place receive buffer, send backlog), ``Body`` (incremental
chunked / Content-Length decoder) and ``Reactor`` (one level-triggered epoll set, waited
on by trio as a single fd). Used by the live engine (``scenarios/engine.py``).

Rules:
- Nothing here awaits except ``SyncConn.open`` and ``Reactor.run``; callbacks run in
  the reactor's task and must not block.
- Payload views passed to ``on_data`` are valid only during the call.

Imports: stdlib, trio and the bench's client (for ``Head``).
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

import trio

from .client import Head

_RECV = 64 * 1024
#: Idle keep-alive connections older than this are not reused (hypercorn closes at 5 s).
_MAX_IDLE = 4.0


class ConnError(Exception):
    """A connection broke, or the peer broke HTTP framing."""


def take_idle(pool: list[SyncConn]) -> SyncConn | None:
    """The most recently idled reusable connection of ``pool`` (stale ones are closed)."""
    while pool:
        conn = pool.pop()
        if conn.reusable():
            return conn
        conn.close()
    return None


def put_idle(pool: list[SyncConn], conn: SyncConn) -> None:
    conn.idle_since = time.monotonic()
    pool.append(conn)


class SyncConn:
    """A non-blocking socket with an in-place receive buffer and a send backlog."""

    __slots__ = (
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

    def __init__(self, sock: socket.socket, host: bytes) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.host = host
        self.buf = bytearray(_RECV)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.out = bytearray()
        self.closed = False
        #: Called by the reactor when readable (None = not watched for reading).
        self.reader: Callable[[], None] | None = None
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        """Still fit to carry a request: not idle too long (servers close idle
        keep-alive connections: hypercorn after 5 s), not closed by the server."""
        if self.closed or time.monotonic() - self.idle_since > _MAX_IDLE:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF, or bytes nobody asked for

    @classmethod
    async def open(cls, host: str, port: int) -> SyncConn:
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
        return cls(sock, f"{host}:{port}".encode())

    def send(self, data: bytes | bytearray, reactor: Reactor) -> None:
        """Send ``data`` now, or queue what the socket won't take (sync on purpose)."""
        if self.closed:
            raise ConnError("send on a closed connection")
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ConnError(f"send failed: {exc}") from exc
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            reactor.update(self)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as exc:
            raise ConnError(f"send failed: {exc}") from exc
        del self.out[:sent]

    def recv(self) -> int:
        """Receive after the unconsumed bytes; the count, 0 at EOF, -1 if none yet."""
        start, end = self.start, self.end
        if start == end:
            start = end = 0
        elif start:
            self.buf[: end - start] = self.view[start:end]
            start, end = 0, end - start
        if end == _RECV:
            raise ConnError("response head or chunk line too long")
        self.start = start
        try:
            n = self.sock.recv_into(self.view[end:])
        except BlockingIOError:
            self.end = end
            return -1
        except OSError as exc:
            raise ConnError(f"recv failed: {exc}") from exc
        self.end = end + n
        return n

    def parse_head(self) -> Head | None:
        """A response head from the buffer, or None if it is not complete yet."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n", self.start, self.end)
            if end < 0:
                return None
            lines = buf[self.start : end].decode("latin-1").split("\r\n")
            self.start = end + 4
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise ConnError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                continue
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return Head(status, headers)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class Body:
    """Incremental body decoder (chunked or Content-Length), in place in a SyncConn."""

    __slots__ = ("chunked", "crlf", "need", "trailer")

    def __init__(self, head: Head) -> None:
        self.chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        self.need = 0 if self.chunked else int(head.headers.get("content-length", "0"))
        self.crlf = 0
        self.trailer = False

    def feed(self, conn: SyncConn, on_data: Callable[[memoryview], object]) -> bool:
        """Consume what the buffer holds; True once the body is complete."""
        buf, view = conn.buf, conn.view
        pos, size = conn.start, conn.end
        if not self.chunked:
            take = min(self.need, size - pos)
            if take:
                on_data(view[pos : pos + take])
            conn.start = pos + take
            self.need -= take
            return not self.need
        while pos < size:
            if self.need:
                take = self.need if self.need < size - pos else size - pos
                on_data(view[pos : pos + take])
                pos += take
                self.need -= take
                if not self.need:
                    self.crlf = 2
            elif self.crlf:
                take = self.crlf if self.crlf < size - pos else size - pos
                pos += take
                self.crlf -= take
            else:
                end = buf.find(b"\r\n", pos, size)
                if end < 0:
                    break
                if self.trailer:
                    # Trailer lines (normally none) until an empty line.
                    empty = end == pos
                    pos = end + 2
                    if empty:
                        conn.start = pos
                        return True
                    continue
                chunk = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                if chunk:
                    self.need = chunk
                else:
                    self.trailer = True
        conn.start = pos
        return False


class Reactor:
    """One level-triggered epoll set of many sockets, waited on by one trio task."""

    def __init__(self, on_error: Callable[[SyncConn, Exception], None]) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, SyncConn] = {}
        self.masks: dict[int, int] = {}
        self.on_error = on_error

    def update(self, conn: SyncConn) -> None:
        """Watch ``conn`` for what it needs now: reading (has a reader), writing (backlog)."""
        mask = (select.EPOLLIN if conn.reader is not None else 0) | (
            select.EPOLLOUT if conn.out else 0
        )
        old = self.masks.get(conn.fd, 0)
        if conn.closed:
            mask = 0
        if mask == old:
            return
        if not old:
            self.epoll.register(conn.fd, mask)
            self.conns[conn.fd] = conn
        elif not mask:
            if not conn.closed:
                self.epoll.unregister(conn.fd)
            del self.conns[conn.fd]
        else:
            self.epoll.modify(conn.fd, mask)
        if mask:
            self.masks[conn.fd] = mask
        else:
            self.masks.pop(conn.fd, None)

    def watch(self, conn: SyncConn, reader: Callable[[], None] | None) -> None:
        conn.reader = reader
        self.update(conn)

    def forget(self, conn: SyncConn) -> None:
        """Stop watching ``conn`` (before closing it)."""
        conn.reader = None
        conn.out.clear()
        if self.masks.pop(conn.fd, 0):
            self.epoll.unregister(conn.fd)
            self.conns.pop(conn.fd, None)

    async def run(self) -> None:
        conns = self.conns
        while True:
            await trio.lowlevel.wait_readable(self.epoll.fileno())
            for fd, events in self.epoll.poll(0):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if events & select.EPOLLOUT:
                        conn.flush()
                        if not conn.out:
                            self.update(conn)
                    reader = conn.reader
                    if reader is not None and events & ~select.EPOLLOUT:
                        reader()
                except ConnError as exc:
                    self.on_error(conn, exc)

    def close(self) -> None:
        self.epoll.close()
