"""The segment hot path, ``POST /{ch}/{seq}`` and ``GET /{ch}/{seq}``, as raw ASGI.

Installed in front of the Quart app (``app.asgi_app = SegmentStreams(app.asgi_app, ..)``)
so that segment bodies stream without Quart's response/body timeouts or its body
buffer, hypercorn's backpressure is kept, and a GET's status line and headers go out
with its first byte. Everything else falls through to Quart.

Each handler holds a lease of the channel's cancel scopes (``channels.TaskScopes``) for
as long as it serves the channel, including its last response, so that a DELETE can
order the teardown: every subscriber's terminal response first, then the publishers'.

Imports: trio, hypercorn's ASGI types, ``core``, ``channels``, and the sibling helpers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from ..channels import Channel, ReadResult
from ..core import wire
from ..core.errors import ChannelClosedError, LimitExceededError
from ..core.routing import Kind, Route
from ..publishing import PublisherGone, PublishOutcome, SegmentWriter, TakeBody
from .extensions import BODY_EXTENSION, DISCONNECT_EXTENSION, PARTS_EXTENSION, PUSH_EXTENSION
from .hooks import HookFailed, HookRequest, run_hook
from .live import LIVE, LiveOptions, LiveQueryError, parse_live_query, serve_live
from .responses import CLOSED, CONNECTION_CLOSE, header, send_error, send_response
from .state import ServerState

logger = logging.getLogger(__name__)

_CONTENT_TYPE = b"content-type"


class SegmentStreams:
    """ASGI middleware serving segment POSTs and GETs; the rest goes to ``app``."""

    def __init__(self, app: ASGIFramework, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            route = self.state.route(scope)  # decided by the guard, in front of this layer
            if isinstance(route, Route) and route.kind is Kind.SEGMENT:
                await self._serve(scope, receive, send, route)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        scope: Any,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        route: Route,
    ) -> None:
        assert route.channel is not None
        assert route.seq is not None
        live_options: LiveOptions | None = None
        seq = 0
        if route.seq == LIVE and scope["method"] == "GET":
            try:
                live_options = parse_live_query(scope.get("query_string", b""))
            except LiveQueryError as exc:
                await self._error(send, 400, str(exc))
                return
        else:
            try:
                seq = wire.parse_seq(route.seq)
            except wire.InvalidSeq:
                await self._error(send, 400, wire.INVALID_IDX)
                return
        try:
            name = wire.check_channel_name(
                route.channel, max_length=self.state.settings.max_name_length
            )
        except wire.InvalidChannelName:
            await self._error(send, 400, "Invalid channel name")
            return
        if name in self.state.reserved:
            await self._error(send, 400, "Reserved channel name")
            return
        registry = self.state.registry
        if registry is None:
            await self._error(send, 503, "Server not ready")
            return
        if scope["method"] == "GET":
            channel = registry.get(name)
            if channel is None:
                await self._error(send, 404, wire.STREAM_NOT_FOUND)
                return
            extensions = scope.get("extensions", {})
            watch = extensions.get(DISCONNECT_EXTENSION)
            parts = extensions.get(PARTS_EXTENSION)
            push = extensions.get(PUSH_EXTENSION)
            if live_options is not None:
                await serve_live(
                    channel,
                    live_options,
                    receive,
                    send,
                    cancel_on_close=watch["cancel_on_close"] if watch else None,
                    send_parts=parts["send"] if parts else None,
                )
                return
            await serve_subscriber(
                channel,
                seq,
                receive,
                send,
                self.state,
                cancel_on_close=watch["cancel_on_close"] if watch else None,
                send_parts=parts["send"] if parts else None,
                push=(push["try_send"], push["flush"]) if push and parts else None,
            )
            return

        if seq < wire.SEQ_NEXT:
            await self._error(send, 400, wire.INVALID_IDX)
            return
        channel = registry.get(name)
        if channel is None and self.state.settings.autocreate:
            try:
                await run_hook(self.state.settings.before_create, hook_request(scope), name)
            except HookFailed as exc:
                await self._error(send, exc.status, exc.message, [CONNECTION_CLOSE])
                return
            try:
                channel = registry.create(name, header_value(scope, _CONTENT_TYPE))
            except LimitExceededError as exc:
                await self._error(send, exc.status, exc.message, [CONNECTION_CLOSE])
                return
        if channel is None:
            # Connection: close wakes up a Go publisher's idle preconnect at once.
            await self._error(send, 404, wire.STREAM_NOT_FOUND, [CONNECTION_CLOSE])
            return
        reset = bool(header_value(scope, b"lp-trickle-reset"))
        offer = scope.get("extensions", {}).get(BODY_EXTENSION)
        take_body = offer["take_body"] if offer else None
        await serve_publisher(channel, seq, receive, send, reset=reset, take_body=take_body)

    async def _error(
        self,
        send: ASGISendCallable,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        registry = self.state.registry
        counts = registry.metrics.responses if registry is not None else None
        await send_error(send, status, message, headers or (), counts=counts)


#: ``await send_parts(parts, more_body)``: the fast path's ``PARTS_EXTENSION``.
SendParts = Callable[[Sequence[bytes], bool], Awaitable[None]]
#: ``(try_send, flush)``: the fast path's ``PUSH_EXTENSION``.
Push = tuple[Callable[[Sequence[bytes]], int], Callable[[], Awaitable[None]]]


def header_value(scope: Any, name: bytes) -> str:
    """The last value of request header ``name`` (lower-case bytes), or ``""``."""
    value = b""
    for key, val in scope["headers"]:
        if key.lower() == name:
            value = val
    return str(value.decode("latin-1"))


def hook_request(scope: Any) -> HookRequest:
    headers = {
        key.decode("latin-1").lower(): val.decode("latin-1") for key, val in scope["headers"]
    }
    client = scope.get("client")
    return HookRequest(
        method=scope["method"],
        path=scope["path"],
        headers=headers,
        client=tuple(client) if client else None,
    )


async def refuse(
    send: ASGISendCallable,
    channel: Channel,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer an error the way Go's ``http.Error`` does, and count it."""
    await send_error(send, status, message, headers or (), counts=channel.metrics.responses)


