"""The state shared by the raw segment layer and the Quart routes of one server."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from ..config import Settings
from ..core import routing, wire
from ..registry import ChannelRegistry

#: Names that can't be channels: they are the server's own routes (/healthz, /readyz,
#: /metrics, /_status, and /_/ for its pages), served at the root and under the base path.
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "_status", "_"})

#: Where a request's route decision (``core.routing.Route`` or ``Refusal``) is kept in
#: its ASGI scope, so that every layer uses the one decision.
ROUTE_KEY: Final = "trickle.route"


class ServerState:
    """Settings plus the registry, which may arrive later (at ASGI lifespan start-up).

    Attributes:
        registry: the channels; None until the server has started.
        draining: set on shutdown; /readyz then answers 503.
    """

    def __init__(self, settings: Settings, registry: ChannelRegistry | None = None) -> None:
        self.settings = settings
        self.base_path = wire.normalize_base_path(settings.base_path)
        self.reserved = RESERVED_NAMES
        self.registry = registry
        self.draining = False

    def route(self, scope: Any) -> routing.Route | routing.Refusal:
        """The route decision of the request ``scope`` is for: made once (by the guard,
        the outermost layer), kept in the scope, and the same for every later layer."""
        found: routing.Route | routing.Refusal | None = scope.get(ROUTE_KEY)
        if found is None:
            found = routing.decide(scope["method"], request_target(scope), self.base_path)
            scope[ROUTE_KEY] = found
        return found

    async def drain(self) -> int:
        """Shutdown: ``/readyz`` turns 503, every channel is deleted; returns how many.

        Returns once each channel is torn down (``ChannelRegistry.close_all``).
        Cancellation: the channels stay deleted; only the wait ends.
        """
        self.draining = True
        if self.registry is None:
            return 0
        count = len(self.registry)
        await self.registry.close_all()
        return count


def request_target(scope: Any) -> bytes:
    """The request target as the client sent it, without the query string.

    ``raw_path`` is optional in ASGI; without it the decoded path is encoded again
    (an encoded ``/`` is then indistinguishable from a plain one).
    """
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw)
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~").encode("ascii")
