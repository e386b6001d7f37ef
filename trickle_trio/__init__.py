"""trickle-trio: Livepeer's trickle protocol on Trio: a server, clients and test tools.

The names below are loaded on first use, so that ``import trickle_trio.client`` (the
clients: trio and h11 only) loads nothing of the server (Quart, hypercorn, prometheus).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Channel": "trickle_trio.channels",
    "ChannelClosedError": "trickle_trio.core.errors",
    "ChannelNotFoundError": "trickle_trio.core.errors",
    "ChannelRegistry": "trickle_trio.registry",
    "HTTPError": "trickle_trio.core.errors",
    "LocalPublisher": "trickle_trio.local",
    "LocalSegment": "trickle_trio.local",
    "LocalSubscriber": "trickle_trio.local",
    "RequestError": "trickle_trio.core.errors",
    "RunningServer": "trickle_trio.server",
    "SegmentNotFoundError": "trickle_trio.core.errors",
    "Settings": "trickle_trio.config",
    "SettingsError": "trickle_trio.config",
    "TrickleError": "trickle_trio.core.errors",
    "create_app": "trickle_trio.http.app",
    "open_server": "trickle_trio.server",
    "run_server": "trickle_trio.server",
}

__all__ = [
    "Channel",
    "ChannelClosedError",
    "ChannelNotFoundError",
    "ChannelRegistry",
    "HTTPError",
    "LocalPublisher",
    "LocalSegment",
    "LocalSubscriber",
    "RequestError",
    "RunningServer",
    "SegmentNotFoundError",
    "Settings",
    "SettingsError",
    "TrickleError",
    "create_app",
    "open_server",
    "run_server",
]

if TYPE_CHECKING:
    from .channels import Channel
    from .config import Settings, SettingsError
    from .core.errors import (
        ChannelClosedError,
        ChannelNotFoundError,
        HTTPError,
        RequestError,
        SegmentNotFoundError,
        TrickleError,
    )
    from .http.app import create_app
    from .local import LocalPublisher, LocalSegment, LocalSubscriber
    from .registry import ChannelRegistry
    from .server import RunningServer, open_server, run_server


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trickle_trio' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
