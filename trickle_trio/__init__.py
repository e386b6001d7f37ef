"""trickle-trio: Livepeer's trickle protocol on Trio, hypercorn and quart-trio."""

from __future__ import annotations

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

__version__ = "0.1.0"

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
