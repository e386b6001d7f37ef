"""Stats are frozen snapshots that use the official SDK's names where they apply."""

from __future__ import annotations

import dataclasses

import pytest

from trickle_trio.client import PublisherStats, SubscriberStats
from trickle_trio.client.stats import PublisherCounts, SubscriberCounts

# Fields of livepeer-gateway's TricklePublisherStats / TrickleSubscriberStats that have
# a meaning here (same name, same count).
SDK_PUBLISHER = {
    "elapsed_s",
    "segments_started",
    "segments_completed",
    "segments_failed",
    "empty_segments_completed",
    "post_attempts",
    "post_retries",
    "post_success",
    "post_http_failures",
    "post_exceptions",
    "post_404",
    "bytes_submitted_to_transport",
    "seq",
    "terminal_error",
}
SDK_SUBSCRIBER = {
    "get_attempts",
    "get_retries",
    "get_failures",
    "get_470_reset",
    "segments_delivered",
    "seq_gap_events",
    "wait_ms_total",
    "latest_seq",
}


def names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(
    ("counts", "stats", "sdk"),
    [
        (PublisherCounts, PublisherStats, SDK_PUBLISHER),
        (SubscriberCounts, SubscriberStats, SDK_SUBSCRIBER),
    ],
)
def test_stats_are_frozen_and_named_like_the_sdk(counts: type, stats: type, sdk: set[str]) -> None:
    assert names(stats)[: len(names(counts))] == names(counts)
    assert sdk <= set(names(stats))
    snapshot = stats.of(counts())  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.seq = 1