# -- publish -----------------------------------------------------------------------------


async def serve_publisher(
    channel: Channel,
    seq: int,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    *,
    reset: bool = False,
    take_body: TakeBody | None = None,
) -> None:
    """Stream a POST body into segment ``seq`` (``-1`` = next write) and answer it.

    The answer: 200 + ``Lp-Trickle-Seq``; with ``Connection: close`` when the segment
    ended empty or was released before its first byte, plus ``Lp-Trickle-Closed`` when
    the channel is closed. Nothing is sent to a publisher whose connection broke. Limits:
    413 when the segment reached ``max_segment_bytes`` (closed at the limit), 408 when a
    preconnect idled past ``preconnect_timeout``, 429 for too many publishers.
    ``take_body`` is the fast path's offer to write the body into the segment from the
    connection's reader (see ``SegmentWriter.pump``).

    Cancellation: by the channel's teardown (via the lease): answered as closed. Any
    other cancellation propagates after the segment is closed with what was written.
    """
    try:
        lease = channel.publishers.lease()
    except ChannelClosedError:
        # Deleted since it was looked up: answered as for a channel that never existed.
        await refuse(send, channel, 404, wire.STREAM_NOT_FOUND, [CONNECTION_CLOSE])
        return
    except LimitExceededError as exc:
        await refuse(send, channel, exc.status, exc.message, [CONNECTION_CLOSE])
        return
    with lease as scope:
        outcome = PublishOutcome.CHANNEL_CLOSED  # if the lease is cancelled
        answered_seq = seq
        with scope:
            read_chunk = _body_reader(receive)
            if channel.state.parks(seq):
                # Far ahead of the live edge, where it would push a segment out of the
                # window: no segment until the body's first byte (a flood of idle
                # far-ahead preconnects must not evict the channel's readable segments).
                read_chunk = await _wait_first_byte(read_chunk, channel)
            if read_chunk is PublisherGone:
                outcome = PublishOutcome.ABORTED
            elif read_chunk is None:
                outcome = PublishOutcome.TIMED_OUT
            elif not channel.closed:
                writer = SegmentWriter(channel, channel.segment_for_write(seq, reset=reset))
                answered_seq = writer.seq
                outcome = await writer.pump(read_chunk, take_body)
        await _answer_publisher(send, channel, answered_seq, outcome)


