"""The segment layer: ``POST|GET /{ch}/{seq}`` and ``GET /{ch}/live``, as raw ASGI.

Installed in front of the Quart app (``app.asgi_app = SegmentStreams(app.asgi_app, ..)``)
so that segment bodies stream without Quart's response/body timeouts or its body
buffer, the server's backpressure is kept, and a GET's status line and headers go out
with its first byte. This module checks what every segment request shares (the seq,
the channel name, the channel, autocreate with its hook) and hands the request to
``publish``, ``subscribe`` or ``live``; everything else falls through to Quart.

Each handler holds a lease of the channel's cancel scopes (``channels.TaskScopes``) for
as long as it serves the channel, including its last response, so that a DELETE can
order the teardown: every subscriber's terminal response first, then the publishers'.

Imports: trio, hypercorn's ASGI types, ``core``, ``channels``, and the sibling modules.
"""

from __future__ import annotations

import logging
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from ..core import wire
from ..core.errors import LimitExceededError
from ..core.routing import Kind, Route
from .extensions import (
    ABORT_EXTENSION,
    BODY_EXTENSION,
    DISCONNECT_EXTENSION,
    PARTS_EXTENSION,
    PUSH_EXTENSION,
)
from .hooks import HookFailed, HookRequest, run_hook
from .live import LIVE, LiveOptions, LiveQueryError, parse_live_query, serve_live
from .publish import serve_publisher
from .responses import CONNECTION_CLOSE, send_error
from .state import ServerState
from .subscribe import serve_subscriber

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
            abort = extensions.get(ABORT_EXTENSION)
            if live_options is not None:
                await serve_live(
                    channel,
                    live_options,
                    receive,
                    send,
                    cancel_on_close=watch["cancel_on_close"] if watch else None,
                    send_parts=parts["send"] if parts else None,
                    abort=abort["abort"] if abort else None,
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
                abort=abort["abort"] if abort else None,
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


# -- publish -----------------------------------------------------------------------------


# -- subscribe ---------------------------------------------------------------------------
