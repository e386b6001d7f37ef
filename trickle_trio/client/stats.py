"""Client statistics: frozen snapshots, with the official Python SDK's field names.

``livepeer-gateway``'s ``TricklePublisherStats`` / ``TrickleSubscriberStats`` are the
model: a field here with an SDK name counts the same thing. Clients keep a mutable
``*Counts`` object and hand out a frozen ``*Stats`` copy from ``stats()`` (a frozen
dataclass cannot extend a mutable one, hence the two field lists; a test keeps them equal).

Imports: stdlib only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PublisherCounts", "PublisherStats", "SubscriberCounts", "SubscriberStats"]


@dataclass
class PublisherCounts:
    """The publisher's running counters (mutable; see :class:`PublisherStats`)."""

    segments_started: int = 0
    segments_completed: int = 0
    segments_failed: int = 0
    segments_dropped: int = 0
    empty_segments_completed: int = 0
    post_attempts: int = 0
    post_retries: int = 0
    post_success: int = 0
    post_http_failures: int = 0
    post_exceptions: int = 0
    post_404: int = 0
    bytes_submitted_to_transport: int = 0


@dataclass(frozen=True)
class PublisherStats:
    """A snapshot of a publisher's counters (its fields start with those of
    :class:`PublisherCounts`).

    Attributes:
        segments_started: segments handed out (``next()`` / ``segment()`` / ``write()``).
        segments_completed: segments the server acknowledged (200), empty ones included.
        segments_failed: segments that ended with an error.
        segments_dropped: segments given up with ``drop()`` (``DELETE {url}/{seq}``).
        empty_segments_completed: acknowledged segments of zero bytes.
        post_attempts: POSTs opened (preconnects included).
        post_retries: POSTs re-opened for the same seq (on a fresh connection).
        post_success: POSTs answered 200 without ``Lp-Trickle-Closed``.
        post_http_failures: POSTs answered with a status >= 400.
        post_exceptions: POSTs that failed without an answer (connection errors).
        post_404: POSTs answered 404 (stream not found).
        bytes_submitted_to_transport: body bytes written to connections.
        seq: the seq the next segment will get.
        elapsed_s: seconds since the publisher opened.
        terminal_error: the error that ended the publisher, if any (its ``repr``).
    """

    segments_started: int = 0
    segments_completed: int = 0
    segments_failed: int = 0
    segments_dropped: int = 0
    empty_segments_completed: int = 0
    post_attempts: int = 0
    post_retries: int = 0
    post_success: int = 0
    post_http_failures: int = 0
    post_exceptions: int = 0
    post_404: int = 0
    bytes_submitted_to_transport: int = 0
    seq: int = 0
    elapsed_s: float = 0.0
    terminal_error: str | None = None

    @classmethod
    def of(cls, counts: PublisherCounts, **extra: object) -> PublisherStats:
        values = {f.name: getattr(counts, f.name) for f in dataclasses.fields(PublisherCounts)}
        return cls(**values, **extra)  # type: ignore[arg-type]


@dataclass
class SubscriberCounts:
    """The subscriber's running counters (mutable; see :class:`SubscriberStats`)."""

    get_attempts: int = 0
    get_retries: int = 0
    get_failures: int = 0
    get_404: int = 0
    get_470_reset: int = 0
    preconnect_reissues: int = 0
    segments_delivered: int = 0
    empty_segments_delivered: int = 0
    seq_gap_events: int = 0
    bytes_received: int = 0
    wait_ms_total: float = 0.0


@dataclass(frozen=True)
class SubscriberStats:
    """A snapshot of a subscriber's counters (its fields start with those of
    :class:`SubscriberCounts`).

    Attributes:
        get_attempts: GETs sent (preconnects and re-issues included).
        get_retries: GETs sent again for the same seq after an error or a re-issue.
        get_failures: GETs that failed (connection errors, 5xx).
        get_404: answers 404 (stream not found).
        get_470_reset: answers 470 after which the subscriber jumped to the live edge.
        preconnect_reissues: preconnects re-issued after waiting with no response head.
        segments_delivered: segments handed to the caller (empty ones included).
        empty_segments_delivered: of those, segments of zero bytes.
        seq_gap_events: times the next segment was not the seq expected (a jump).
        bytes_received: segment body bytes handed to the caller.
        wait_ms_total: milliseconds spent waiting for response heads.
        latest_seq: the last ``Lp-Trickle-Latest`` (or seq) seen; -1 before any.
        seq: the seq the next segment will be read from.
        elapsed_s: seconds since the subscriber opened.
    """

    get_attempts: int = 0
    get_retries: int = 0
    get_failures: int = 0
    get_404: int = 0
    get_470_reset: int = 0
    preconnect_reissues: int = 0
    segments_delivered: int = 0
    empty_segments_delivered: int = 0
    seq_gap_events: int = 0
    bytes_received: int = 0
    wait_ms_total: float = 0.0
    latest_seq: int = -1
    seq: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def of(cls, counts: SubscriberCounts, **extra: object) -> SubscriberStats:
        values = {f.name: getattr(counts, f.name) for f in dataclasses.fields(SubscriberCounts)}
        return cls(**values, **extra)  # type: ignore[arg-type]
