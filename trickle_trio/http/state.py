"""The state shared by the raw segment layer and the Quart routes of one server."""

from __future__ import annotations

from ..config import Settings
from ..core import wire
from ..registry import ChannelRegistry

#: Names that can't be channels: they are the server's own routes (/healthz, /readyz,
#: /metrics, /_status, and /_/ for its pages), served at the root and under the base path.
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "_status", "_"})


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