async def _wait_first_byte(read_chunk: Any, channel: Channel) -> Any:
    """Wait for the first bytes (or the end) of a body; return a ``read_chunk`` that
    gives them first, or None when the channel's ``preconnect_timeout`` (0 = none)
    passed with nothing.

    Returns ``PublisherGone`` itself when the client left.
    Cancellation: propagates; what was read is dropped with the request.
    """
    first: bytes | None = b""
    with trio.move_on_after(channel.limits.preconnect_timeout or math.inf) as waited:
        try:
            first = await read_chunk()
            while first is not None and not first:
                first = await read_chunk()
        except PublisherGone:
            return PublisherGone
    if waited.cancelled_caught:
        return None
    pending = [first]

    async def replay() -> bytes | None:
        if pending:
            return pending.pop()
        chunk: bytes | None = await read_chunk()
        return chunk

    return replay


def _body_reader(receive: ASGIReceiveCallable) -> Any:
    more_body = True

    async def read_chunk() -> bytes | None:
        nonlocal more_body
        if not more_body:
            return None
        message: Any = await receive()
        if message["type"] == "http.request":
            more_body = message.get("more_body", False)
            body: bytes = message.get("body", b"")
            return body
        raise PublisherGone

    return read_chunk


async def _answer_publisher(
    send: ASGISendCallable, channel: Channel, seq: int, outcome: PublishOutcome | None
) -> None:
    if outcome is PublishOutcome.ABORTED:
        return
    if channel.closed:
        # No publisher of a deleted channel is answered before every subscriber that was
        # attached has started its terminal response (PROTOCOL.md, DELETE ordering).
        await channel.wait_settled()
    headers = [header(wire.SEQ_HEADER, seq)]
    if outcome is PublishOutcome.TOO_LARGE:
        await refuse(send, channel, 413, "Segment too large", [*headers, CONNECTION_CLOSE])
        return
    if outcome is PublishOutcome.TIMED_OUT:
        await refuse(send, channel, 408, "Preconnect timed out", [*headers, CONNECTION_CLOSE])
        return
    if outcome is not PublishOutcome.COMPLETE:
        if channel.closed:
            headers.append(CLOSED)
        headers.append(CONNECTION_CLOSE)
    await send_response(send, 200, b"", headers)


# -- subscribe ---------------------------------------------------------------------------


