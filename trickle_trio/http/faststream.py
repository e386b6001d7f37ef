"""The fast path's HTTP/1.1 protocol and stream: hypercorn's classes, leaner per message.

Part of the fast path (:mod:`trickle_trio.http.fastpath` installs it and owns the
connection). :class:`FastH11Protocol` writes each :class:`Batch` of stream events in one
go without copies, frames a chunk in the middle of a chunked response itself, and
decodes a taken-over chunked request body with
:class:`~trickle_trio.core.chunked.ChunkedBody`. :class:`FastHTTPStream` holds a
response's head until its first body message and offers the app the three ASGI
extensions below.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio
from h11._readers import ChunkedReader
from h11._writers import ChunkedWriter
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Request as StreamRequest
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.utils import build_and_validate_headers, suppress_body

from ..core.chunked import BadChunk, ChunkedBody

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
#: ASGI scope extension of a request without a body: ``{"send": f}``; ``await f(parts,
#: more_body)`` sends ``parts`` (bytes, in order) as the response's next body bytes,
#: exactly as one ``http.response.body`` message with their concatenation would, but
#: without joining them: they leave in one ``writev``.
PARTS_EXTENSION = "trickle.body_parts"
#: ASGI scope extension of a request without a body, on a plain (not TLS) connection:
#: ``{"try_send": f, "flush": g}``. ``f(parts)`` is a synchronous ``PARTS_EXTENSION``
#: send with ``more_body`` that never waits: it returns 0 when it sent nothing (no
#: response body under way, another write in progress, the socket full or broken: send
#: through the awaited path instead), 1 when the parts were sent, 2 when they were
#: taken but only partly written: then ``await g()`` must follow, which writes the rest.
#: It lets a subscriber be written to from the task that produced the bytes.
PUSH_EXTENSION = "trickle.push_parts"


@dataclass(frozen=True)
class WriteParts(Event):
    """Bytes to write to the connection in one go, in order (TCP-server level event)."""

    parts: Sequence[bytes]


@dataclass(frozen=True)
class Batch(StreamEvent):
    """Stream events produced by one ASGI message, to be written together."""

    events: tuple[StreamEvent, ...]


@dataclass(frozen=True)
class BodyParts(StreamEvent):
    """Body bytes in pieces, in order, to be sent as if joined (one chunk when chunked)."""

    parts: Sequence[bytes]


class FastH11Protocol(H11Protocol):
    """hypercorn's H11Protocol, writing each :class:`Batch` in one go without copies,
    and decoding a taken-over chunked body itself (see :data:`BODY_EXTENSION`)."""

    _body: ChunkedBody | None = None
    #: The connection's writer (``FastTCPServer._write``), for :meth:`send_chunk`.
    write_parts: Callable[[Sequence[bytes]], Awaitable[None]] | None = None
    #: The connection's non-waiting writer (``FastTCPServer.try_write``; None on TLS).
    try_write: Callable[[Sequence[bytes]], int] | None = None

    def try_chunk(self, parts: Sequence[bytes]) -> int:
        """:meth:`send_chunk` without waiting: ``FastTCPServer.try_write``'s 0/1/2.

        0 unless h11 is in the middle of a chunked response body (see send_chunk).
        """
        try_write = self.try_write
        framed: list[bytes] = []
        if try_write is None or not _frame_chunk(self.connection, parts, framed):
            return 0
        return try_write(framed) if framed else 1

    async def flush(self) -> None:
        """Write what :meth:`try_chunk` left unwritten: an empty write sends the
        connection's backlog (``FastTCPServer._write``), waiting for the socket."""
        await self.send(WriteParts(()))

    async def send_chunk(self, parts: Sequence[bytes]) -> None:
        """Send ``parts`` as the next chunk of the response being sent (nothing if they
        hold no bytes: an empty chunk would end the response).

        With h11 in the middle of a chunked response body (its usual state for a
        streaming GET), the parts are framed here as one chunk and written at once:
        h11 keeps no state for a chunk of body, so there is nothing to tell it.
        Otherwise (HTTP/1.0, Content-Length, an error state) they go through h11 like
        any other event.
        """
        write = self.write_parts
        framed: list[bytes] = []
        if write is not None and _frame_chunk(self.connection, parts, framed):
            if framed:
                await write(framed)
            return
        await self.stream_send(Batch(STREAM_ID, (BodyParts(STREAM_ID, parts),)))

    async def handle(self, event: Event) -> None:
        if type(event) is RawData:
            if self._body is None and self._can_take_body():
                self._body = ChunkedBody(self.config.h11_max_incomplete_size)
            if self._body is not None:
                try:
                    rest = self.feed_body(event.data)
                except BadChunk:
                    await self.body_failed()
                    return
                if rest is None:
                    return
                event = RawData(data=rest)
        await super().handle(event)

    @property
    def decoding_body(self) -> bool:
        """True while the request body is decoded here (see :meth:`feed_body`)."""
        return self._body is not None

    def feed_body(self, data: bytes) -> bytes | None:
        """Decode ``data`` as more of the body being decoded here (synchronously: the
        reactor calls this too). None: all consumed, the body goes on. Else the bytes
        from the last-chunk line on, for h11 (``handle(RawData(rest))``). Raises
        BadChunk (then :meth:`body_failed` must follow)."""
        body = self._body
        assert body is not None
        try:
            rest = body.feed(data, self._deliver)
        except BadChunk:
            self._body = None
            raise
        if rest is not None:
            self._body = None  # the last chunk: h11 reads the rest
        return rest

    async def body_failed(self) -> None:
        """Answer malformed body framing as hypercorn answers h11's RemoteProtocolError."""
        if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            await self._send_error_response(400)
        await self.send(Closed())

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
            if type(item) is BodyParts:
                if _frame_chunk(connection, item.parts, parts):
                    continue
                # Not chunked (HTTP/1.0, Content-Length): h11 must count every piece.
                if not all(
                    self._send_h11(connection, h11.Data(data=part), parts) for part in item.parts
                ):
                    break
                continue
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
            if not self._send_h11(connection, h11_event, parts):
                break
        if parts:
            await self.send(WriteParts(parts))

    @staticmethod
    def _send_h11(connection: h11.Connection, event: Any, parts: list[bytes]) -> bool:
        """Add h11's bytes for ``event`` to ``parts``; False: nothing more may be sent."""
        try:
            data = connection.send_with_data_passthrough(event)
        except h11.LocalProtocolError:
            # As hypercorn: a client that broke its own request gets nothing more.
            if connection.their_state != h11.ERROR:
                raise
            return False
        if data:
            parts.extend(data)
        return True

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
        if self.try_write is not None:
            self.stream.try_chunk = self.try_chunk
            self.stream.flush = self.flush
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


