"""Building ASGI responses exactly as the reference Go server writes them.

Go's ``http.Error(w, msg, code)`` sends ``Content-Type: text/plain; charset=utf-8``,
``X-Content-Type-Options: nosniff`` and ``msg + "\\n"``; a handler that writes nothing
sends ``Content-Length: 0`` and no Content-Type. Both are reproduced here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hypercorn.typing import ASGISendCallable

from ..core import wire

if TYPE_CHECKING:
    from ..channels import Channel

Headers = list[tuple[bytes, bytes]]


def header(name: str, value: str | int) -> tuple[bytes, bytes]:
    return name.lower().encode("latin-1"), str(value).encode("latin-1")


CONNECTION_CLOSE = (b"connection", b"close")
CLOSED = header(wire.CLOSED_HEADER, wire.CLOSED_VALUE)


async def send_response(
    send: ASGISendCallable,
    status: int,
    body: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a whole response with ``Content-Length``.

    Cancellation: propagates; the response may be cut between its head and its body
    (callers that must not leave it so shield the call).
    """
    all_headers: Headers = [*headers, (b"content-length", str(len(body)).encode())]
    start: Any = {"type": "http.response.start", "status": status, "headers": all_headers}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def send_error(
    send: ASGISendCallable,
    status: int,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    counts: Counter[int] | None = None,
) -> None:
    """Send what Go's ``http.Error`` sends; count it in ``counts`` (the metrics) if given.

    Cancellation: as :func:`send_response` (it is counted either way).
    """
    if counts is not None:
        counts[status] += 1
    await send_response(
        send,
        status,
        message.encode() + b"\n",
        [
            *headers,
            (b"content-type", wire.TEXT_PLAIN.encode()),
            (b"x-content-type-options", b"nosniff"),
        ],
    )


async def refuse(
    send: ASGISendCallable,
    channel: Channel,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer an error the way Go's ``http.Error`` does, and count it.

    Cancellation: as :func:`send_response`.
    """
    await send_error(send, status, message, headers or (), counts=channel.metrics.responses)
