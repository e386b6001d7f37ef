"""The outermost ASGI layer: the route decision, access control, request-level limits.

Every HTTP request passes here first, in this order:
1. Framing that a proxy could read differently is refused and the connection closed:
   ``Content-Length`` together with ``Transfer-Encoding`` (400, RFC 9112 §6.3), and a
   request line plus headers over ``max_header_bytes`` (431), however many reads the
   head took to arrive (hypercorn only counts a head that is still incomplete).
2. The route is decided once (:func:`trickle_trio.core.routing.decide`), kept in the
   scope (``ServerState.route``) and the scope's ``path``/``raw_path`` are replaced by
   its normalised form, so that this guard, the segment layer and the Quart views all
   see one path. A target that normalises ambiguously gets 400; a write to the
   changefeed 403.
3. ``/healthz`` and ``/readyz`` go straight through (probes need neither tokens nor a
   free request slot).
4. A target longer than ``max_url_length`` gets 414.
5. More than ``max_requests`` requests in flight (one per busy connection on HTTP/1.1),
   or more than ``max_requests_per_client`` from one client address (off by default),
   get 429 and the connection is closed.
6. Bearer tokens, when configured: a read (GET/HEAD of a trickle route) needs the
   subscribe or the publish token when the subscribe token is set; a write (every
   other method) and ``/_status`` need the publish token when it is set. ``/metrics``
   holds no channel names and stays open. Tokens are compared in constant time; a 401
   says nothing about channels.
7. The last message of a response that the app (Quart) sends is shielded from
   cancellation: hypercorn closes a ``Connection: close`` (or HTTP/1.0) connection, and
   restarts the keep-alive timer of any other, inside that send, and Quart cancels its
   request's tasks as soon as the client's side of the exchange is over, which used to
   land in the middle of it and leave the connection open, unwatched.
8. A client that leaves while it is being answered is not an error (see ``__call__``).

WebSocket upgrades are refused (hypercorn answers 403): the server has no WebSocket route.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from typing import Any

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from ..core.routing import Access, Kind, Refusal
from .responses import CONNECTION_CLOSE, refuse
from .state import ServerState

logger = logging.getLogger(__name__)

#: Bytes of a request line or header line besides its parts (" ", ": ", CRLF).
_REQUEST_LINE_EXTRA = len(" ") + len(" HTTP/1.1\r\n")
_HEADER_LINE_EXTRA = len(": \r\n")


class Guard:
    """ASGI middleware deciding routes and enforcing tokens and limits before ``app``."""

    def __init__(self, app: ASGIFramework, state: ServerState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self._publish = _encode(settings.publish_token)
        self._subscribe = _encode(settings.subscribe_token)
        self._max_requests = settings.max_requests
        self._max_url_length = settings.max_url_length
        self._max_header_bytes = settings.max_header_bytes
        self._max_per_client = settings.max_requests_per_client
        self.in_flight = 0
        #: Requests in flight per client address (only with max_requests_per_client).
        self.per_client: Counter[str] = Counter()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        framing = self._check_framing(scope)
        if framing is not None:
            await self._drain_body(receive)
            await self._refuse(send, framing.status, framing.message, [CONNECTION_CLOSE])
            return
        route = self.state.route(scope)
        if isinstance(route, Refusal):
            await self._refuse(send, route.status, route.message)
            return
        scope["path"] = route.path
        scope["raw_path"] = route.raw_path
        # Only the segment layer's own responses end shielded already.
        answer = send if route.kind is Kind.SEGMENT else _shield_last(send)
        if route.kind is Kind.PROBE:
            await self.app(scope, receive, answer)
            return
        if _target_length(scope) > self._max_url_length:
            logger.warning("limit hit limit=max_url_length value=%d", self._max_url_length)
            await self._refuse(send, 414, "URI Too Long")
            return
        if self.in_flight >= self._max_requests:
            logger.warning("limit hit limit=max_requests value=%d", self._max_requests)
            await self._refuse(send, 429, "Too many requests", [CONNECTION_CLOSE])
            return
        client = _client_address(scope) if self._max_per_client else None
        if client is not None and self.per_client[client] >= self._max_per_client:
            logger.warning("limit hit limit=max_requests_per_client value=%d", self._max_per_client)
            await self._refuse(send, 429, "Too many requests from this client", [CONNECTION_CLOSE])
            return
        if not self._authorized(scope, route.access):
            await self._refuse(
                send, 401, "Unauthorized", [(b"www-authenticate", b'Bearer realm="trickle"')]
            )
            return
        self.in_flight += 1
        if client is not None:
            self.per_client[client] += 1
        try:
            await self.app(scope, receive, answer)
        except* trio.BusyResourceError:
            # The client left while being answered: hypercorn 0.18's TCPServer._close
            # half-closes the socket without taking its send lock, so our last send can
            # collide with it. Nobody is left to answer; that is not a server error.
            logger.debug("client left while being answered path=%s", route.path)
        finally:
            self.in_flight -= 1
            if client is not None:
                self.per_client[client] -= 1
                if not self.per_client[client]:
                    del self.per_client[client]

    def _check_framing(self, scope: Any) -> Refusal | None:
        size = len(scope["method"]) + len(_target(scope)) + _REQUEST_LINE_EXTRA + 2
        length = encoding = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + _HEADER_LINE_EXTRA
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding":
                encoding = True
        if size > self._max_header_bytes:
            logger.warning("limit hit limit=max_header_bytes value=%d", self._max_header_bytes)
            return Refusal(431, "Request header fields too large")
        if length and encoding:
            return Refusal(400, "Content-Length with Transfer-Encoding")
        return None

    async def _drain_body(self, receive: ASGIReceiveCallable) -> None:
        """Read and drop the request body before an answer that closes the connection
        (at most ``max_header_bytes`` of it, for at most ``keep_alive_timeout``).

        hypercorn goes on reading the request while the app answers; a byte read after
        the body of a request answered with ``Connection: close`` makes it close the
        connection in the middle of the answer. Once the body has been read, hypercorn
        waits for the answer before it reads again.
        """
        taken = 0
        with trio.move_on_after(self.state.settings.keep_alive_timeout):
            while taken <= self._max_header_bytes:
                message: Any = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                taken += len(message.get("body", b""))

    def _authorized(self, scope: Any, access: Access) -> bool:
        if access is Access.OPEN:
            return True
        if access is Access.WRITE:
            if self._publish is None:
                return True  # writing is open
            accepted = [self._publish]
        else:
            if self._subscribe is None:
                return True  # reading is open
            accepted = [token for token in (self._subscribe, self._publish) if token]
        presented = _bearer(scope)
        if presented is None:
            return False
        # Compare against every acceptable token, always, in constant time each.
        matches = [hmac.compare_digest(presented, token) for token in accepted]
        return any(matches)

    async def _refuse(
        self,
        send: ASGISendCallable,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        try:
            with trio.CancelScope(shield=True):  # see rule 7: hypercorn closes in this send
                await refuse(send, self.state.registry, status, message, headers)
        except* trio.BusyResourceError:
            logger.debug("client left while being refused status=%d", status)


def _shield_last(send: ASGISendCallable) -> ASGISendCallable:
    """``send``, with the message that ends the response shielded (rule 7)."""

    async def shielded_send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return shielded_send


def _client_address(scope: Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _target(scope: Any) -> bytes:
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    query = scope.get("query_string") or b""
    return bytes(raw) + b"?" + bytes(query) if query else bytes(raw)


def _target_length(scope: Any) -> int:
    return len(scope["path"].encode("utf-8", "replace"))


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
