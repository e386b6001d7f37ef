"""The changefeed: the ``_changes`` channel, one JSON segment per channel added or removed.

``{"added": ["name"]}`` or ``{"removed": ["name"]}`` (``application/json``); its own
creation is its first event (seq 0). It listens to the registry's change events, which
every creation and every deletion emits exactly once (however the deletion came about),
and writes each as a whole segment at once. Clients may read it, never write it
(``core.routing``).

Imports: the stdlib, ``core`` and ``publishing``; the registry hands itself in.
"""

from __future__ import annotations

import json
from typing import Protocol

from .channels import Channel
from .core import wire
from .publishing import write_whole

__all__ = ["Changefeed"]


class _Registry(Protocol):
    def create(self, name: str, mime_type: str = "") -> Channel: ...

    def get(self, name: str) -> Channel | None: ...


class Changefeed:
    """Writes the registry's change events to the ``_changes`` channel."""

    def __init__(self, registry: _Registry) -> None:
        self._registry = registry

    def start(self) -> None:  # sync on purpose
        """Create the channel (its own creation is its first event, via the registry)."""
        self._registry.create(wire.CHANGEFEED_CHANNEL, "application/json")

    def __call__(self, kind: str, name: str) -> None:  # sync on purpose
        """Post ``{kind: [name]}``, unless the feed itself is gone (shutdown)."""
        feed = self._registry.get(wire.CHANGEFEED_CHANNEL)
        if feed is None or feed.closed:
            return
        write_whole(feed, json.dumps({kind: [name]}, separators=(",", ":")).encode())
