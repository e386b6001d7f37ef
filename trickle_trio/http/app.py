"""The quart-trio app: create, delete, next, DELETE of a seq, health; the segment layer
(``streams.SegmentStreams``) is installed in front of it.

``create_app(settings, registry)`` serves a registry owned by the caller (``run_server``,
tests). Without a registry, the app makes its own at ASGI lifespan start-up, in
quart-trio's lifespan nursery, and drains it at shutdown: that is the plain
``hypercorn trickle_trio.asgi:app`` deployment.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..config import Settings
from ..core import wire
from ..core.errors import ChannelNotFoundError, LimitExceededError
from ..core.routing import Kind, Route
from ..registry import ChannelRegistry
from .guard import Guard
from .hooks import HookFailed, HookRequest, run_hook
from .live import live_status
from .page import install_page
from .state import ServerState
from .streams import SegmentStreams

logger = logging.getLogger(__name__)


def _plain(status: int, body: str = "", headers: dict[str, str] | None = None) -> Response:
    """A response shaped like Go's: an empty body has no Content-Type."""
    response = Response(body, status=status, headers=headers or {})
    if body:
        response.headers["Content-Type"] = wire.TEXT_PLAIN
    else:
        del response.headers["Content-Type"]
    return response


def _error(status: int, message: str) -> Response:
    """What Go's ``http.Error`` sends."""
    response = _plain(status, message + "\n")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _http_error(error: HTTPException) -> Response:
    """Quart's own errors (no route, wrong method, body too large) as Go's mux words them:
    plain text, not Werkzeug's HTML page; a 405 keeps its ``Allow`` header."""
    status = error.code or 500
    response = _error(status, "404 page not found" if status == 404 else error.name)
    for key, value in error.get_headers():
        if key.lower() == "allow":
            response.headers["Allow"] = value
    return response


def _hook_request() -> HookRequest:
    client: Any = request.scope.get("client")
    return HookRequest(
        method=request.method,
        path=request.path,
        headers={key.lower(): value for key, value in request.headers.items()},
        client=tuple(client) if client else None,
    )


