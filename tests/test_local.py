"""The in-process API: LocalPublisher / LocalSubscriber on the registry, and mixed with HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio import LocalPublisher, LocalSubscriber
from trickle_trio.core.errors import (
    ChannelClosedError,
    ChannelNotFoundError,
    SegmentNotFoundError,
)
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


async def test_write_bytes_and_read_with_metadata(trickle_registry: ChannelRegistry) -> None:
    pub = LocalPublisher(trickle_registry, "events", "application/json")
    pub.create_channel()
    assert await pub.write(b'{"a":1}') == 0
    assert await pub.write(b'{"a":2}') == 1
    sub = LocalSubscriber(trickle_registry, "events")
    segment = await sub.read(0)
    assert (segment.seq, segment.latest, segment.content_type) == (0, 2, "application/json")
    assert segment.headers == {
        "Lp-Trickle-Seq": "0",
        "Lp-Trickle-Latest": "2",
        "Content-Type": "application/json",
    }
    assert await segment.read() == b'{"a":1}'
    assert await (await sub.read(-2)).read() == b'{"a":2}'


async def test_write_from_an_async_source_is_readable_chunk_by_chunk(
    trickle_registry: ChannelRegistry,
) -> None:
    pub = LocalPublisher(trickle_registry, "cam", "video/mp2t")
    pub.create_channel()
    sub = LocalSubscriber(trickle_registry, "cam")
    send_chan, recv_chan = trio.open_memory_channel[bytes](0)  # an async byte source
    received: list[bytes] = []

    async def read() -> None:
        segment = await sub.read(-1)
        assert segment.seq == 0
        async for chunk in segment:
            received.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pub.write, recv_chan)
        async with send_chan:
            await send_chan.send(b"one")
            await trio.testing.wait_all_tasks_blocked()
            assert received == [b"one"]
            await send_chan.send(b"two")
            await trio.testing.wait_all_tasks_blocked()
            assert received == [b"one", b"two"]
    assert received == [b"one", b"two"]


async def test_a_failing_source_closes_the_segment_with_what_was_written(
    trickle_registry: ChannelRegistry,
) -> None:
    pub = LocalPublisher(trickle_registry, "cam")
    pub.create_channel()

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="unplugged"):
        await pub.write(broken())
    segment = await LocalSubscriber(trickle_registry, "cam").read(0)
    assert await segment.read() == b"partial"


async def test_empty_write_advances_next(trickle_registry: ChannelRegistry) -> None:
    pub = LocalPublisher(trickle_registry, "cam")
    pub.create_channel()
    assert await pub.write(b"") == 0
    assert await pub.write(b"") == 1
    assert trickle_registry.get("cam").next_write == 2  # type: ignore[union-attr]


async def test_subscriber_errors(trickle_registry: ChannelRegistry) -> None:
    with pytest.raises(ChannelNotFoundError):
        await LocalSubscriber(trickle_registry, "nope").read()
    pub = LocalPublisher(trickle_registry, "cam")
    pub.create_channel()
    for _ in range(7):
        await pub.write(b"x")
    with pytest.raises(SegmentNotFoundError) as info:
        await LocalSubscriber(trickle_registry, "cam").read(0)
    assert (info.value.seq, info.value.latest) == (0, 7)
    with pytest.raises(SegmentNotFoundError):
        await LocalSubscriber(trickle_registry, "cam").read(-9)


async def test_close_ends_waiting_local_subscribers(trickle_registry: ChannelRegistry) -> None:
    pub = LocalPublisher(trickle_registry, "cam")
    pub.create_channel()
    segment = await LocalSubscriber(trickle_registry, "cam").read(-1)
    chunks: list[bytes] = []

    async def drain() -> None:
        chunks.extend([chunk async for chunk in segment])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        await pub.close()
    assert chunks == []
    with pytest.raises(ChannelNotFoundError):
        await LocalSubscriber(trickle_registry, "cam").read()
    await pub.close()  # twice is fine
    with pytest.raises(ChannelNotFoundError):
        await pub.write(b"x")


async def test_a_deleted_channel_is_not_found_in_process_too(
    trickle_registry: ChannelRegistry,
) -> None:
    pub = LocalPublisher(trickle_registry, "cam")
    channel = pub.create_channel()
    channel.request_delete()
    with pytest.raises(ChannelNotFoundError):
        await pub.write(b"x")
    with pytest.raises(ChannelNotFoundError):
        await LocalSubscriber(trickle_registry, "cam").read()
    assert pub.create_channel() is not channel  # a brand-new channel
    await channel.wait_deleted()


async def test_a_channel_deleted_while_writing_raises_closed(
    trickle_registry: ChannelRegistry,
) -> None:
    pub = LocalPublisher(trickle_registry, "cam")
    channel = pub.create_channel()

    async def source() -> AsyncIterator[bytes]:
        yield b"a"
        channel.request_delete()
        await trio.sleep_forever()
        yield b"never"

    with pytest.raises(ChannelClosedError):
        await pub.write(source())
    await channel.wait_deleted()


async def test_local_and_http_share_one_state(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    pub = LocalPublisher(trickle_registry, "cam", "video/mp2t")
    pub.create_channel()
    async with open_exchange(trickle_app, "GET", "/cam/-1") as get:
        await trio.testing.wait_all_tasks_blocked()
        await pub.write(b"from inside")
        response = await get.read_response()
    assert response.body == b"from inside"
    assert response.headers["content-type"] == "video/mp2t"
    async with open_exchange(trickle_app, "POST", "/cam/1", body=b"from outside") as post:
        await post.read_response()
    assert await (await LocalSubscriber(trickle_registry, "cam").read(1)).read() == b"from outside"
    assert (await fetch(trickle_app, "cam", 0)).body == b"from inside"
