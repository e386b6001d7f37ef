"""Server metrics: plain counters on the hot path, Prometheus exposition at scrape time.

The data path only ever does ``metrics.bytes_in += n`` (an int add: no lock, no label
lookup, no allocation). Per-segment and per-response events bump a dict entry or observe
a histogram (one uncontended lock per segment, never per chunk). Gauges such as open
channels and attached subscribers are not tracked at all: the collector computes them
from the registry when Prometheus scrapes ``/metrics``.

Imports: prometheus-client and the stdlib only; the registry is passed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Segment outcomes counted in ``trickle_segments_total{outcome=...}``.
OUTCOMES = (
    "complete",
    "empty",
    "aborted",
    "released",
    "channel_closed",
    "too_large",
    "timed_out",
    "evicted",
)

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_TTFB_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The counters of one server. Cheap enough to keep on unconditionally."""

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        #: Live readers (``GET /{ch}/live``) that fell out of the window and jumped.
        self.live_jumps = 0
        self.segments: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        #: Non-streamed answers by status (404, 470, 400, 413, ...), and stream answers.
        self.responses: Counter[int] = Counter()
        self.prometheus = CollectorRegistry(auto_describe=True)
        self.segment_duration = Histogram(
            "trickle_segment_duration_seconds",
            "Time from a segment's first byte to its close.",
            buckets=_DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.time_to_first_byte = Histogram(
            "trickle_time_to_first_byte_seconds",
            "Time from a subscriber's GET to the first byte sent to it.",
            buckets=_TTFB_BUCKETS,
            registry=self.prometheus,
        )

    def bind(self, gauges: Callable[[], dict[str, float]]) -> None:
        """Register the counters, reading gauges from ``gauges()`` at scrape time."""
        self.prometheus.register(_Collector(self, gauges))


class _Collector(Collector):
    def __init__(self, metrics: ServerMetrics, gauges: Callable[[], dict[str, float]]) -> None:
        self._metrics = metrics
        self._gauges = gauges

    def describe(self) -> Iterable[Any]:
        return []  # computed at collect time; nothing to check up front

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        for name, value in self._gauges().items():
            gauge = GaugeMetricFamily(f"trickle_{name}", _GAUGE_HELP.get(name, name))
            gauge.add_metric([], value)
            yield gauge
        segments = CounterMetricFamily(
            "trickle_segments", "Segments ended, by outcome.", labels=["outcome"]
        )
        for outcome, count in metrics.segments.items():
            segments.add_metric([outcome], count)
        yield segments
        for name, value, doc in (
            ("trickle_bytes_in", metrics.bytes_in, "Segment bytes received from publishers."),
            ("trickle_bytes_out", metrics.bytes_out, "Segment bytes sent to subscribers."),
            (
                "trickle_live_jumps",
                metrics.live_jumps,
                "Live readers that fell out of the window and jumped to the live edge.",
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter
        responses = CounterMetricFamily(
            "trickle_responses",
            "Answers by status: 404, 470 and other errors, and segment streams (200).",
            labels=["status"],
        )
        for status, count in sorted(metrics.responses.items()):
            responses.add_metric([str(status)], count)
        yield responses


_GAUGE_HELP = {
    "channels_open": "Channels that exist now.",
    "channels_retired": "Deleted channels whose last readers are still taking their bytes.",
    "retained_bytes": "Segment bytes held for the readers of deleted channels.",
    "subscribers_attached": "Subscriber GETs attached to a channel now.",
    "publishers_attached": "Publisher POSTs attached to a channel now (idle or writing).",
    "preconnects_idle": "Publisher POSTs that have not sent a byte yet.",
}
