"""The ASGI scope extensions a server may offer the segment layer, and their shapes.

The segment layer (``http/streams.py``) works on any ASGI server; where the server
offers these extensions (trickle-trio's own server, :mod:`trickle_trio.h1`, does on
plain connections), it uses them to skip per-chunk work. Each is optional and looked
up by name in ``scope["extensions"]``. This module imports nothing but the stdlib, so
that both sides can depend on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

__all__ = [
    "ABORT_EXTENSION",
    "BODY_EXTENSION",
    "CUT_EXTENSION",
    "DISCONNECT_EXTENSION",
    "PARTS_EXTENSION",
    "PUSH_EXTENSION",
    "Abort",
    "Cut",
    "Flush",
    "SendParts",
    "TakeBody",
    "TryPush",
]

#: Of a request with a body: ``{"take_body": f}``. ``f(sink)`` makes the server call
#: ``sink(chunk)`` (synchronously, from whatever reads the connection) for the rest of
#: the body instead of queueing ``http.request`` messages, and returns True; or returns
#: False (nothing changes) while body messages wait for ``receive()``, so that no chunk
#: overtakes another. The end of the body and a disconnect still come through
#: ``receive()``. Chunks that arrive after the request ended are dropped.
BODY_EXTENSION = "trickle.take_body"
#: Of a request without a body: ``{"cancel_on_close": f}``; ``f(cancel_scope)`` has the
#: scope cancelled when the client goes away (instead of a task waiting in
#: ``receive()`` for ``http.disconnect``).
DISCONNECT_EXTENSION = "trickle.cancel_on_close"
#: Of a request without a body: ``{"send": f}``; ``await f(parts, more_body)`` sends
#: ``parts`` (bytes, in order) as the response's next body bytes, exactly as one
#: ``http.response.body`` message with their concatenation would, without joining them.
PARTS_EXTENSION = "trickle.body_parts"
#: Of a request without a body, on a plain (not TLS) connection: ``{"try_send": f,
#: "flush": g}``. ``f(parts)`` is a synchronous ``PARTS_EXTENSION`` send with
#: ``more_body`` that never waits: 0 when it sent nothing (no response body under way,
#: another write in progress, the socket full or broken: send through the awaited path
#: instead), 1 when the parts were sent, 2 when they were taken but only partly
#: written: then ``await g()`` must follow, which writes the rest. It lets a subscriber
#: be written to from the task that produced the bytes.
PUSH_EXTENSION = "trickle.push_parts"
#: Of any request: ``{"abort": f}``; ``f()`` (sync) resets the connection now: unsent
#: bytes are dropped, every wait on it ends, and the client sees an error, never a clean
#: end. It cuts a reader whose socket takes nothing more (a shielded write waits forever).
ABORT_EXTENSION = "trickle.abort"

#: Of every request: ``{"cut": f}``; ``f(reset)`` ends the connection now, without
#: finishing the response (fault injection, :mod:`trickle_trio.faults`): with a reset
#: (RST, unsent bytes dropped) when ``reset`` is true, else with a FIN after what was
#: written. Later sends go nowhere and ``receive()`` says ``http.disconnect``.
CUT_EXTENSION = "trickle.cut"

#: ``take_body(sink) -> bool`` (:data:`BODY_EXTENSION`).
TakeBody = Callable[[Callable[[bytes], None]], bool]
#: ``await send_parts(parts, more_body)`` (:data:`PARTS_EXTENSION`).
SendParts = Callable[[Sequence[bytes], bool], Awaitable[None]]
#: ``try_send(parts) -> 0 | 1 | 2`` (:data:`PUSH_EXTENSION`).
TryPush = Callable[[Sequence[bytes]], int]
#: ``abort()`` (:data:`ABORT_EXTENSION`).
Abort = Callable[[], None]
#: ``cut(reset)`` (:data:`CUT_EXTENSION`).
Cut = Callable[[bool], None]
#: ``await flush()`` (:data:`PUSH_EXTENSION`).
Flush = Callable[[], Awaitable[None]]
