"""The outermost ASGI layer: access control and request-level limits.

Every HTTP request passes here first:
1. ``/healthz`` and ``/readyz`` (at the root and under the base path) go straight
   through (probes need neither tokens nor a free request slot).
2. A path longer than ``max_url_length`` gets 414.
3. More than ``max_requests`` requests in flight (one per busy connection on HTTP/1.1)
   get 429.
4. A client that leaves while it is being answered is not an error (see ``__call__``).
5. Bearer tokens, when configured (the watch page's own files, ``/_/watch/``, are open:
   they hold no channel names): GET/HEAD of trickle routes need the subscribe or the
   publish token; every other method, and ``/_status``, the publish token. ``/metrics``
   holds no channel names and stays open. Tokens are compared in constant time; a 401
   says nothing about channels.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from .page import PAGE_PATH
from .responses import send_error
from .state import ServerState

logger = logging.getLogger(__name__)

_PROBES = ("healthz", "readyz")
_OPEN = ("metrics",)
_STATUS = "_status"


def _at_root_and_base(names: tuple[str, ...], base_path: str) -> frozenset[str]:
    return frozenset(prefix + name for name in names for prefix in {"/", base_path})


class Guard:
    """ASGI middleware enforcing tokens and request-level limits in front of ``app``."""

    def __init__(self, app: ASGIFramework, state: ServerState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self._publish = _encode(settings.publish_token)
        self._subscribe = _encode(settings.subscribe_token)
        self._max_requests = settings.max_requests
        self._max_url_length = settings.max_url_length
        self._probes = _at_root_and_base(_PROBES, state.base_path)
        self._open = _at_root_and_base(_OPEN, state.base_path)
        self._status = _at_root_and_base((_STATUS,), state.base_path)
        self._pages = _at_root_and_base((PAGE_PATH.strip("/"),), state.base_path)
        self.in_flight = 0

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or scope["path"] in self._probes:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > self._max_url_length:
            logger.warning("limit hit limit=max_url_length value=%d", self._max_url_length)
            await self._refuse(send, 414, "URI Too Long")
            return
        if self.in_flight >= self._max_requests:
            logger.warning("limit hit limit=max_requests value=%d", self._max_requests)
            await self._refuse(send, 429, "Too many requests", [(b"connection", b"close")])
            return
        if path not in self._open and not self._is_page(path) and not self._authorized(scope):
            await self._refuse(
                send, 401, "Unauthorized", [(b"www-authenticate", b'Bearer realm="trickle"')]
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        except* trio.BusyResourceError:
            # The client left while being answered: hypercorn 0.18's TCPServer._close
            # half-closes the socket without taking its send lock, so our last send can
            # collide with it. Nobody is left to answer; that is not a server error.
            logger.debug("client left while being answered path=%s", path)
        finally:
            self.in_flight -= 1

    def _is_page(self, path: str) -> bool:
        """The watch page's own files: they hold no channel names (what the page reads
        needs the tokens as usual)."""
        return any(path == page or path.startswith(page + "/") for page in self._pages)

    def _authorized(self, scope: Any) -> bool:
        reading = scope["method"] in ("GET", "HEAD") and scope["path"] not in self._status
        needed = [self._publish]
        if reading:
            needed.append(self._subscribe)
        if any(token is None for token in needed):
            return True  # that kind of access is open
        presented = _bearer(scope)
        if presented is None:
            return False
        # Compare against every acceptable token, always, in constant time each.
        matches = [hmac.compare_digest(presented, token) for token in needed if token]
        return any(matches)

    async def _refuse(
        self,
        send: ASGISendCallable,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        registry = self.state.registry
        counts = registry.metrics.responses if registry is not None else None
        await send_error(send, status, message, headers or (), counts=counts)


def _encode(token: str | None) -> bytes | None:
    return None if token is None else token.encode()


def _bearer(scope: Any) -> bytes | None:
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip()
            return None
    return None
