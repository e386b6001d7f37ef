"""Testing helpers for your own Trio test suites: servers, fixtures, an ASGI driver.

Enable the fixtures with ``pytest_plugins = ["trickle_trio.testing"]`` in your
``conftest.py`` (pytest-trio must be installed and ``trio_mode = true`` set, or mark the
tests with ``@pytest.mark.trio``). Fixtures:

- ``trickle_settings``: :class:`~trickle_trio.Settings` for the servers below (autocreate
  on, ephemeral port, changefeed off). Override the fixture to change them.
- ``trickle_registry``: a :class:`~trickle_trio.ChannelRegistry` in the test's nursery.
- ``trickle_app``: the ASGI app serving ``trickle_registry``, in-process (drive it with
  :func:`open_exchange`; works under ``autojump_clock``).
- ``trickle_server``: a real hypercorn server on 127.0.0.1 and an ephemeral port, a
  :class:`~trickle_trio.server.RunningServer` (``.url``, ``.registry``); drained and
  stopped after the test.
- ``trickle_channel_url``, ``trickle_publisher``, ``trickle_subscriber``,
  ``trickle_clients``: a connected client publisher/subscriber pair on a fresh channel
  of ``trickle_server`` (see :mod:`trickle_trio.testing.clients`).

Without pytest: ``async with open_server(settings) as server: ...``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from ..config import Settings
from ..http.app import create_app
from ..registry import ChannelRegistry
from ..server import RunningServer, open_server
from .asgi import Exchange, Response, open_exchange
from .clients import (
    ClientPair,
    trickle_channel_url,
    trickle_clients,
    trickle_publisher,
    trickle_subscriber,
)

__all__ = [
    "ClientPair",
    "Exchange",
    "Response",
    "open_exchange",
    "open_server",
    "trickle_app",
    "trickle_channel_url",
    "trickle_clients",
    "trickle_publisher",
    "trickle_registry",
    "trickle_server",
    "trickle_settings",
    "trickle_subscriber",
]


@pytest.fixture
def trickle_settings() -> Settings:
    """Settings for test servers: autocreate on, port 0, access log off."""
    return Settings(host="127.0.0.1", port=0, autocreate=True, access_log=None)


@pytest.fixture
def trickle_registry(nursery: trio.Nursery, trickle_settings: Settings) -> ChannelRegistry:
    """A registry whose channels live in the test's nursery (cancelled after the test)."""
    return ChannelRegistry.from_settings(nursery, trickle_settings)


@pytest.fixture
def trickle_app(trickle_registry: ChannelRegistry, trickle_settings: Settings) -> Any:
    """The ASGI app serving ``trickle_registry`` (no lifespan needed)."""
    return create_app(trickle_settings, trickle_registry)


@pytest.fixture
async def trickle_server(trickle_settings: Settings) -> AsyncIterator[RunningServer]:
    """A real server on an ephemeral loopback port, drained and stopped after the test."""
    async with open_server(trickle_settings) as server:
        yield server
