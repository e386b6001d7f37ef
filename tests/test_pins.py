"""The bound on pinned segments: sync rules (PinnedSegments), a channel's pinning, and the
cut over real sockets (a reader that stopped reading is reset; others carry on)."""

from __future__ import annotations

import json

import h11
import pytest
import trio

from trickle_trio.channels import Channel
from trickle_trio.config import Settings, SettingsError
from trickle_trio.core.wire import WINDOW as WINDOW_SIZE
from trickle_trio.pins import PinnedSegments
from trickle_trio.registry import ChannelRegistry
from trickle_trio.segment import Segment
from trickle_trio.server import open_server

from .sockets import call, connect, until

LIMIT = 20


class _Holder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cut: list[int] = []

    def cut_readers(self, segment: Segment) -> int:
        self.cut.append(segment.seq)
        return 2


def _segment(seq: int, size: int) -> Segment:
    segment = Segment(seq)
    segment.append(b"x" * size)
    segment.close()
    return segment


def test_under_the_bound_nothing_is_cut_and_release_gives_the_bytes_back() -> None:
    pins = PinnedSegments(limit=100)
    holder = _Holder("cam")
    first, second = _segment(0, 40), _segment(1, 60)
    pins.pin(first, holder)
    pins.pin(first, holder)  # once only
    pins.pin(second, holder)
    assert (pins.bytes, len(pins), holder.cut) == (100, 2, [])
    pins.release(first)
    pins.release(first)
    assert (pins.bytes, len(pins)) == (60, 1)


def test_past_the_bound_the_oldest_pinned_are_cut_until_under() -> None:
    pins = PinnedSegments(limit=100)
    a, b = _Holder("a"), _Holder("b")
    pins.pin(_segment(0, 50), a)
    pins.pin(_segment(7, 40), b)
    pins.pin(_segment(1, 50), a)  # 140 > 100: the oldest (a's seq 0) goes
    assert (a.cut, b.cut, pins.bytes, pins.readers_cut) == ([0], [], 90, 2)
    pins.pin(_segment(2, 200), a)  # 290: b's 7, then a's 1, then the new one itself
    assert (a.cut, b.cut, pins.bytes, len(pins)) == ([0, 1, 2], [7], 0, 0)


def test_no_bound_never_cuts() -> None:
    pins = PinnedSegments(limit=0)
    holder = _Holder("cam")
    pins.pin(_segment(0, 10**9), holder)
    assert (holder.cut, pins.bytes) == ([], 10**9)


def test_the_bound_is_a_setting_that_refuses_negatives() -> None:
    assert Settings().max_pinned_bytes == 0
    with pytest.raises(SettingsError, match="max_pinned_bytes"):
        Settings(max_pinned_bytes=-1)
    for name in ("max_connections", "max_connections_per_client"):
        with pytest.raises(SettingsError, match=name):
            Settings(**{name: -1})


def _write(channel: Channel, seq: int, data: bytes) -> Segment:
    segment = channel.segment_for_write(seq)
    segment.append(data)
    channel.note_first_byte(seq)
    segment.close()
    return segment


async def test_a_read_segment_pushed_out_of_the_window_is_pinned_until_its_reader_is_done(
    nursery: trio.Nursery,
) -> None:
    registry = ChannelRegistry(nursery, max_pinned_bytes=0)
    channel = registry.create("cam")
    first = _write(channel, 0, b"a" * 1000)
    held = channel.reading(first)
    for seq in range(1, WINDOW_SIZE):
        _write(channel, seq, b"b")
    assert registry.pins.bytes == 0  # still in the window
    _write(channel, WINDOW_SIZE, b"c")  # pushes seq 0 out
    assert registry.gauges()["pinned_bytes"] == 1000
    channel.done_reading(first, held)
    assert registry.gauges()["pinned_bytes"] == 0


async def test_past_the_bound_the_readers_of_the_oldest_pinned_segment_are_cut(
    nursery: trio.Nursery,
) -> None:
    registry = ChannelRegistry(nursery, max_pinned_bytes=1500)
    old = registry.create("old")
    other = registry.create("other")
    cuts: list[str] = []
    # Readers hold leases for as long as they read (a deleted channel's task waits for them).
    with old.subscribers.lease(), other.subscribers.lease():
        old_segment = _write(old, 0, b"a" * 1000)
        old_reader = old.reading(old_segment, lambda: cuts.append("old"))
        other_segment = _write(other, 0, b"b" * 1000)
        other.reading(other_segment, lambda: cuts.append("other"))
        uncuttable = old.reading(old_segment)  # a reader without a cut is left alone
        registry.remove("old")  # old's segment leaves the window once its teardown runs
        await old.wait_released()
        assert (cuts, registry.pins.bytes) == ([], 1000)
        for seq in range(1, WINDOW_SIZE + 1):
            _write(other, seq, b"")  # other's seq 0 out too: 2000 > 1500, the oldest goes
        assert cuts == ["old"]
        assert registry.gauges()["pinned_bytes"] == 1000
        assert registry.gauges()["pinned_readers_cut"] == 1
        # cut once only; the readers still finish as they do
        assert old.cut_readers(old_segment) == 0
        old.done_reading(old_segment, old_reader)
        old.done_reading(old_segment, uncuttable)
        assert registry.pins.bytes == 1000
    await old.wait_deleted()
    assert registry.pins.bytes == 1000  # other's reader is still there


@pytest.mark.fast_path  # stock hypercorn cannot reset a blocked write
async def test_over_sockets_a_stuck_reader_is_reset_and_the_others_are_whole() -> None:
    """Two readers stopped reading 8 MiB segments; their channels are deleted, so both
    segments are pinned: past the 12 MiB bound the older reader's connection is reset
    (no terminating chunk) while its write was blocked, the other reads every byte, and
    a witness channel is untouched."""
    size = 8 * 1024 * 1024
    settings = Settings(
        host="127.0.0.1", port=0, autocreate=True, max_pinned_bytes=12 * 1024 * 1024
    )
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            readers = []
            for name in ("first", "second"):
                data = name.encode() * (size // len(name))
                assert (await call(server.url, "POST", f"/{name}/0", data)).status == 200
                reader = await connect(server.url)
                await reader.start("GET", f"/{name}/0")
                await reader.end()
                assert (await reader.head()).status == 200
                readers.append((reader, data))
            assert (await call(server.url, "DELETE", "/first")).status == 200
            await until(lambda: server.registry.pins.bytes > 0)
            assert server.registry.pins.readers_cut == 0
            assert (await call(server.url, "DELETE", "/second")).status == 200
            await until(lambda: server.registry.pins.readers_cut == 1)
            assert (await call(server.url, "POST", "/witness/0", b"w" * 1000)).status == 200
            assert (await call(server.url, "GET", "/witness/0")).body == b"w" * 1000
            outcomes = []
            for reader, data in readers:
                got = b""
                try:
                    while (chunk := await reader.chunk()) is not None:
                        got += chunk
                    outcomes.append(got == data)
                except (h11.RemoteProtocolError, trio.BrokenResourceError):
                    outcomes.append("cut")
                await reader.aclose()
            assert outcomes == ["cut", True]
            await until(lambda: server.registry.pins.bytes == 0)
            status = json.loads((await call(server.url, "GET", "/_status")).body)
            assert status["pinned_readers_cut"] == 1
