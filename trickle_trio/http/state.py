"""The state shared by the raw segment layer and the Quart routes of one server."""

from __future__ import annotations

from ..config import Settings
from ..core import wire
from ..registry import ChannelRegistry

#: Names that can't be channels when the base path is "/": they are the server's own
#: routes (/healthz, /readyz, /metrics, /_status, and /_/ for its pages). Under another
#: base path nothing is.
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
        self.reserved = RESERVED_NAMES if self.base_path == "/" else frozenset[str]()
        self.registry = registry
        self.draining = False
