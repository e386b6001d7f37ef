"""ChannelRegistry: every channel of one server, each a task in a nursery it was lent.

Creation and deletion are sync decisions: a deleted channel's name is free again at
once (a later request is answered as for a channel that never existed), while the
channel itself, *retired*, finishes its ordered teardown in its own task and keeps the
buffers its remaining readers are taking (counted: ``channels_retired``,
``retained_bytes``; retired channels count towards ``max_channels``). The idle sweep
deletes channels nobody wrote to. Every creation and every deletion is one change event
for the listeners (``add_listener``); the changefeed (``changefeed.Changefeed``) is one.

Imports: trio, ``config``, ``core``, ``metrics``, ``channels`` and ``changefeed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .changefeed import Changefeed
from .channels import Channel, ChannelLimits
from .config import Settings
from .core import wire
from .core.errors import ChannelNotFoundError, LimitExceededError
from .metrics import ServerMetrics
from .pins import PinnedSegments

logger = logging.getLogger(__name__)

__all__ = ["ChannelRegistry"]


class ChannelRegistry:
    """All channels of one server, each a task in the nursery this registry was lent.

    Args:
        nursery: owns the channel tasks; cancelling it deletes every channel.
        teardown_grace: see ``Settings.teardown_grace``.
        changefeed: keep the ``_changes`` channel (created at once, its first event).
        limits: channel counts, segment sizes, attached requests, preconnect timeout.
        max_pinned_bytes: see ``Settings.max_pinned_bytes`` (0: no bound).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        teardown_grace: float = 5.0,
        changefeed: bool = False,
        limits: ChannelLimits | None = None,
        max_pinned_bytes: int = 0,
    ) -> None:
        self._nursery = nursery
        #: Segments out of their window that slow readers still hold, and their bound.
        self.pins = PinnedSegments(max_pinned_bytes)
        self._more_gauges: list[Callable[[], dict[str, float]]] = []
        self._teardown_grace = teardown_grace
        self.limits = limits if limits is not None else ChannelLimits()
        self._channels: dict[str, Channel] = {}
        #: Deleted channels whose task still runs: tearing down, or serving the last
        #: readers of their segments.
        self._retired: set[Channel] = set()
        self.metrics = ServerMetrics()
        self.metrics.bind(self.gauges)
        #: Called with ("added" | "removed", name) once per channel created / deleted.
        self._listeners: list[Callable[[str, str], None]] = []
        if changefeed:
            feed = Changefeed(self)
            self._listeners.append(feed)
            feed.start()

    @classmethod
    def from_settings(cls, nursery: trio.Nursery, settings: Settings) -> ChannelRegistry:
        """A registry with the teardown grace, changefeed and limits of ``settings``."""
        return cls(
            nursery,
            teardown_grace=settings.teardown_grace,
            changefeed=settings.changefeed,
            limits=ChannelLimits(
                max_channels=settings.max_channels,
                max_segment_bytes=settings.max_segment_bytes,
                max_subscribers=settings.max_subscribers_per_channel,
                max_publishers=settings.max_publishers_per_channel,
                preconnect_timeout=settings.preconnect_timeout,
            ),
            max_pinned_bytes=settings.max_pinned_bytes,
        )

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def get(self, name: str) -> Channel | None:
        """The channel called ``name``, or None."""
        return self._channels.get(name)

    def channels(self) -> list[Channel]:
        """A snapshot of every channel."""
        return list(self._channels.values())

    def retired(self) -> list[Channel]:
        """A snapshot of the deleted channels that still serve readers (or tear down)."""
        return list(self._retired)

    def add_gauges(self, gauges: Callable[[], dict[str, float]]) -> None:
        """Report ``gauges()`` with the registry's own (e.g. the HTTP server's counts)."""
        self._more_gauges.append(gauges)

    def gauges(self) -> dict[str, float]:
        """What is attached now (computed on demand, for ``/metrics`` and the status view)."""
        channels = list(self._channels.values())
        retired = list(self._retired)
        everything = channels + retired
        more: dict[str, float] = {}
        for gauges in self._more_gauges:
            more.update(gauges())
        return {
            **more,
            "channels_open": len(channels),
            "channels_retired": len(retired),
            "retained_bytes": sum(channel.retained_bytes for channel in retired),
            "pinned_bytes": self.pins.bytes,
            "pinned_readers_cut": self.pins.readers_cut,
            "subscribers_attached": sum(len(channel.subscribers) for channel in everything),
            "publishers_attached": sum(len(channel.publishers) for channel in everything),
            "preconnects_idle": sum(
                segment.idle_writers for channel in channels for segment in channel.window
            ),
        }

    def create(self, name: str, mime_type: str = "") -> Channel:  # sync on purpose
        """Create channel ``name`` or return the existing one (creation is idempotent).

        Raises:
            LimitExceededError: (429) ``max_channels`` channels exist already.
        """
        channel = self._channels.get(name)
        if channel is not None:
            return channel
        if len(self._channels) + len(self._retired) >= self.limits.max_channels:
            logger.warning(
                "limit hit limit=max_channels channel=%s value=%d", name, self.limits.max_channels
            )
            raise LimitExceededError(429, "max_channels", "Too many channels")
        channel = Channel(
            name,
            mime_type,
            teardown_grace=self._teardown_grace,
            metrics=self.metrics,
            limits=self.limits,
            on_delete=self._forget,
            pins=self.pins,
        )
        self._channels[name] = channel
        self._nursery.start_soon(self._run_channel, channel, name=f"trickle channel {name}")
        logger.info("channel created channel=%s mime=%s", name, mime_type)
        self._post_change("added", name)
        return channel

    async def _run_channel(self, channel: Channel) -> None:
        try:
            await channel.run()  # deletes the channel (_forget) even when cancelled
        finally:
            self._retired.discard(channel)

    def _forget(self, channel: Channel) -> None:  # sync on purpose
        """``Channel.request_delete``'s hook: the name is free, the removal is posted.

        Runs once per channel, however it was deleted (DELETE, the in-process API, the
        sweep, the drain, or its task cancelled).
        """
        if self._channels.get(channel.name) is not channel:
            return
        del self._channels[channel.name]
        self._retired.add(channel)
        logger.info("channel deleted channel=%s", channel.name)
        self._post_change("removed", channel.name)

    def remove(self, name: str) -> Channel:  # sync on purpose
        """Delete channel ``name`` now: its name is free at once, the channel is closed
        and its task tears it down (see ``Channel.run``); the caller does not wait.

        Raises:
            ChannelNotFoundError: no such channel.
        """
        channel = self._channels.get(name)
        if channel is None:
            raise ChannelNotFoundError(name)
        channel.request_delete()
        return channel

    async def delete(self, name: str) -> None:
        """Delete channel ``name`` (see :meth:`remove`); returns without waiting for its
        teardown or its readers (``Channel.wait_released`` / ``wait_deleted`` do).

        Cancellation: the channel is deleted already when the checkpoint is reached (the
        deletion is sync), so a cancelled DELETE is still final.

        Raises:
            ChannelNotFoundError: no such channel.
        """
        self.remove(name)
        await trio.lowlevel.checkpoint()

    async def close_all(self) -> None:
        """Delete every channel (shutdown drain), the changefeed last; returns once each
        has been torn down: every subscriber's terminal response started, every
        publisher answered. Readers may still be taking what their segments held.

        Cancellation: the channels stay deleted; only the wait ends.
        """
        channels = sorted(self._channels.values(), key=lambda c: c.name == wire.CHANGEFEED_CHANNEL)
        for channel in channels:
            channel.request_delete()
        for channel in channels:
            await channel.wait_released()

    async def sweep(self, idle_timeout: float) -> list[str]:
        """Delete channels whose last write is older than ``idle_timeout`` seconds.

        Channels whose name starts with ``_`` (the changefeed) are never swept.
        Cancellation: the deletions are sync and done before the only checkpoint.
        """
        now = trio.current_time()
        swept = [
            channel.name
            for channel in self._channels.values()
            if not channel.name.startswith("_") and now - channel.write_time > idle_timeout
        ]
        for name in swept:
            logger.info("channel swept channel=%s idle_timeout=%s", name, idle_timeout)
            self.remove(name)
        await trio.lowlevel.checkpoint()
        return swept

    async def run_sweeper(
        self,
        *,
        idle_timeout: float,
        sweep_interval: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep idle channels every ``sweep_interval`` seconds, forever.

        Cancellation: the sweeping stops between two sweeps (a sweep is never half done).
        """
        task_status.started()
        while True:
            await trio.sleep(sweep_interval)
            await self.sweep(idle_timeout)

    def add_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener("added" | "removed", name)`` (sync) once for every channel
        created and every channel deleted from now on."""
        self._listeners.append(listener)

    def _post_change(self, kind: str, name: str) -> None:
        for listener in self._listeners:
            listener(kind, name)
