"""The pool of client connections: TLS, per-phase connect deadline, bounded reuse.

Rules of this file:

1. A connection goes back to the pool only from an :class:`~.connection.Exchange` that
   finished cleanly in both directions, with keep-alive (its ``checkin`` callback is the
   pool's :meth:`Transport._checkin`; see :mod:`.connection`).
2. The pool is bounded: at most ``max_idle`` idle connections per origin, each dropped
   after ``keepalive_expiry`` seconds or as soon as it turns readable (the server closed
   it); at most ``max_connections`` open connections in all.

Imports: stdlib, trio, h11 and the sibling ``http`` and ``connection`` modules.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Self

import h11
import trio

from ._util import open_client_nursery
from .connection import Connection, Exchange
from .http import (
    MAX_SMALL_BODY,
    USER_AGENT,
    Origin,
    Response,
    Timeouts,
    TransportError,
    TransportTimeout,
    make_ssl_context,
    split_url,
    transport_errors,
)

__all__ = ["Transport", "TransportStats", "open_client", "use_transport"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportStats:
    """Connection counts of a :class:`Transport`."""

    connections_opened: int
    connections_reused: int
    connections_open: int
    connections_idle: int


class Transport:
    """HTTP/1.1 connections for trickle clients: TLS, per-phase deadlines, a bounded pool.

    One transport may be shared by several publishers and subscribers of one trio run.
    ``async with Transport() as transport:`` closes its idle connections at the end.

    Args:
        timeouts: per-phase deadlines (see :class:`Timeouts`).
        ssl_context: TLS context for ``https`` URLs (default: :func:`make_ssl_context`).
        insecure: accept any server certificate (only without ``ssl_context``).
        max_idle: idle connections kept per origin.
        max_connections: open connections in all; opening one more first closes an idle
            one, else waits (counted in the connect deadline).
        keepalive_expiry: seconds an idle connection is kept.
        headers: sent with every request, e.g. ``[("Authorization", "Bearer ...")]``.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        ssl_context: ssl.SSLContext | None = None,
        insecure: bool = False,
        max_idle: int = 4,
        max_connections: int = 64,
        keepalive_expiry: float = 4.0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if ssl_context is not None and insecure:
            raise ValueError("give either ssl_context or insecure=True, not both")
        self.timeouts = timeouts or Timeouts()
        self.headers = list(headers)
        self._ssl_context = ssl_context
        self._insecure = insecure
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._slots = trio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._idle: dict[Origin, deque[Connection]] = {}
        self._opened = 0
        self._reused = 0
        self._closed = False

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the idle connections (:meth:`aclose`), shielded from cancellation."""
        with trio.CancelScope(shield=True):
            await self.aclose()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(insecure=self._insecure)
        return self._ssl_context

    def statistics(self) -> TransportStats:
        idle = sum(len(conns) for conns in self._idle.values())
        return TransportStats(
            connections_opened=self._opened,
            connections_reused=self._reused,
            connections_open=self._max_connections - self._slots.value,
            connections_idle=idle,
        )

    async def open(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_length: int | None = 0,
        fresh: bool = False,
    ) -> Exchange:
        """Send a request head and return the exchange, its body still to be written.

        Args:
            content_length: ``0`` = no body (the request is complete at once); ``None`` =
                a streaming body (chunked), written with :meth:`Exchange.send` and ended
                with :meth:`Exchange.end`; ``n`` = exactly ``n`` bytes will follow.
            fresh: never reuse a pooled connection (a retry after a failure).

        Raises:
            TransportError, TransportTimeout: connecting or sending the head failed.
            ValueError: the URL or a header cannot be sent.

        Cancellation: no exchange is returned; a connection opened or taken from the pool
        for it is closed (a head cut short leaves nothing half-sent to reuse).
        """
        origin, target = split_url(url)
        all_headers = [
            ("Host", origin.host_header),
            ("User-Agent", USER_AGENT),
            *self.headers,
            *headers,
        ]
        if content_length is None:
            all_headers.append(("Transfer-Encoding", "chunked"))
        elif content_length or method not in ("GET", "HEAD", "DELETE"):
            all_headers.append(("Content-Length", str(content_length)))
        try:
            request = h11.Request(method=method, target=target, headers=all_headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send {method} {url}: {exc}") from None
        conn = None if fresh else await self._checkout(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin, url)
        exchange = Exchange(conn, url, self.timeouts, reused=reused, checkin=self._checkin)
        try:
            await exchange.send_head(request)
            if content_length == 0:
                await exchange.end()
        except BaseException:
            await exchange.aclose()
            raise
        return exchange

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        max_body: int = MAX_SMALL_BODY,
    ) -> Response:
        """One whole request and its whole (small) response.

        A pooled connection that turns out dead before any answer is retried once on a
        fresh one. The body is read up to ``max_body`` bytes.

        Raises:
            TransportError, TransportTimeout.

        Cancellation: the request is abandoned and its connection closed, not pooled
        (a request body cut short is visible to the server as an aborted connection).
        """
        for attempt in (1, 2):
            exchange = await self.open(method, url, headers, content_length=len(body))
            try:
                if body:
                    await exchange.send(body)
                    await exchange.end()
                head = await exchange.read_head()
                data = await exchange.read_body(max_body)
                return Response(head, data)
            except TransportTimeout:
                raise
            except TransportError:
                if attempt == 2 or not exchange.reused or exchange.head is not None:
                    raise
                logger.debug("stale pooled connection, retrying url=%s", url)
            finally:
                await exchange.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close with their exchange.
        Later check-ins close their connection instead of pooling it.

        Cancellation: the pool is closed at once; the idle connections are closed even so
        (each with ``trio.aclose_forcefully``).
        """
        self._closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in idle:
            await conn.aclose()

    # -- the pool ---------------------------------------------------------------------------

    async def _checkout(self, origin: Origin) -> Connection | None:
        conns = self._idle.get(origin)
        now = trio.current_time()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since > self._keepalive_expiry or conn.dropped_while_idle():
                await conn.aclose()
                continue
            self._reused += 1
            return conn
        await trio.lowlevel.checkpoint()
        return None

    async def _checkin(self, conn: Connection) -> None:
        if self._closed:
            await conn.aclose()
            return
        conn.idle_since = trio.current_time()
        conns = self._idle.setdefault(conn.origin, deque())
        conns.append(conn)
        while len(conns) > self._max_idle:
            await conns.popleft().aclose()
        await trio.lowlevel.checkpoint()

    async def _make_room(self) -> None:
        """Close the oldest idle connection if every slot is taken."""
        if self._slots.value == 0:
            oldest: deque[Connection] | None = None
            for conns in self._idle.values():
                if conns and (oldest is None or conns[0].idle_since < oldest[0].idle_since):
                    oldest = conns
            if oldest is not None:
                await oldest.popleft().aclose()
        await trio.lowlevel.checkpoint()

    async def _connect(self, origin: Origin, url: str) -> Connection:
        timeout = self.timeouts.connect
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await self._make_room()
            await self._slots.acquire()
            try:
                with transport_errors(url):
                    stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                    if origin.scheme == "https":
                        tls = trio.SSLStream(
                            stream,
                            self.ssl_context,
                            server_hostname=origin.host,
                            https_compatible=True,
                        )
                        try:
                            await tls.do_handshake()
                        except BaseException:
                            await trio.aclose_forcefully(stream)
                            raise
                        stream = tls
            except BaseException:
                self._slots.release()
                raise
            self._opened += 1
            return Connection(stream, origin, self._slots)
        assert scope.cancelled_caught
        raise TransportTimeout("connect", url)