async def serve_subscriber(
    channel: Channel,
    seq: int,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    state: ServerState | None = None,
    *,
    cancel_on_close: Callable[[trio.CancelScope], None] | None = None,
    send_parts: SendParts | None = None,
    push: Push | None = None,
) -> None:
    """Answer a GET for segment ``seq`` (``-1``/``-2``/``-N`` allowed).

    Not in the window: 470 with ``Lp-Trickle-Latest``/``Lp-Trickle-Seq`` (200 with
    ``Lp-Trickle-Closed`` if the channel is closed). Otherwise the segment streams from
    byte 0; the status line and headers go out with the first byte, and a segment that
    closes with no bytes gets an empty 200 (with ``Lp-Trickle-Closed`` at end of stream).

    Cancellation: by the channel's teardown (via the lease): the response is ended (an
    empty 200 + ``Lp-Trickle-Closed`` if nothing was sent yet). A client that goes away
    cancels the handler at once; nothing more is sent. While the server drains
    (``state.draining``) the terminal response also says ``Connection: close``, so that
    no idle keep-alive connection holds hypercorn's shutdown up. The client leaving is
    noticed through ``cancel_on_close`` when the server offers it (the fast path's
    ``DISCONNECT_EXTENSION``), else by a task reading ``receive()``. Chunks that wait
    for this reader leave through ``send_parts`` as they are when the server offers it
    (``PARTS_EXTENSION``), else joined into one body message. Once the head is out,
    the chunks that follow are written by the publisher's task as it appends them when
    the server offers ``push`` (``PUSH_EXTENSION``, with ``send_parts``); this task then
    wakes only when that stops (the segment ended, a write could not complete at once).
    """
    try:
        lease = channel.subscribers.lease()
    except LimitExceededError as exc:
        await refuse(send, channel, exc.status, exc.message)
        return
    except ChannelClosedError:
        # Deleted since it was looked up: answered as for a channel that never existed.
        await refuse(send, channel, 404, wire.STREAM_NOT_FOUND)
        return
    arrived = trio.current_time()
    with lease as scope:
        found = channel.segment_for_read(seq)
        segment = found.segment
        if segment is None:
            await _answer_missing(send, channel, found)
            return
        channel.reading(segment)
        try:
            if cancel_on_close is not None:
                with trio.CancelScope() as gone:
                    cancel_on_close(gone)
                    await _stream_segment(
                        send, channel, found, scope, state, arrived, send_parts, push
                    )
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
                await _stream_segment(send, channel, found, scope, state, arrived, send_parts)
                nursery.cancel_scope.cancel()
        finally:
            channel.done_reading(segment)


async def _answer_missing(send: ASGISendCallable, channel: Channel, found: ReadResult) -> None:
    headers = [header(wire.LATEST_HEADER, found.latest), header(wire.SEQ_HEADER, found.seq)]
    status = wire.STATUS_SEQ_NOT_FOUND
    if channel.closed:
        headers.append(CLOSED)
        status = 200
    channel.metrics.responses[status] += 1
    headers.append((b"content-type", wire.TEXT_PLAIN.encode()))
    await send_response(send, status, wire.ENTRY_NOT_FOUND.encode(), headers)


