"""The error tree shared by the server, the in-process API and the clients.

``TrickleError`` is the root. The HTTP layer maps each server-side error to one answer
(404, 470 + ``Lp-Trickle-Latest``, ``Lp-Trickle-Closed``); the clients raise the same
classes for the same answers, so code can switch transport without changing handlers.
"""

from __future__ import annotations


class TrickleError(Exception):
    """Base class of every trickle error."""


class ChannelNotFoundError(TrickleError):
    """The channel does not exist (HTTP 404 ``Stream not found``)."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel not found: {channel}")
        self.channel = channel


class ChannelClosedError(TrickleError):
    """The channel was closed (``Lp-Trickle-Closed: terminated``): end of stream."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel closed: {channel}")
        self.channel = channel


class SegmentNotFoundError(TrickleError):
    """The channel exists but the segment does not (HTTP 470).

    Attributes:
        seq: the seq that was asked for (resolved, if it was -1/-2/-N).
        latest: the channel's next write seq when the answer was made; a subscriber
            that wants the live edge continues from here.
    """

    def __init__(self, seq: int, latest: int) -> None:
        super().__init__(f"segment {seq} not found (latest {latest})")
        self.seq = seq
        self.latest = latest


class LimitExceededError(TrickleError):
    """A configured limit refused the request (HTTP ``status``, 4xx).

    Attributes:
        status: 413 (segment too large), 429 (too many channels, subscribers, publishers
            or requests).
        limit: the setting's name, e.g. ``max_channels``.
    """

    def __init__(self, status: int, limit: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.limit = limit
        self.message = message


class RequestError(TrickleError):
    """Raised by a before-create / before-delete hook to answer with a 4xx.

    Args:
        status: an HTTP status in 400..499.
        message: the response body.
    """

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status <= 499:
            raise ValueError(f"RequestError status must be 4xx, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message


class HTTPError(TrickleError):
    """Client side: the server answered with an unexpected status (>= 400)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body
