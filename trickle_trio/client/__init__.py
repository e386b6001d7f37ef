"""Trio clients for trickle: a publisher and a subscriber over HTTP/1.1 (h11, full duplex).

    async with open_publisher(url, mime_type="video/mp2t") as pub:
        async with pub.segment() as seg:
            await seg.send(chunk)

    async with open_subscriber(url, start=-1) as sub:
        async for segment in sub:
            async for chunk in segment:
                ...

The same API in-process (no HTTP, over the server's registry) is
:mod:`trickle_trio.client.local`: ``open_local_publisher`` / ``open_local_subscriber``.

Imports (this package, except ``local``/``local_subscriber``, which also see the
server's in-process API): stdlib, trio, h11, ``trickle_trio.core`` and
``trickle_trio.config`` only. The layers inside it (``pyproject.toml``, import-linter):
``publisher`` > ``publisher_segment`` > ``post`` > ``transport`` > ``connection`` >
``http``; ``subscriber`` beside ``publisher``.
"""

from __future__ import annotations

from ..core.errors import (
    ChannelClosedError,
    ChannelNotFoundError,
    HTTPError,
    SegmentNotFoundError,
    TrickleError,
)
from .http import (
    Headers,
    Response,
    ResponseHead,
    Timeouts,
    TransportError,
    TransportTimeout,
    make_ssl_context,
)
from .publisher import Publisher, PublisherSegment, SegmentWriteError, open_publisher
from .stats import PublisherStats, SubscriberStats
from .subscriber import OnGap, Subscriber, SubscriberSegment, open_subscriber
from .transport import Transport, TransportStats

__all__ = [
    "ChannelClosedError",
    "ChannelNotFoundError",
    "HTTPError",
    "Headers",
    "OnGap",
    "Publisher",
    "PublisherSegment",
    "PublisherStats",
    "Response",
    "ResponseHead",
    "SegmentNotFoundError",
    "SegmentWriteError",
    "Subscriber",
    "SubscriberSegment",
    "SubscriberStats",
    "Timeouts",
    "Transport",
    "TransportError",
    "TransportStats",
    "TransportTimeout",
    "TrickleError",
    "make_ssl_context",
    "open_publisher",
    "open_subscriber",
]