def create_app(settings: Settings, registry: ChannelRegistry | None = None) -> QuartTrio:
    """Build the ASGI app for ``settings`` serving ``registry`` (or its own, see above)."""
    app = QuartTrio("trickle_trio")
    # Streams must never be cut by Quart: RESPONSE_TIMEOUT (60 s) ends a routed stream, and
    # MAX_CONTENT_LENGTH answers 413 to a large declared body.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # Go's mux answers OPTIONS with 405
    state = ServerState(settings, registry)
    app.extensions["trickle"] = state
    base = state.base_path

    def channels() -> ChannelRegistry:
        if state.registry is None:  # pragma: no cover - only before lifespan start-up
            raise RuntimeError("trickle registry not started")
        return state.registry

    reserved = state.reserved
    # Routes are matched on the guard's normalised path; the views take the channel and
    # seq from the guard's decision (``routed``), never from the URL again.
    app.url_map.merge_slashes = False

    def routed(kind: Kind) -> Route | None:
        """This request's route decision, if it is of ``kind`` (it always is: the path
        Quart matched is the decision's own)."""
        route = state.route(request.scope)
        return route if isinstance(route, Route) and route.kind is kind else None

    def checked_name(name: str | None) -> str | None:
        if name is None:
            return None
        try:
            wire.check_channel_name(name, max_length=settings.max_name_length)
        except wire.InvalidChannelName:
            return None
        return None if name in reserved else name

    @app.errorhandler(HTTPException)
    async def plain_http_error(error: HTTPException) -> Response:
        return _http_error(error)

    @app.after_request
    async def count_errors(response: Response) -> Response:
        if response.status_code >= 400 and state.registry is not None:
            state.registry.metrics.responses[response.status_code] += 1
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.registry is None:
            return _plain(503, "not started\n")
        body = generate_latest(state.registry.metrics.prometheus)
        return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/_status")
    async def status() -> Response:
        registry = channels()
        now = trio.current_time()
        listing = [
            {
                "channel": channel.name,
                "mime_type": channel.mime_type,
                "next_seq": channel.next_write,
                "subscribers": len(channel.subscribers),
                "publishers": len(channel.publishers),
                "bytes": sum(segment.size for segment in channel.window),
                "bytes_in": channel.bytes_in,
                "age_s": round(now - channel.created_at, 3),
                "idle_s": round(now - channel.write_time, 3),
                "closed": channel.closed,
                **live_status(channel),
            }
            for channel in registry.channels()
        ]
        retired = [
            {
                "channel": channel.name,
                "subscribers": len(channel.subscribers),
                "publishers": len(channel.publishers),
                "retained_bytes": channel.retained_bytes,
                "torn_down": channel.released,
            }
            for channel in registry.retired()
        ]
        body = {
            "draining": state.draining,
            **registry.gauges(),
            "channels": listing,
            "retired": retired,
        }
        response = Response(json.dumps(body), status=200)
        response.headers["Content-Type"] = "application/json"
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return _plain(200, "ok\n")

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.draining or state.registry is None:
            return _plain(503, "draining\n")
        return _plain(200, "ready\n")

    if base != "/":
        # The server's own routes under the base path too, where an operator behind a
        # proxy that forwards only the base path looks; their names are reserved (state).
        own = {"metrics": metrics, "_status": status, "healthz": healthz, "readyz": readyz}
        for name, view in own.items():
            app.add_url_rule(f"{base}{name}", f"{name}_under_base", view, methods=["GET"])

    @app.post(f"{base}<_name>")
    async def create(_name: str) -> Response:
        route = routed(Kind.CHANNEL)
        name = checked_name(route.channel if route else None)
        if name is None:
            return _error(400, "Invalid channel name")
        try:
            await run_hook(settings.before_create, _hook_request(), name)
        except HookFailed as exc:
            return _error(exc.status, exc.message)
        registry = channels()
        channel = registry.get(name)
        if channel is None or channel.closed:
            if not settings.autocreate:
                return _error(404, wire.STREAM_NOT_FOUND)
            try:
                registry.create(name, request.headers.get(wire.EXPECT_CONTENT_HEADER, ""))
            except LimitExceededError as exc:
                return _error(exc.status, exc.message)
        return _plain(200)

    @app.delete(f"{base}<_name>")
    async def delete(_name: str) -> Response:
        route = routed(Kind.CHANNEL)
        name = checked_name(route.channel if route else None)
        if name is None:
            return _error(400, "Invalid channel name")
        try:
            await run_hook(settings.before_delete, _hook_request(), name)
        except HookFailed as exc:
            return _error(exc.status, exc.message)
        try:
            channels().remove(name)
        except ChannelNotFoundError:
            return _error(400, wire.INVALID_STREAM)
        return _plain(200)

    @app.delete(f"{base}<_name>/<_seq>")
    async def close_seq(_name: str, _seq: str) -> Response:
        route = routed(Kind.SEQ)
        try:
            number = wire.parse_seq(route.seq if route and route.seq else "")
        except wire.InvalidSeq:
            return _error(400, wire.INVALID_IDX)
        name = checked_name(route.channel if route else None)
        channel = channels().get(name) if name else None
        if channel is None:
            return _error(404, wire.STREAM_NOT_FOUND)
        segment = channel.segment_in_window(number)
        if segment is None:
            return _error(400, wire.NONEXISTENT_SEGMENT)
        logger.info("segment dropped channel=%s seq=%d", name, segment.seq)
        channel.drop_segment(segment)
        return _plain(200)

    @app.get(f"{base}<_name>/next")
    async def next_seq(_name: str) -> Response:
        route = routed(Kind.NEXT)
        name = checked_name(route.channel if route else None)
        channel = channels().get(name) if name else None
        if channel is None:
            return _error(404, wire.STREAM_NOT_FOUND)
        headers = {wire.LATEST_HEADER: str(channel.next_write)}
        if channel.closed:
            headers[wire.CLOSED_HEADER] = wire.CLOSED_VALUE
        return _plain(200, str(channel.next_write), headers)

    if registry is None:

        @app.before_serving
        async def start_registry() -> None:
            state.registry = ChannelRegistry.from_settings(app.nursery, settings)
            app.nursery.start_soon(
                lambda: state.registry.run_sweeper(  # type: ignore[union-attr]
                    idle_timeout=settings.idle_timeout, sweep_interval=settings.sweep_interval
                )
            )

        @app.after_serving
        async def drain_registry() -> None:
            await state.drain()

    if settings.watch_page:
        install_page(app, base)
    app.asgi_app = Guard(SegmentStreams(app.asgi_app, state), state)  # type: ignore[method-assign]
    return app


def app_state(app: QuartTrio) -> ServerState:
    """The trickle state of an app made by :func:`create_app`."""
    state: ServerState = app.extensions["trickle"]
    return state
