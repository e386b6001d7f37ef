"""Publishing over HTTP: ``POST /{ch}/{seq}``, a streaming body into a segment, and its answer.

The rules are ``publishing.SegmentWriter``'s (first byte, empty body, broken connection,
byte limit, idle preconnect); this module reads the ASGI body (or lets the server write
it straight into the segment, ``trickle.take_body``), parks a far-ahead preconnect until
its first byte (``ChannelState.parks``), and answers as the reference does. A publisher
of a deleted channel is answered only once every subscriber attached at the DELETE has
started its terminal response.

Imports: trio, ``core``, ``channels``, ``publishing`` and the sibling helpers.
"""

from __future__ import annotations

import math
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

from ..channels import Channel
from ..core import wire
from ..core.errors import ChannelClosedError, LimitExceededError
from ..publishing import PublisherGone, PublishOutcome, SegmentWriter, TakeBody
from .responses import CLOSED, CONNECTION_CLOSE, header, refuse, send_response


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
