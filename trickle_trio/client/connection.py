"""One request and its response on one client connection: h11 over a trio stream.

A :class:`Connection` is a socket (TCP or TLS) and its h11 state; an :class:`Exchange`
is one request on it. Neither knows the pool (:mod:`.transport`): the pool hands an
exchange the connection and a ``checkin`` callback, and the exchange gives the connection
back through it.

Rules of this file:

1. A connection carries one request at a time (no pipelining). An :class:`Exchange` owns
   its connection until :meth:`Exchange.aclose`; only an exchange that finished cleanly
   in both directions, with keep-alive, hands the connection to ``checkin``.
2. Full duplex: one task may write the request body while another reads the response. A
   final response that arrives while the body is still open (an early 404 or
   ``Lp-Trickle-Closed`` to an idle preconnect) is seen at once; a write in progress is
   cancelled and later writes raise :class:`~.http.ResponseArrived`.
3. Each phase keeps its own deadline of :class:`~.http.Timeouts`.

Imports: stdlib, trio, h11 and the sibling ``http`` module.
"""

from __future__ import annotations

import math
import select
from collections.abc import Awaitable, Callable
from typing import Final

import h11
import trio

from .http import (
    MAX_SMALL_BODY,
    Headers,
    Origin,
    ResponseArrived,
    ResponseHead,
    Timeouts,
    TransportError,
    TransportTimeout,
    transport_errors,
)

__all__ = ["END_GRACE", "Connection", "Exchange"]

_RECEIVE_SIZE: Final = 65536
#: Seconds :meth:`Exchange.end` goes on writing after a cancellation (no ``write`` deadline).
END_GRACE: Final = 10.0

#: Takes back the connection of an exchange that finished cleanly (the pool's check-in).
Checkin = Callable[["Connection"], Awaitable[None]]


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    return None