async def _stream_segment(
    send: ASGISendCallable,
    channel: Channel,
    found: ReadResult,
    scope: trio.CancelScope,
    state: ServerState | None,
    arrived: float,
    send_parts: SendParts | None = None,
    push: Push | None = None,
) -> None:
    """Stream ``found.segment`` from byte 0 to its end, then end the response.

    Until its head has been handed to the connection this subscriber counts as a
    pending head of the channel (``Channel.head_pending``): a DELETE answers no
    publisher before that. ``scope`` (the lease's) is cancelled only to cut this reader;
    then the response is left unfinished, so that the connection is closed without a
    terminating chunk: a cut is never a clean end.
    """
    segment = found.segment
    assert segment is not None
    metrics = channel.metrics
    started = False
    index = 0
    sent = 0
    pusher = _Pusher(push[0], metrics) if push is not None else None
    channel.head_pending()
    head_pending = True
    try:
        with scope:
            while await segment.wait_readable(index):
                # Everything from chunk ``index`` on: with the fast path's PARTS_EXTENSION
                # the chunks themselves (one writev, no copy), else one join shared by the
                # readers at this index.
                if send_parts is None:
                    data = segment.view_from(index)
                    size = len(data)
                else:
                    pieces = segment.chunks[index:]
                    size = segment.size - sent
                index = len(segment.chunks)
                sent += size
                last = segment.closed  # nothing can follow: these bytes end the response
                metrics.bytes_out += size
                if not started:
                    metrics.time_to_first_byte.observe(trio.current_time() - arrived)
                    metrics.responses[200] += 1
                    headers = [header(wire.SEQ_HEADER, segment.seq)]
                    if found.latest != segment.seq:
                        headers.append(header(wire.LATEST_HEADER, found.latest))
                    headers.append((_CONTENT_TYPE, channel.mime_type.encode("latin-1", "replace")))
                    headers.append(header(wire.SIZE_HEADER, size))
                    start: Any = {"type": "http.response.start", "status": 200, "headers": headers}
                    started = True
                    # The status line must go out whole or not at all: a cancel landing on
                    # this checkpoint would leave us unable to tell which.
                    with trio.CancelScope(shield=True):
                        await send(start)
                    # Handed over: hypercorn has written it; the fast path holds it for
                    # the body message that follows with no checkpoint in between.
                    head_pending = False
                    channel.head_sent()
                if last:
                    # One message (one write with the fast path) for the last bytes and the
                    # end; shielded like the head, so that the end is sent exactly once.
                    with trio.CancelScope(shield=True):
                        if send_parts is None:
                            end: Any = {
                                "type": "http.response.body",
                                "body": data,
                                "more_body": False,
                            }
                            await send(end)
                        else:
                            await send_parts(pieces, False)
                    return
                if send_parts is None:
                    body: Any = {"type": "http.response.body", "body": data, "more_body": True}
                    await send(body)
                else:
                    await send_parts(pieces, True)
                if pusher is not None:
                    # Written by the appending task from here, while that works.
                    pusher.taken = pusher.sent = 0
                    pusher.stalled = False
                    try:
                        await segment.push_while(index, pusher)
                    finally:
                        index += pusher.taken
                        sent += pusher.sent
                    if pusher.stalled:
                        assert push is not None
                        await push[1]()
        if scope.cancelled_caught:
            return  # cut: leave the response unfinished (the connection is aborted)
        # The response's last message is shielded: ending it makes hypercorn recycle or
        # close the connection inside this send, and the disconnect watcher's cancel (the
        # client hanging up as the answer ends, e.g. an HTTP/1.0 client) must not cut
        # that short: a connection left half-recycled is never closed.
        if started:
            closing: Any = {"type": "http.response.body", "body": b"", "more_body": False}
            with trio.CancelScope(shield=True):
                await send(closing)
            return
        headers = [
            header(wire.SEQ_HEADER, segment.seq),
            header(wire.LATEST_HEADER, channel.next_write),
        ]
        if channel.closed:
            headers.append(CLOSED)
            if state is not None and state.draining:
                headers.append(CONNECTION_CLOSE)
        with trio.CancelScope(shield=True):
            await send_response(send, 200, b"", headers)
    finally:
        if head_pending:
            channel.head_sent()


#: Larger chunks are not pushed: a publisher writing big chunks is usually sending as fast
#: as it can, and a woken subscriber then finds several chunks to send in one ``writev``
#: (fan-out measured 10-15 % slower with every chunk pushed on its own).
PUSH_MAX = 16 * 1024


class _Pusher:
    """A subscriber's ``Segment.push_while`` callback: each new chunk to its socket."""

    __slots__ = ("metrics", "sent", "stalled", "taken", "try_send")

    def __init__(self, try_send: Callable[[Sequence[bytes]], int], metrics: Any) -> None:
        self.try_send = try_send
        self.metrics = metrics
        self.taken = 0  # chunks written (or backlogged) since push_while began
        self.sent = 0  # their bytes
        self.stalled = False  # the last one is partly backlogged: flush before going on

    def __call__(self, chunk: bytes) -> bool:
        if len(chunk) > PUSH_MAX:
            return False  # wake the task: it may find more chunks to send with this one
        result = self.try_send((chunk,))
        if not result:
            return False
        self.taken += 1
        self.sent += len(chunk)
        self.metrics.bytes_out += len(chunk)
        if result == 1:
            return True
        self.stalled = True
        return False


async def _watch_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (hypercorn only says so via receive)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
