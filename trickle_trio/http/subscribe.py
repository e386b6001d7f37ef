"""Subscribing over HTTP: ``GET /{ch}/{seq}``, a segment streamed from byte 0 to its end.

Headers go out with the first byte (or an empty 200 at the segment's end); the chunks
that follow leave as they are (``trickle.body_parts``) or are written by the publisher's
task as it appends them (``trickle.push_parts``); a client that leaves cancels the
handler (``trickle.cancel_on_close``, else a task reading ``receive()``). The lease's
scope is cancelled only to cut a reader, and then the response is left unfinished.

Imports: trio, ``core``, ``channels`` and the sibling helpers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

from ..channels import Channel, ReadResult
from ..core import wire
from ..core.errors import ChannelClosedError, LimitExceededError
from .extensions import Abort
from .responses import CLOSED, CONNECTION_CLOSE, header, refuse, send_response
from .state import ServerState

_CONTENT_TYPE = b"content-type"
#: Larger chunks are not pushed: a publisher writing big chunks is usually sending as fast
#: as it can, and a woken subscriber then finds several chunks to send in one ``writev``
#: (fan-out measured 10-15 % slower with every chunk pushed on its own).
PUSH_MAX = 16 * 1024

#: ``await send_parts(parts, more_body)``: the fast path's ``PARTS_EXTENSION``.
SendParts = Callable[[Sequence[bytes], bool], Awaitable[None]]
#: ``(try_send, flush)``: the fast path's ``PUSH_EXTENSION``.
Push = tuple[Callable[[Sequence[bytes]], int], Callable[[], Awaitable[None]]]


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
    abort: Abort | None = None,
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
    A reader cut for the server's bound on pinned segments (``Channel.cut_readers``) has
    its lease cancelled and, where the server offers ``abort`` (``ABORT_EXTENSION``), its
    connection reset, which also ends a write its client no longer takes.
    """
    lease = await subscriber_lease(send, channel)
    if lease is None:
        return
    arrived = trio.current_time()
    with lease as scope:
        found = channel.segment_for_read(seq)
        segment = found.segment
        if segment is None:
            await answer_missing(send, channel, found.seq, found.latest)
            return
        reader = channel.reading(segment, cutter(scope, abort))
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
            channel.done_reading(segment, reader)


async def subscriber_lease(
    send: ASGISendCallable, channel: Channel
) -> AbstractContextManager[trio.CancelScope] | None:
    """A subscriber's lease on ``channel``; or None, and the GET answered: 429 past
    ``max_subscribers_per_channel``, 404 for a channel deleted since it was looked up
    (as for one that never existed).

    Cancellation: as :func:`send_response` (no lease is taken).
    """
    try:
        return channel.subscribers.lease()
    except LimitExceededError as exc:
        await refuse(send, channel, exc.status, exc.message)
    except ChannelClosedError:
        await refuse(send, channel, 404, wire.STREAM_NOT_FOUND)
    return None


def cutter(scope: trio.CancelScope, abort: Abort | None) -> Callable[[], None]:
    """How to cut a reader: cancel its lease (its response is left unfinished) and reset
    its connection where the server can (a write its client does not take then ends)."""

    def cut() -> None:
        scope.cancel()
        if abort is not None:
            abort()

    return cut


async def answer_missing(send: ASGISendCallable, channel: Channel, seq: int, latest: int) -> None:
    """A GET for a seq outside the window: 470 with ``Lp-Trickle-Latest`` (200 with
    ``Lp-Trickle-Closed`` if the channel is closed), as the reference answers.

    Cancellation: as :func:`send_response`.
    """
    headers = [header(wire.LATEST_HEADER, latest), header(wire.SEQ_HEADER, seq)]
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
                    # Handed over: hypercorn has written it; trickle-trio's server holds it for
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