def _readable_now(fd: int) -> bool:  # sync on purpose
    """True if ``fd`` has bytes (or an end of stream, or an error) to read right now.

    ``poll`` has no limit on the descriptor's number; ``select`` raises ValueError for
    one at or above ``FD_SETSIZE`` (1024), which a busy process reaches: every idle
    connection would then look dropped and none would be reused. ``select`` is only
    the fallback where there is no ``poll`` (Windows).
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


class Connection:
    """One h11 client connection on a trio stream (TCP or TLS)."""

    __slots__ = ("_release", "h11", "idle_since", "origin", "stream")

    def __init__(self, stream: trio.abc.Stream, origin: Origin, release: trio.Semaphore) -> None:
        self.stream = stream
        self.origin = origin
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self._release: trio.Semaphore | None = release

    async def send(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> None:
        """Write ``event``'s bytes.

        Cancellation: the bytes may be half-written; h11 counts them as sent, so the
        connection is unusable (its exchange closes it).
        """
        for piece in self.h11.send_with_data_passthrough(event) or ():
            await self.stream.send_all(piece)

    async def receive_event(self) -> object:
        """The next h11 event, reading from the socket as needed.

        Cancellation: safe between reads (h11 keeps what arrived), but an exchange cut
        mid-response is not clean, and its connection is closed, not reused.
        """
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                self.h11.receive_data(data if isinstance(data, bytes) else bytes(data))
                continue
            return event

    def dropped_while_idle(self) -> bool:  # sync on purpose
        """True if the peer closed (or wrote to) this idle connection."""
        sock = _socket_of(self.stream)
        if sock is None:
            return False
        try:
            return _readable_now(sock.fileno())
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        """Close at once (no TLS close_notify wait); safe to call twice.

        Cancellation: the socket is closed even so (``trio.aclose_forcefully``).
        """
        if self._release is not None:
            self._release.release()
            self._release = None
        await trio.aclose_forcefully(self.stream)


class Exchange:
    """One request and its response on one connection, both streamed.

    The request head goes first (:meth:`send_head`), then the body and the response.
    Concurrency: one task at a time may write (:meth:`send_head`, :meth:`send`,
    :meth:`end`) and one task at a time may read (:meth:`read_head`, :meth:`read_chunk`);
    the two may overlap. Cancelling a read or a write in the middle leaves the connection
    unusable: it is closed (not handed to ``checkin``) by :meth:`aclose`.

    Args:
        conn: the connection, owned by the exchange until :meth:`aclose`.
        url: the request's URL (for error messages).
        timeouts: the per-phase deadlines.
        reused: the connection carried an earlier exchange (it may be stale).
        checkin: takes the connection back after a clean exchange; ``None`` closes it.
    """

    def __init__(
        self,
        conn: Connection,
        url: str,
        timeouts: Timeouts,
        *,
        reused: bool = False,
        checkin: Checkin | None = None,
    ) -> None:
        self.url = url
        self.reused = reused
        #: The final response's head, once it has arrived.
        self.head: ResponseHead | None = None
        #: True if the final response arrived before the request body ended.
        self.early = False
        self._checkin = checkin
        self._conn = conn
        self._timeouts = timeouts
        self._body_ended_at: float | None = None
        self._head_scope: trio.CancelScope | None = None
        self._write_scope: trio.CancelScope | None = None
        self._writing_clean = True
        self._reading_clean = True
        self._response_done = False
        self._closed = False

    @property
    def body_ended(self) -> bool:
        """The request body was ended (:meth:`end` returned)."""
        return self._body_ended_at is not None

    @property
    def response_done(self) -> bool:
        """The whole response body has been read."""
        return self._response_done

    # -- writing ----------------------------------------------------------------------------

    async def send_head(self, request: h11.Request) -> None:
        """Write the request's status line and headers. Same errors as :meth:`send`.

        Cancellation: as :meth:`send`: a head cut short leaves the connection unusable
        (closed, not reused, by :meth:`aclose`).
        """
        await self._write(request)

    async def send(self, data: bytes) -> None:
        """Write one chunk of the request body.

        Raises:
            ResponseArrived: the server already answered; the body cannot go on.
            TransportTimeout: the ``write`` deadline passed.
            TransportError: the connection broke.

        Cancellation: the chunk may be half-written; the connection will not be reused.
        """
        if data:
            await self._write(h11.Data(data=data))
        else:
            await trio.lowlevel.checkpoint()

    async def end(self) -> None:
        """End the request body; the ``first_byte`` deadline starts now. Same errors as send.

        Cancellation: once begun, the end of the body is written even if the caller is
        cancelled meanwhile (it may wait behind body bytes the server has not read yet),
        for up to the ``write`` deadline or :data:`END_GRACE` seconds; the cancellation
        is delivered afterwards. A body is never left cut just before its end.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        grace = self._timeouts.write
        with trio.move_on_after(END_GRACE if grace is None else grace, shield=True):
            await self._write(h11.EndOfMessage())
        if not self._writing_clean:
            raise TransportTimeout("write", self.url)
        self._body_ended_at = trio.current_time()
        self._set_head_deadline()

    async def _write(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> None:
        if self.head is not None:
            raise ResponseArrived(self.head, self.url)
        if self._closed or not self._writing_clean:
            raise TransportError(f"{self.url}: request already failed or closed")
        # A cancellation that lands before the first byte leaves the connection clean.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._writing_clean = False
        timeout = self._timeouts.write
        with trio.CancelScope() as scope:
            if timeout is not None:
                scope.deadline = trio.current_time() + timeout
            self._write_scope = scope
            try:
                with transport_errors(self.url):
                    await self._conn.send(event)
            except TransportError:
                if self.head is not None:
                    raise ResponseArrived(self.head, self.url) from None
                raise
            finally:
                self._write_scope = None
        if scope.cancelled_caught:
            if self.head is not None:
                raise ResponseArrived(self.head, self.url)
            raise TransportTimeout("write", self.url)
        self._writing_clean = True

    # -- reading ----------------------------------------------------------------------------

    def _set_head_deadline(self) -> None:  # sync on purpose
        timeout = self._timeouts.first_byte
        if self._head_scope is not None and self._body_ended_at is not None and timeout is not None:
            self._head_scope.deadline = self._body_ended_at + timeout

    async def read_head(self) -> ResponseHead:
        """Wait for the final response's status line and headers (1xx are skipped).

        A final response that comes while the body is still open cancels the write in
        progress (full duplex: the early answer is seen at once).

        Raises:
            TransportTimeout: ``first_byte`` passed since the body ended.
            TransportError: the connection broke or the response is malformed.

        Cancellation: a head not yet complete is abandoned and the connection will not be
        reused (closed by :meth:`aclose`); the request body, if open, is left as it is.
        """
        if self.head is not None:
            await trio.lowlevel.checkpoint()
            return self.head
        self._reading_clean = False
        response: h11.Response | None = None
        with trio.CancelScope() as scope:
            self._head_scope = scope
            self._set_head_deadline()
            try:
                with transport_errors(self.url):
                    while response is None:
                        event = await self._conn.receive_event()
                        if isinstance(event, h11.Response):
                            response = event
                        elif not isinstance(event, h11.InformationalResponse):
                            # (1xx are skipped: the reference's 100 Continue keepalives)
                            raise TransportError(
                                f"{self.url}: connection closed before the response"
                            )
            finally:
                self._head_scope = None
        if response is None:
            raise TransportTimeout("first_byte", self.url)
        self._reading_clean = True
        self.head = ResponseHead(
            status=response.status_code,
            reason=response.reason.decode("latin-1"),
            headers=Headers(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in response.headers.raw_items()
            ),
        )
        # Early = before the end of the body was handed to h11. (Not "before end()
        # returned": the answer to a complete body can come while the writer is still
        # in the checkpoint that follows its last send.)
        if self._conn.h11.our_state is h11.SEND_BODY:
            self.early = True
            if self._write_scope is not None:
                self._write_scope.cancel()
        return self.head

    async def read_chunk(self) -> bytes:
        """The next chunk of the response body; ``b""`` once it has ended.

        Raises:
            TransportTimeout: ``between_chunks`` passed without a chunk.
            TransportError: the connection broke mid-body.

        Cancellation: no chunk is lost (none was taken from h11), but the response is cut:
        the connection is closed, not reused, by :meth:`aclose`.
        """
        await self.read_head()
        if self._response_done:
            return b""
        self._reading_clean = False
        timeout = self._timeouts.between_chunks
        with trio.move_on_after(math.inf if timeout is None else timeout):
            with transport_errors(self.url):
                while True:
                    event = await self._conn.receive_event()
                    if isinstance(event, h11.Data):
                        if event.data:
                            self._reading_clean = True
                            return bytes(event.data)
                        continue
                    if isinstance(event, h11.EndOfMessage):
                        self._reading_clean = True
                        self._response_done = True
                        return b""
                    raise TransportError(f"{self.url}: connection closed mid-response")
        raise TransportTimeout("between_chunks", self.url)

    async def read_body(self, limit: int = MAX_SMALL_BODY) -> bytes:
        """The rest of the response body, up to ``limit`` bytes (the rest is dropped).

        Cancellation: what was read is lost, and the connection is not reused.
        """
        parts: list[bytes] = []
        size = 0
        while size <= limit and (chunk := await self.read_chunk()):
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)[:limit]

    # -- closing ----------------------------------------------------------------------------

    def _reusable(self) -> bool:
        state = self._conn.h11
        return (
            self._writing_clean
            and self._reading_clean
            and self._response_done
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
        )

    async def aclose(self) -> None:
        """Hand the connection back to the pool if the exchange finished cleanly, else
        close it. Safe to call twice, and from another task than a pending read or
        write (which then fails with :class:`TransportError`).

        Cancellation: closing is not interrupted by it in effect: the connection is
        either checked in or closed (``trio.aclose_forcefully``) before it is delivered.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._checkin is not None and self._reusable():
            self._conn.h11.start_next_cycle()
            await self._checkin(self._conn)
        else:
            await self._conn.aclose()
