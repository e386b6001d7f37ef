"""channels.py on trio without HTTP: segments, leases, the window rules, the registry."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

from trickle_trio.channels import Channel, ChannelLimits
from trickle_trio.core.errors import ChannelClosedError, ChannelNotFoundError, LimitExceededError
from trickle_trio.leases import TaskScopes
from trickle_trio.publishing import PublisherGone, PublishOutcome, SegmentWriter
from trickle_trio.registry import ChannelRegistry
from trickle_trio.segment import Segment

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


def chunk_source(*chunks: bytes | type[Exception] | None):  # type: ignore[no-untyped-def]
    """A read_chunk callable: yields the given chunks; None = end; an exception = raise."""
    items = list(chunks)

    async def read_chunk() -> bytes | None:
        await trio.lowlevel.checkpoint()
        item = items.pop(0)
        if isinstance(item, type):
            raise item
        return item

    return read_chunk


# -- Segment -------------------------------------------------------------------------------


async def test_readers_wake_on_each_append_and_end_on_close() -> None:
    segment = Segment(0)
    seen: list[list[bytes]] = []

    async def reader() -> None:
        index = 0
        while chunks := await segment.wait_chunks(index):
            seen.append(chunks)
            index += len(chunks)
        seen.append([])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        segment.append(b"a")
        await trio.testing.wait_all_tasks_blocked()
        segment.append(b"b")
        segment.append(b"c")  # two chunks before the reader runs: handed over together
        await trio.testing.wait_all_tasks_blocked()
        segment.close()
    assert seen == [[b"a"], [b"b", b"c"], []]


async def test_readers_share_the_same_bytes_objects() -> None:
    segment = Segment(0)
    payload = b"x" * 1000
    segment.append(payload)
    segment.close()
    first = await segment.wait_chunks(0)
    second = await segment.wait_chunks(0)
    assert first[0] is payload
    assert second[0] is payload


async def test_pushers_get_each_chunk_from_the_appending_task_without_waking() -> None:
    segment = Segment(0)
    pushed: list[tuple[str, bytes]] = []
    returned: list[str] = []

    def pusher(name: str, accept: int) -> Callable[[bytes], bool]:
        def push(chunk: bytes) -> bool:
            pushed.append((name, chunk))
            return len([1 for who, _ in pushed if who == name]) < accept

        return push

    async def reader(name: str, accept: int) -> None:
        await segment.push_while(0, pusher(name, accept))
        returned.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, "a", 99)
        nursery.start_soon(reader, "b", 2)  # stops after its second chunk
        nursery.start_soon(reader, "c", 99)
        await trio.testing.wait_all_tasks_blocked()
        segment.append(b"1")
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []  # pushed to, never woken
        segment.append(b"2")
        await trio.testing.wait_all_tasks_blocked()
        assert returned == ["b"]
        segment.append(b"3")
        assert sorted(pushed) == sorted(
            [(n, c) for c in (b"1", b"2") for n in "abc"] + [("a", b"3"), ("c", b"3")]
        )
        assert [c for n, c in pushed if n == "a"] == [b"1", b"2", b"3"]
        await trio.testing.wait_all_tasks_blocked()
        assert returned == ["b"]
        segment.close()  # the rest wake up
    assert sorted(returned) == ["a", "b", "c"]


async def test_push_while_returns_at_once_when_behind_or_closed() -> None:
    segment = Segment(0)
    segment.append(b"there already")

    def never(chunk: bytes) -> bool:
        raise AssertionError("pushed to a reader that is behind")

    await segment.push_while(0, never)  # chunk 0 exists: read it first
    segment.append(b"more")
    segment.close()
    await segment.push_while(2, never)


async def test_a_cancelled_pusher_is_pushed_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    segment = Segment(0)
    pushed: list[bytes] = []

    def push(chunk: bytes) -> bool:
        pushed.append(chunk)
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(segment.push_while, 0, push)
        await trio.testing.wait_all_tasks_blocked()
        segment.append(b"before")
        nursery.cancel_scope.cancel()
    segment.append(b"after")
    assert pushed == [b"before"]


async def test_wait_chunks_cancellation_leaves_segment_unchanged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    segment = Segment(0)
    with trio.move_on_after(1) as scope:
        await segment.wait_chunks(0)
    assert scope.cancelled_caught
    segment.append(b"late")
    assert await segment.wait_chunks(0) == [b"late"]


async def test_wait_chunks_always_checkpoints() -> None:
    segment = Segment(0)
    segment.append(b"ready")
    with trio.testing.assert_checkpoints():
        await segment.wait_chunks(0)


async def test_closing_a_segment_cancels_its_idle_writers() -> None:
    segment = Segment(0)
    done = trio.Event()

    async def idle() -> None:
        with segment.idle_writer() as scope, scope:
            await trio.sleep_forever()
        assert scope.cancelled_caught
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        segment.close()
    assert done.is_set()
    # A writer arriving after the close is released at once.
    with segment.idle_writer() as scope, scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught


# -- TaskScopes ----------------------------------------------------------------------------


async def test_task_scopes_cancel_and_drain_waits_for_every_lease() -> None:
    scopes = TaskScopes("cam")
    left: list[str] = []

    async def hold(label: str, *, task_status: trio.TaskStatus[None]) -> None:
        with scopes.lease() as scope:
            task_status.started()
            with scope:
                await trio.sleep_forever()
            await (
                trio.lowlevel.checkpoint()
            )  # the handler still has work to do after its scope ends
            left.append(label)

    async with trio.open_nursery() as nursery:
        await nursery.start(hold, "a")
        await nursery.start(hold, "b")
        assert len(scopes) == 2
        await scopes.cancel_and_drain()
        assert sorted(left) == ["a", "b"]
        assert len(scopes) == 0
    with pytest.raises(ChannelClosedError), scopes.lease():
        pass  # pragma: no cover


# -- the window rules (Channel) --------------------------------------------------------------


async def test_write_minus_one_means_next_write_and_reuses_an_open_segment() -> None:
    channel = Channel("cam", "video/mp2t")
    first = channel.segment_for_write(-1)
    assert first.seq == 0
    assert channel.segment_for_write(0) is first  # two POSTs to one open seq append


async def test_write_to_a_closed_seq_starts_it_afresh() -> None:
    channel = Channel("cam", "")
    old = channel.segment_for_write(3)
    old.append(b"old")
    old.close()
    fresh = channel.segment_for_write(3)
    assert fresh is not old
    assert fresh.seq == 3
    assert fresh.chunks == []
    assert not fresh.closed
    assert old.chunks == [b"old"]  # readers of the old one keep what they had


async def test_writing_seq_plus_five_evicts_and_closes_seq() -> None:
    channel = Channel("cam", "")
    old = channel.segment_for_write(2)
    new = channel.segment_for_write(7)
    assert old.closed
    assert channel.window.get(2) is None
    assert channel.window.get(7) is new


async def test_reset_closes_older_segments_only() -> None:
    channel = Channel("cam", "")
    segments = [channel.segment_for_write(seq) for seq in (1, 2, 3, 4)]
    channel.segment_for_write(3, reset=True)
    assert [s.closed for s in segments] == [True, True, False, False]


async def test_read_precreates_just_ahead_of_the_writer() -> None:
    channel = Channel("cam", "")
    found = channel.segment_for_read(-1)  # nothing written: next write is 0
    assert (found.seq, found.latest) == (0, 0)
    assert found.segment is not None
    assert channel.window.get(0) is found.segment
    one = channel.segment_for_read(1)  # nothing written yet and seq == 1: grace
    assert one.segment is not None
    assert channel.segment_for_read(2).segment is None  # too far ahead: 470
    channel.note_first_byte(4)
    assert channel.segment_for_read(5).segment is not None  # == next write
    assert channel.segment_for_read(6).segment is None


async def test_read_minus_two_and_minus_n() -> None:
    channel = Channel("cam", "")
    for seq in range(8):
        segment = channel.segment_for_write(seq)
        channel.note_first_byte(seq)
        segment.close()
    assert channel.next_write == 8
    current = channel.segment_for_read(-2)
    assert (current.seq, current.latest) == (7, 8)
    assert channel.segment_for_read(-3).seq == 6
    assert channel.segment_for_read(-6).segment is not None  # seq 3, oldest in window
    gone = channel.segment_for_read(-7)
    assert (gone.seq, gone.segment) == (2, None)  # evicted: 470
    assert channel.segment_for_read(-20).segment is None  # negative resolved seq


async def test_closed_channel_precreates_nothing() -> None:
    channel = Channel("cam", "")
    channel.request_delete()
    assert channel.segment_for_read(-1).segment is None
    with pytest.raises(ChannelClosedError):
        channel.segment_for_write(-1)


# -- SegmentWriter -------------------------------------------------------------------------


async def test_first_byte_advances_next_write_even_backwards() -> None:
    channel = Channel("cam", "")
    channel.note_first_byte(9)
    writer = SegmentWriter(channel, channel.segment_for_write(4))
    assert await writer.pump(chunk_source(b"x", None)) is PublishOutcome.COMPLETE
    assert channel.next_write == 5  # a restarted publisher wins
    assert writer.segment.closed
    assert writer.segment.chunks == [b"x"]


async def test_empty_body_is_a_segment_and_advances_next_write() -> None:
    channel = Channel("cam", "")
    writer = SegmentWriter(channel, channel.segment_for_write(-1))
    assert await writer.pump(chunk_source(b"", None)) is PublishOutcome.EMPTY
    assert channel.next_write == 1
    assert writer.segment.closed
    assert writer.segment.size == 0
    assert channel.segment_for_read(-1).seq == 1  # a -1 reader never gets seq 0 again


async def test_idle_writer_is_released_when_its_segment_closes() -> None:
    channel = Channel("cam", "")
    writer = SegmentWriter(channel, channel.segment_for_write(0))
    outcome: list[PublishOutcome] = []

    async def never() -> bytes | None:
        await trio.sleep_forever()
        return None  # pragma: no cover

    async with trio.open_nursery() as nursery:

        async def publish() -> None:
            outcome.append(await writer.pump(never))

        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()
        writer.segment.close()  # DELETE /cam/0
    assert outcome == [PublishOutcome.RELEASED]
    assert channel.next_write == 1


async def test_released_old_preconnect_never_moves_next_write_back() -> None:
    channel = Channel("cam", "")
    old = SegmentWriter(channel, channel.segment_for_write(2))
    channel.note_first_byte(6)
    old.finish(PublishOutcome.RELEASED)
    assert channel.next_write == 7


async def test_broken_publisher_closes_segment_with_bytes_written() -> None:
    channel = Channel("cam", "")
    writer = SegmentWriter(channel, channel.segment_for_write(0))
    outcome = await writer.pump(chunk_source(b"ab", b"cd", PublisherGone))
    assert outcome is PublishOutcome.ABORTED
    assert writer.segment.closed
    assert writer.segment.chunks == [b"ab", b"cd"]


async def test_bytes_after_a_close_from_elsewhere_are_discarded() -> None:
    channel = Channel("cam", "")
    writer = SegmentWriter(channel, channel.segment_for_write(0))
    closed_at: list[int] = []

    async def read_chunk() -> bytes | None:
        await trio.lowlevel.checkpoint()
        if writer.bytes_written == 2 and not closed_at:
            writer.segment.close()  # e.g. DELETE /cam/0 mid-body
            closed_at.append(writer.segment.size)
            return b"late"
        return b"ab" if not closed_at else None

    assert await writer.pump(read_chunk) is PublishOutcome.COMPLETE
    assert writer.segment.chunks == [b"ab"]


# -- registry --------------------------------------------------------------------------------


async def test_create_is_idempotent_and_delete_removes(nursery: trio.Nursery) -> None:
    registry = ChannelRegistry(nursery)
    channel = registry.create("cam", "video/mp2t")
    assert registry.create("cam", "other") is channel
    assert channel.mime_type == "video/mp2t"
    await registry.delete("cam")
    assert registry.get("cam") is None  # gone at once
    assert channel.closed
    with pytest.raises(ChannelNotFoundError):
        await registry.delete("cam")
    await channel.wait_deleted()
    assert channel.released
    assert registry.retired() == []


async def test_a_deleted_name_is_free_at_once_and_a_create_makes_a_new_channel(
    nursery: trio.Nursery,
) -> None:
    registry = ChannelRegistry(nursery)
    old = registry.create("cam")
    reader = old.segment_for_write(0)
    reader.append(b"old")
    old.reading(reader)  # a slow reader keeps the old channel's teardown going
    registry.remove("cam")
    new = registry.create("cam", "text/plain")
    assert new is not old
    assert registry.get("cam") is new
    assert (new.next_write, new.closed, new.mime_type) == (0, False, "text/plain")
    assert registry.retired() == [old]
    assert registry.gauges()["channels_retired"] == 1


async def test_delete_releases_subscribers_before_publishers(nursery: trio.Nursery) -> None:
    """Every subscriber attached at the DELETE hands its head over before any publisher
    is answered, however long the subscribers take to get there: the order comes from
    the teardown waiting for them, not from scheduling."""
    registry = ChannelRegistry(nursery)
    channel = registry.create("cam")
    segment = channel.segment_for_write(1)  # a precreated, empty segment
    events: list[str] = []

    async def subscriber(label: str, delay: int, *, task_status: trio.TaskStatus[None]) -> None:
        with channel.subscribers.lease() as scope, scope:
            channel.head_pending()
            task_status.started()
            assert not await segment.wait_readable(0)
            for _ in range(delay):  # slower than the publisher's answer on purpose
                await trio.lowlevel.checkpoint()
            events.append(f"{label} head")
            channel.head_sent()

    async def preconnect(*, task_status: trio.TaskStatus[None]) -> None:
        with channel.publishers.lease() as scope:
            task_status.started()
            with scope:
                await trio.sleep_forever()
            events.append("preconnect released")

    async with trio.open_nursery() as handlers:
        await handlers.start(preconnect)  # started first on purpose
        await handlers.start(subscriber, "subscriber-1", 20)
        await handlers.start(subscriber, "subscriber-2", 40)
        await registry.delete("cam")
        events.append("delete returned")
    assert events == [
        "delete returned",  # at once: nobody is waited for
        "subscriber-1 head",
        "subscriber-2 head",
        "preconnect released",
    ]


async def test_a_stuck_head_holds_only_the_publishers_and_only_for_the_grace(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = ChannelRegistry(nursery, teardown_grace=3)
    channel = registry.create("cam")
    released = trio.Event()

    async def stuck(*, task_status: trio.TaskStatus[None]) -> None:
        with channel.subscribers.lease():
            channel.head_pending()
            task_status.started()
            with trio.CancelScope(shield=True):
                await released.wait()  # a client that can't take even a head
            channel.head_sent()

    async with trio.open_nursery() as handlers:
        await handlers.start(stuck)
        start = trio.current_time()
        await registry.delete("cam")
        assert trio.current_time() == start  # the DELETE itself waits for nothing
        await channel.wait_released()
        assert trio.current_time() - start == pytest.approx(3)
        assert not channel.deleted  # the stuck reader is still served
        released.set()
    await channel.wait_deleted()


async def test_a_stalled_reader_holds_nothing_up_and_its_bytes_are_counted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = ChannelRegistry(nursery, teardown_grace=3)
    channel = registry.create("cam")
    segment = channel.segment_for_write(0)
    segment.append(b"x" * 1000)
    leave = trio.Event()

    async def stalled(*, task_status: trio.TaskStatus[None]) -> None:
        with channel.subscribers.lease():
            held = channel.reading(segment)
            task_status.started()  # its head went out long ago
            await leave.wait()
            channel.done_reading(segment, held)

    async with trio.open_nursery() as handlers:
        await handlers.start(stalled)
        start = trio.current_time()
        await registry.delete("cam")
        await channel.wait_released()
        assert trio.current_time() == start  # not even the grace
        assert registry.gauges()["retained_bytes"] == 1000
        assert registry.retired() == [channel]
        leave.set()
    await channel.wait_deleted()
    await trio.testing.wait_all_tasks_blocked()
    assert registry.retired() == []
    assert registry.gauges()["retained_bytes"] == 0


async def test_retired_channels_count_towards_max_channels(nursery: trio.Nursery) -> None:
    registry = ChannelRegistry(nursery, limits=ChannelLimits(max_channels=1))
    channel = registry.create("a")
    segment = channel.segment_for_write(0)
    with channel.subscribers.lease():
        registry.remove("a")
        with pytest.raises(LimitExceededError):
            registry.create("b")
    await channel.wait_deleted()
    await trio.testing.wait_all_tasks_blocked()
    registry.create("b")
    assert segment.closed


async def test_sweep_deletes_idle_channels_but_not_underscored(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = ChannelRegistry(nursery)
    registry.create("idle")
    registry.create("busy")
    registry.create("_internal")
    await nursery.start(
        functools.partial(registry.run_sweeper, idle_timeout=300, sweep_interval=60)
    )
    await trio.sleep(200)
    registry.get("busy").note_first_byte(0)  # type: ignore[union-attr]
    await trio.sleep(170)  # idle: 370 s since creation; busy: 170 s since its write
    assert registry.get("idle") is None
    assert registry.get("busy") is not None
    assert registry.get("_internal") is not None
    await trio.sleep(200)
    assert registry.get("busy") is None
    assert registry.get("_internal") is not None


async def test_changefeed_records_additions_and_removals(nursery: trio.Nursery) -> None:
    registry = ChannelRegistry(nursery, changefeed=True)
    registry.create("a")
    registry.create("a")  # no event: it existed
    registry.create("b")
    await registry.delete("a")
    feed = registry.get("_changes")
    assert feed is not None
    assert feed.mime_type == "application/json"
    events = [json.loads(b"".join(feed.window.get(seq).chunks)) for seq in range(4)]  # type: ignore[union-attr]
    assert events == [
        {"added": ["_changes"]},
        {"added": ["a"]},
        {"added": ["b"]},
        {"removed": ["a"]},
    ]
    assert feed.next_write == 4


async def test_changefeed_posts_one_removal_per_channel_however_it_goes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    registry = ChannelRegistry(nursery, changefeed=True)
    for name in ("a", "b", "c", "d"):
        registry.create(name)
    registry.get("a").note_first_byte(0)  # type: ignore[union-attr]
    await registry.delete("b")  # the registry's DELETE
    c, d = registry.get("c"), registry.get("d")
    assert c is not None
    assert d is not None
    c.request_delete()  # the channel itself (the in-process way)
    d.request_delete()
    d.request_delete()  # twice: still one removal
    assert registry.get("c") is None
    registry.create("b")  # a new channel under a deleted name: added again
    await trio.sleep(1)
    await registry.sweep(idle_timeout=0.5)  # sweeps a and b
    feed = registry.get("_changes")
    assert feed is not None
    segments = sorted(feed.window, key=lambda segment: segment.seq)
    events = [json.loads(b"".join(segment.chunks)) for segment in segments]
    # The window holds the last five events.
    assert events == [
        {"removed": ["c"]},
        {"removed": ["d"]},
        {"added": ["b"]},
        {"removed": ["a"]},
        {"removed": ["b"]},
    ]
    assert feed.next_write == 1 + 4 + 1 + 1 + 1 + 1 + 2


async def test_no_changefeed_unless_asked(nursery: trio.Nursery) -> None:
    registry = ChannelRegistry(nursery)
    registry.create("a")
    assert registry.get("_changes") is None


async def test_close_all_deletes_every_channel(nursery: trio.Nursery) -> None:
    registry = ChannelRegistry(nursery)
    channels = [registry.create(name) for name in ("a", "b", "c")]
    await registry.close_all()
    assert len(registry) == 0
    assert all(channel.deleted for channel in channels)
