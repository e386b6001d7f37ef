"""Client fixtures: a publisher and a subscriber connected through the fixture server.

Fixtures (pytest-trio; they build on ``trickle_server``):

- ``trickle_channel_url``: the URL of a fresh channel on ``trickle_server``, unique per
  test (``f"{trickle_server.url}/test-{n}"``); nothing is created yet.
- ``trickle_publisher``: :func:`~trickle_trio.client.open_publisher` on that URL,
  ``application/octet-stream``, channel created first; closed after the test (which
  deletes the channel).
- ``trickle_subscriber``: :func:`~trickle_trio.client.open_subscriber` on the same
  channel from seq 0, so it sees every segment the publisher writes.
- ``trickle_clients``: both, as a :class:`ClientPair` (``.publisher``,
  ``.subscriber``, ``.url``).

Example::

    async def test_roundtrip(trickle_clients):
        seq = await trickle_clients.publisher.write(b"hello")
        segment = await trickle_clients.subscriber.next()
        assert (segment.seq, await segment.read()) == (seq, b"hello")

A publisher whose channel goes away fails its fixture at once (the test is cancelled
and the error reported): a test that deletes the channel, or expects an error, should
call ``open_publisher`` itself.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from ..client import Publisher, Subscriber, open_publisher, open_subscriber

if TYPE_CHECKING:
    from ..server import RunningServer

__all__ = [
    "ClientPair",
    "trickle_channel_url",
    "trickle_clients",
    "trickle_publisher",
    "trickle_subscriber",
]

_names = itertools.count()


@dataclass
class ClientPair:
    """A publisher and a subscriber of one channel (the ``trickle_clients`` fixture)."""

    publisher: Publisher
    subscriber: Subscriber
    url: str


@pytest.fixture
def trickle_channel_url(trickle_server: RunningServer) -> str:
    """A fresh channel URL on ``trickle_server`` (not created yet)."""
    return f"{trickle_server.url}/test-{next(_names)}"


@pytest.fixture
async def trickle_publisher(trickle_channel_url: str) -> AsyncIterator[Publisher]:
    """A publisher on ``trickle_channel_url``; the channel is created first."""
    async with open_publisher(
        trickle_channel_url, "application/octet-stream", create=True
    ) as publisher:
        yield publisher


@pytest.fixture
async def trickle_subscriber(
    trickle_publisher: Publisher, trickle_channel_url: str
) -> AsyncIterator[Subscriber]:
    """A subscriber of ``trickle_publisher``'s channel, from seq 0."""
    async with open_subscriber(trickle_channel_url, start=0) as subscriber:
        yield subscriber


@pytest.fixture
def trickle_clients(
    trickle_publisher: Publisher, trickle_subscriber: Subscriber, trickle_channel_url: str
) -> ClientPair:
    """``trickle_publisher`` and ``trickle_subscriber`` together."""
    return ClientPair(trickle_publisher, trickle_subscriber, trickle_channel_url)