def _frame_chunk(connection: Any, pieces: Sequence[bytes], out: list[bytes]) -> bool:
    """Add ``pieces`` to ``out`` framed as one chunk, if h11 is in the middle of a
    chunked body (True; nothing added for no bytes: an empty chunk would end the body).

    h11 keeps no state for a chunk of body (its ChunkedWriter only frames), so there is
    nothing to tell it. False when the body is not chunked: then h11 must see each piece.
    """
    if connection.our_state is not h11.SEND_BODY or (
        type(getattr(connection, "_writer", None)) is not ChunkedWriter
    ):
        return False
    size = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
    if size:
        out.append(b"%x\r\n" % size)
        out.extend(pieces)
        out.append(b"\r\n")
    return True


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
    send_chunk: Callable[[Sequence[bytes]], Awaitable[None]] | None = None
    #: Writes one chunk without waiting (set by FastH11Protocol on plain connections).
    try_chunk: Callable[[Sequence[bytes]], int] | None = None
    #: Writes what ``try_chunk`` left (set with it).
    flush: Callable[[], Awaitable[None]] | None = None
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
                extensions = self.scope["extensions"]
                extensions[DISCONNECT_EXTENSION] = {"cancel_on_close": self._cancel_on_close}
                extensions[PARTS_EXTENSION] = {"send": self._send_parts}
                if self.try_chunk is not None:
                    extensions[PUSH_EXTENSION] = {"try_send": self._try_send, "flush": self.flush}
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
            extensions.pop(PARTS_EXTENSION, None)
            extensions.pop(PUSH_EXTENSION, None)
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
                        await self.send_chunk((body if type(body) is bytes else bytes(body),))
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

    async def _send_parts(self, parts: Sequence[bytes], more_body: bool) -> None:
        """``PARTS_EXTENSION``: one body message made of ``parts``, never joined."""
        if self.state != ASGIHTTPState.RESPONSE or self.closed:
            body = b"".join(parts)  # not streaming a response: as the message would go
            await self.app_send(
                {"type": "http.response.body", "body": body, "more_body": more_body}
            )
            return
        if self._held is None and more_body and not self._bare:
            if parts and self.send_chunk is not None:
                await self.send_chunk(parts)
            return
        await self._send_pieces(parts, more_body=more_body)

    def _try_send(self, parts: Sequence[bytes]) -> int:
        """``PUSH_EXTENSION``: the next chunk of a streaming body, now or not at all."""
        try_chunk = self.try_chunk
        if (
            try_chunk is None
            or self.state != ASGIHTTPState.RESPONSE
            or self.closed
            or self._held is not None
            or self._bare
        ):
            return 0
        return try_chunk(parts)

    async def _send_body(self, message: Any) -> None:
        body = message.get("body", b"")
        pieces = [body if type(body) is bytes else bytes(body)] if body else []
        await self._send_pieces(pieces, more_body=message.get("more_body", False))

    async def _send_pieces(self, pieces: Sequence[bytes], *, more_body: bool) -> None:
        events: list[StreamEvent] = []
        if self._held is not None:
            events.append(self._held)
            self._held = None
        if pieces and not self._bare:
            events.append(BodyParts(self.stream_id, pieces))
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
