"""Applying a fault plan: an ASGI layer in front of the app that breaks matched requests.

For each HTTP request the layer asks the plan (:meth:`FaultPlan.fire`) which rules fire,
using the route the server decides once (``ServerState.route``); a request no rule
fires on goes to the app untouched, with the same ``receive``, ``send`` and scope (an
empty plan costs one truth test per request and nothing per chunk). A request a rule
fires on loses the server's shortcut extensions (``take_body``, ``body_parts``,
``push_parts``), so that every byte of it passes through the layer's ``receive`` and
``send``, and gets each firing rule's action, the first rule outermost:

- :class:`~.plan.Delay`: ``head`` sleeps before the response start; ``first-byte``
  sends the start (and flushes it with an empty body message), then sleeps.
- :class:`~.plan.Throttle`: the response body goes out in pieces, each sent no sooner
  than the byte rate allows (measured from the first body byte).
- :class:`~.plan.Stall`: once ``after`` body bytes have been read, the next read waits
  ``seconds`` first; the server stops reading the socket once its buffer is full
  (trickle-trio's own server: 256 KiB), so the client's sends back up.
- :class:`~.plan.Answer`: the app never sees the request; the layer answers.
- :class:`~.plan.Cut` and :class:`~.plan.Drop` need the transport: the server's
  ``trickle.cut`` extension (:data:`~trickle_trio.http.extensions.CUT_EXTENSION`,
  offered by trickle-trio's own server and by :func:`trickle_trio.testing.open_exchange`).
  A request cut is told to the app as the client going away (``http.disconnect``, as
  the server tells a POST whose client left); a response cut cancels the app's request,
  as the server does for a GET whose client left. Bytes sent after a cut go nowhere.
  Under stock hypercorn (``fast_path`` off) there is no such extension: the cut is
  logged and the request fails with :class:`CutUnavailable`, which the server answers
  by closing the connection its own way (RST or FIN can't be chosen).

Cancellation: the app's own cancellation passes through; a cut's cancellation of the
app ends at this layer, which then returns normally.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..core import wire
from ..core.routing import Refusal
from ..http.extensions import (
    BODY_EXTENSION,
    CUT_EXTENSION,
    PARTS_EXTENSION,
    PUSH_EXTENSION,
)
from ..http.state import ServerState
from .plan import Answer, Cut, Delay, Drop, FaultPlan, Rule, Stall, Throttle

logger = logging.getLogger(__name__)

__all__ = ["CutUnavailable", "FaultLayer"]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

#: The extensions that bypass ``receive``/``send``: hidden from a faulted request.
_BYPASSING = frozenset({BODY_EXTENSION, PARTS_EXTENSION, PUSH_EXTENSION, CUT_EXTENSION})
#: Throttled bodies go out in pieces of at most rate / this (and at most 64 KiB).
_PIECES_PER_SECOND = 20
_DISCONNECT = {"type": "http.disconnect"}


class CutUnavailable(RuntimeError):
    """A cut or drop fired where the server offers no way to cut (stock hypercorn)."""


class _Faulted:
    """One request some rules fired on: its transport cut, and the cancel scope a
    response cut cancels."""

    def __init__(self, scope: Any, cut: Callable[[bool], None] | None) -> None:
        self.scope = scope
        self._cut = cut
        self.cut_done = False
        self.cancel_scope = trio.CancelScope()

    def cut(self, how: str, *, cancel: bool) -> None:
        """Cut the connection now (``how``: ``rst`` or ``fin``), once."""
        if self.cut_done:
            return
        if self._cut is None:
            logger.warning(
                "fault cut unavailable path=%s: cuts need trickle-trio's own server "
                "(fast_path on) or open_exchange",
                self.scope.get("path"),
            )
            raise CutUnavailable(
                "this server can't cut a connection: faults that cut or drop need "
                "trickle-trio's own HTTP server (fast_path on)"
            )
        self.cut_done = True
        self._cut(how == "rst")
        if cancel:
            self.cancel_scope.cancel()


class FaultLayer:
    """ASGI middleware applying ``plan`` to the requests of ``app`` (see the module).

    ``control``: an ASGI app answering the control route (``/_/faults``), or None.
    """

    def __init__(
        self,
        app: ASGIApp,
        plan: FaultPlan,
        state: ServerState,
        *,
        control: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.plan = plan
        self.state = state
        self.control = control
        base = state.base_path
        self._control_paths = ("/_/faults", f"{base}_/faults")

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.control is not None and self._is_control(scope):
            await self.control(scope, receive, send)
            return
        plan = self.plan
        if not plan:
            await self.app(scope, receive, send)
            return
        route = self.state.route(scope)
        if isinstance(route, Refusal):
            await self.app(scope, receive, send)
            return
        firing = plan.fire(scope["method"], route)
        if not firing:
            await self.app(scope, receive, send)
            return
        for rule in firing:
            logger.info(
                "fault fired rule=%d action=%s method=%s path=%s",
                rule.id,
                type(rule.action).__name__.lower(),
                scope["method"],
                route.path,
            )
        await self._apply(firing, scope, receive, send)

    def _is_control(self, scope: Any) -> bool:
        path: str = scope["path"]
        return any(path == own or path.startswith(own + "/") for own in self._control_paths)

    async def _apply(self, firing: list[Rule], scope: Any, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        cut_extension = extensions.get(CUT_EXTENSION)
        faulted = _Faulted(scope, cut_extension["cut"] if cut_extension else None)
        inner_scope = {
            **scope,
            "extensions": {k: v for k, v in extensions.items() if k not in _BYPASSING},
        }
        call: ASGIApp = self.app
        for rule in reversed(firing):
            call = self._wrap(rule, call, faulted)
        with faulted.cancel_scope:
            await call(inner_scope, receive, send)

    def _wrap(self, rule: Rule, inner: ASGIApp, faulted: _Faulted) -> ASGIApp:
        action = rule.action
        if isinstance(action, Answer):
            return _answering(action, self.state)
        if isinstance(action, Drop):
            return _dropping(action, faulted)
        if isinstance(action, Delay):
            return _delaying(action, inner)
        if isinstance(action, Throttle):
            return _throttling(action, inner)
        if isinstance(action, Stall):
            return _stalling(action, inner)
        if action.of == "request":
            return _cutting_request(action, inner, faulted)
        return _cutting_response(action, inner, faulted)


def _answering(action: Answer, state: ServerState) -> ASGIApp:
    async def answer(scope: Any, receive: Receive, send: Send) -> None:
        route = state.route(scope)
        headers: list[tuple[bytes, bytes]] = []
        latest = action.latest
        if latest is None and action.status == wire.STATUS_SEQ_NOT_FOUND:
            registry = state.registry
            channel_name = getattr(route, "channel", None)
            channel = registry.get(channel_name) if registry and channel_name else None
            latest = channel.next_write if channel is not None else 0
        if latest is not None:
            headers.append((wire.LATEST_HEADER.lower().encode(), str(latest).encode()))
        seq = getattr(route, "seq", None)
        if action.status == wire.STATUS_SEQ_NOT_FOUND and seq is not None:
            headers.append((wire.SEQ_HEADER.lower().encode(), seq.encode("utf-8")))
        if action.closed:
            headers.append((wire.CLOSED_HEADER.lower().encode(), wire.CLOSED_VALUE.encode()))
        for name, value in action.headers.items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        body = (action.body + "\n").encode() if action.body else b""
        if body:
            headers.append((b"content-type", wire.TEXT_PLAIN.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": action.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return answer


def _dropping(action: Drop, faulted: _Faulted) -> ASGIApp:
    async def drop(scope: Any, receive: Receive, send: Send) -> None:
        faulted.cut(action.how, cancel=False)
        await trio.lowlevel.checkpoint()

    return drop


def _delaying(action: Delay, inner: ASGIApp) -> ASGIApp:
    async def delay(scope: Any, receive: Receive, send: Send) -> None:
        async def delayed_send(message: Any) -> None:
            if message["type"] != "http.response.start":
                await send(message)
            elif action.where == "head":
                await trio.sleep(action.seconds)
                await send(message)
            else:
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": True})
                await trio.sleep(action.seconds)

        await inner(scope, receive, delayed_send)

    return delay


def _throttling(action: Throttle, inner: ASGIApp) -> ASGIApp:
    piece = max(1, min(64 * 1024, int(action.rate / _PIECES_PER_SECOND)))

    async def throttle(scope: Any, receive: Receive, send: Send) -> None:
        started: float | None = None
        sent = 0

        async def throttled_send(message: Any) -> None:
            nonlocal started, sent
            body: bytes = b""
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
            if not body:
                await send(message)
                return
            more = message.get("more_body", False)
            if started is None:
                started = trio.current_time()
            view = memoryview(body)
            for offset in range(0, len(body), piece):
                part = bytes(view[offset : offset + piece])
                await trio.sleep_until(started + sent / action.rate)
                sent += len(part)
                last = offset + piece >= len(body)
                await send(
                    {"type": "http.response.body", "body": part, "more_body": more or not last}
                )

        await inner(scope, receive, throttled_send)

    return throttle


def _stalling(action: Stall, inner: ASGIApp) -> ASGIApp:
    async def stall(scope: Any, receive: Receive, send: Send) -> None:
        taken = 0
        stalled = False

        async def stalled_receive() -> Any:
            nonlocal taken, stalled
            if not stalled and taken >= action.after:
                stalled = True
                await trio.sleep(action.seconds)
            message = await receive()
            if message["type"] == "http.request":
                taken += len(message.get("body", b""))
            return message

        await inner(scope, stalled_receive, send)

    return stall


def _cutting_request(action: Cut, inner: ASGIApp, faulted: _Faulted) -> ASGIApp:
    async def cut_request(scope: Any, receive: Receive, send: Send) -> None:
        taken = 0
        due = False  # the next read cuts

        async def cutting_receive() -> Any:
            nonlocal taken, due
            if faulted.cut_done:
                await trio.lowlevel.checkpoint()
                return _DISCONNECT
            if due or action.after == 0:
                faulted.cut(action.how, cancel=False)
                await trio.lowlevel.checkpoint()
                return _DISCONNECT
            message = await receive()
            if message["type"] != "http.request":
                return message
            body: bytes = message.get("body", b"")
            left = action.after - taken
            if len(body) >= left or not message.get("more_body", False):
                # N bytes read (or the body ended first): the app gets them, not the end.
                due = True
                body = body[:left]
            taken += len(body)
            return {"type": "http.request", "body": body, "more_body": True}

        async def cut_send(message: Any) -> None:
            if faulted.cut_done:
                await trio.lowlevel.checkpoint()  # the connection is gone
                return
            await send(message)

        await inner(scope, cutting_receive, cut_send)

    return cut_request


def _cutting_response(action: Cut, inner: ASGIApp, faulted: _Faulted) -> ASGIApp:
    async def cut_response(scope: Any, receive: Receive, send: Send) -> None:
        written = 0

        async def cutting_send(message: Any) -> None:
            nonlocal written
            if faulted.cut_done:
                await trio.lowlevel.checkpoint()
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            left = action.after - written
            ends = not message.get("more_body", False)
            if len(body) < left and not ends:
                written += len(body)
                await send(message)
                return
            # N bytes written (or the response ended first): send them, then cut.
            part = body[:left]
            written += len(part)
            if part or not ends:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": True})
            faulted.cut(action.how, cancel=True)
            await trio.lowlevel.checkpoint()

        await inner(scope, receive, cutting_send)

    return cut_response
