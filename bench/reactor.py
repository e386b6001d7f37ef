"""One level-triggered epoll set of many sockets, waited on by one trio task as a single
fd: the live engine's (``scenarios/engine.py``) way of driving thousands of ``Conn``s
synchronously (``Conn.write``/``flush``/``recv``/``parse_head``, ``Body.feed``).

Why not trio's own epoll (a task per connection, ``wait_readable`` on each): a trio
wake-up, an epoll re-arm and a task switch per chunk cost more than the socket calls
(bench/README, "How the load generator works").

Rules:
- Nothing here awaits except ``Reactor.run``; callbacks run in the reactor's task and
  must not block. Cancelling ``run`` stops the dispatch between two callbacks.
- A connection's errors go to ``on_error``; the reactor never closes a connection.

Imports: stdlib, trio and the bench's client.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import trio

from .client import Conn, HttpError


class Reactor:
    """One level-triggered epoll set of many sockets, waited on by one trio task."""

    def __init__(self, on_error: Callable[[Conn, Exception], None]) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.masks: dict[int, int] = {}
        self.on_error = on_error

    def update(self, conn: Conn) -> None:
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

    def watch(self, conn: Conn, reader: Callable[[], None] | None) -> None:
        conn.reader = reader
        self.update(conn)

    def forget(self, conn: Conn) -> None:
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
                except HttpError as exc:
                    self.on_error(conn, exc)

    def close(self) -> None:
        self.epoll.close()
