"""Drive one HTTP request through an ASGI app in-process, message by message.

Unlike test clients that buffer whole bodies, an :class:`Exchange` lets a test write a
request body chunk by chunk, leave it idle, disconnect, and read each response message
as the app sends it, all in one trio nursery (so ``autojump_clock`` works). Every
response message can also be recorded in a shared ``log`` to assert the order in which
several requests were answered.

With ``faults=plan`` (a :class:`trickle_trio.faults.FaultPlan`), the request passes the
fault layer first, as on a server started with that plan. The exchange offers the
server's ``trickle.cut`` extension: a cut (or drop) ends the response where it stands
(reading on raises ``EOFError``) and is kept in :attr:`Exchange.cut` (``"rst"`` or
``"fin"``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ..faults.plan import FaultPlan

__all__ = ["Exchange", "Response", "open_exchange"]


@dataclass
class Response:
    """A response read so far: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    complete: bool = False
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


class Exchange:
    """One request in flight. Use :func:`open_exchange` to make one."""

    def __init__(
        self,
        app: Any,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        label: str | None = None,
        log: list[tuple[str, str]] | None = None,
        response_buffer: float = math.inf,
        shield_sends: bool = False,
    ) -> None:
        self.app = app
        #: How the connection was cut by a fault (``"rst"``, ``"fin"``), or None.
        self.cut: str | None = None
        self._shield_sends = shield_sends
        self.label = label or f"{method} {path}"
        self._log = log
        path_only, _, query = path.partition("?")
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path_only,
            "raw_path": path_only.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "extensions": {"trickle.cut": {"cut": self._cut}},
        }
        self._request_send, self._request_recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._response_send, self._response_recv = trio.open_memory_channel[dict[str, Any]](
            response_buffer
        )
        self._body_done = False
        self.response: Response | None = None
        self.finished = trio.Event()
        self.error: BaseException | None = None

    # -- the ASGI side ------------------------------------------------------------------

    async def _receive(self) -> dict[str, Any]:
        return await self._request_recv.receive()

    async def _send(self, message: dict[str, Any]) -> None:
        if self._log is not None and (
            message["type"] == "http.response.start"
            or (message["type"] == "http.response.body" and not message.get("more_body"))
        ):
            kind = "start" if message["type"] == "http.response.start" else "end"
            self._log.append((self.label, kind))
        if self._shield_sends:
            # As hypercorn's HTTP/1.1 send: not cancellable while the peer doesn't read.
            with trio.CancelScope(shield=True):
                await self._response_send.send(message)
        else:
            await self._response_send.send(message)

    def _cut(self, reset: bool) -> None:
        """The ``trickle.cut`` extension: the client sees the response end here, cut."""
        self.cut = "rst" if reset else "fin"
        self._response_send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self.app(self.scope, self._receive, self._send)
        except BaseException as exc:  # recorded for the test, then re-raised
            self.error = exc
            raise
        finally:
            self.finished.set()
            self._response_send.close()

    # -- the client side ----------------------------------------------------------------

    async def send_body(self, data: bytes, *, more: bool = True) -> None:
        """Send a request body chunk (``more=False`` ends the body)."""
        if self._body_done:
            raise RuntimeError("request body already ended")
        self._body_done = not more
        await self._request_send.send({"type": "http.request", "body": data, "more_body": more})

    async def end_body(self) -> None:
        """End the request body (sends an empty last chunk)."""
        await self.send_body(b"", more=False)

    async def disconnect(self) -> None:
        """The client goes away."""
        self._body_done = True
        await self._request_send.send({"type": "http.disconnect"})

    async def read_start(self) -> Response:
        """Wait for the status line and headers.

        Raises:
            EOFError: the app finished without starting a response.
        """
        if self.response is not None:
            return self.response
        try:
            message = await self._response_recv.receive()
        except trio.EndOfChannel:
            raise EOFError(f"{self.label}: no response") from None
        assert message["type"] == "http.response.start", message
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]]
        self.response = Response(
            status=message["status"],
            headers={k.lower(): v for k, v in raw},
            raw_headers=raw,
        )
        return self.response

    async def read_chunk(self) -> bytes | None:
        """The next body chunk as sent by the app, or None at the end of the body."""
        response = await self.read_start()
        if response.complete:
            return None
        while True:
            try:
                message = await self._response_recv.receive()
            except trio.EndOfChannel:
                raise EOFError(f"{self.label}: body cut short") from None
            body: bytes = message.get("body", b"")
            response.body += body
            if not message.get("more_body", False):
                response.complete = True
                return body or None
            if body:
                return body

    async def read_response(self) -> Response:
        """Read the whole response."""
        response = await self.read_start()
        while await self.read_chunk() is not None:
            pass
        return response


@asynccontextmanager
async def open_exchange(
    app: Any,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    body: bytes | None = None,
    label: str | None = None,
    log: list[tuple[str, str]] | None = None,
    response_buffer: float = math.inf,
    shield_sends: bool = False,
    faults: FaultPlan | None = None,
) -> AsyncIterator[Exchange]:
    """Start a request against ``app``; the app runs until the block ends.

    ``body=None`` leaves the request body open (a streaming or preconnected POST);
    ``body=b"..."`` sends it whole. GETs and DELETEs get an empty body at once. On exit
    the client disconnects and the app task is waited for. ``response_buffer=0`` with
    ``shield_sends=True`` is a client that stopped reading, as hypercorn shows it to the
    app (a send that blocks and can't be cancelled). ``faults``: a fault plan applied to
    the request (``app`` must be one that :func:`~trickle_trio.http.app.create_app` made).
    """
    if faults is not None:
        from ..faults.layer import FaultLayer
        from ..http.app import app_state

        app = FaultLayer(app, faults, app_state(app))
    exchange = Exchange(
        app,
        method,
        path,
        headers,
        label=label,
        log=log,
        response_buffer=response_buffer,
        shield_sends=shield_sends,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(exchange.run)
        if body is not None:
            await exchange.send_body(body, more=False)
        elif method != "POST":
            await exchange.send_body(b"", more=False)
        try:
            yield exchange
        except BaseException:
            # The block failed: a send blocked for a reader that will never come (one
            # shielded as hypercorn's are) must fail now, or the test hangs, not fails.
            exchange._response_recv.close()
            raise
        finally:
            await exchange._request_send.send({"type": "http.disconnect"})

            # Let a response that is waiting for a reader end: drain what is left.
            async def drain() -> None:
                with contextlib.suppress(trio.ClosedResourceError):
                    async for _ in exchange._response_recv:
                        pass

            nursery.start_soon(drain)