@asynccontextmanager
async def use_transport(
    transport: Transport | None,
    *,
    timeouts: Timeouts | None = None,
    insecure: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> AsyncIterator[Transport]:
    """``transport`` itself if given (its owner closes it), else a new one made from the
    options and closed when the block ends.

    Cancellation: the transport made here is closed even so (shielded).
    """
    if transport is not None:
        yield transport
        return
    async with Transport(
        timeouts=timeouts, insecure=insecure, ssl_context=ssl_context, headers=headers
    ) as own:
        yield own


@asynccontextmanager
async def open_client(
    transport: Transport | None,
    *,
    timeouts: Timeouts | None,
    insecure: bool,
    ssl_context: ssl.SSLContext | None,
    headers: Iterable[tuple[str, str]],
) -> AsyncIterator[tuple[Transport, trio.Nursery]]:
    """What an HTTP client runs in: its transport (:func:`use_transport`) and the nursery
    of its background tasks, whose one error comes out unwrapped.

    Cancellation: the nursery's tasks are cancelled and waited for, then a transport made
    here is closed (shielded).
    """
    async with (
        use_transport(
            transport,
            timeouts=timeouts,
            insecure=insecure,
            ssl_context=ssl_context,
            headers=headers,
        ) as own,
        open_client_nursery() as nursery,
    ):
        yield own, nursery
