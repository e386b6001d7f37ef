"""Our clients through our server, byte for byte, and the same code on both transports.

The interop sizes (0 B, 1 B, 1 MiB, 16 MiB) go through real sockets, written whole and
chunk by chunk, read by a subscriber that was waiting before the first byte and by one
that comes afterwards. The parity tests run one scenario, unchanged, over HTTP and over
the in-process clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from trickle_trio.client import (
    ChannelClosedError,
    ChannelNotFoundError,
    SegmentNotFoundError,
    open_publisher,
    open_subscriber,
)
from trickle_trio.client.api import PublisherLike, SubscriberLike
from trickle_trio.client.local import open_local_publisher, open_local_subscriber
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name, wait_until

MiB = 1 << 20
SIZES = [0, 1, MiB, 16 * MiB]


def pattern(size: int, seed: int) -> bytes:
    """``size`` bytes that differ at every offset and between seeds."""
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_segment_sizes_are_byte_exact_through_our_server(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    written = [pattern(size, seed) for seed, size in enumerate(SIZES)]
    written += [pattern(size, 10 + seed) for seed, size in enumerate(SIZES)]
    with trio.fail_after(30):
        async with open_publisher(url, "application/octet-stream", create=True) as pub:
            live: list[bytes] = []

            async def subscribe_live(task_status: trio.TaskStatus[None]) -> None:
                async with open_subscriber(url, start=0) as sub:
                    task_status.started()
                    async for segment in sub:
                        live.append(b"".join([chunk async for chunk in segment]))

            async with trio.open_nursery() as nursery:
                await nursery.start(subscribe_live)
                for data in written[: len(SIZES)]:  # whole
                    await pub.write(data)
                for data in written[len(SIZES) :]:  # chunk by chunk, 64 KiB
                    async with pub.segment() as seg:
                        async for chunk in chunks_of(data, 65536):
                            await seg.send(chunk)
                await wait_until(lambda: len(live) == len(written))
                # A late subscriber reads the last ones again from the window (5 slots,
                # one taken by the idle preconnect of the next seq).
                async with open_subscriber(url, start=len(written) - 4) as late:
                    again = []
                    for _ in range(4):
                        segment = await late.next()
                        assert segment is not None
                        again.append(await segment.read())
                await pub.aclose()
            stats = pub.stats()
    assert [len(x) for x in live] == [len(x) for x in written]
    assert live == written
    assert again == written[-4:]
    assert stats.bytes_submitted_to_transport == sum(map(len, written))
    assert stats.empty_segments_completed == 2


# -- the same code on both transports ------------------------------------------------------------

Transports = Callable[..., Any]


@pytest.fixture(params=["http", "in-process"])
def clients(request: pytest.FixtureRequest, trickle_server: RunningServer) -> tuple[Any, Any]:
    """(open_publisher(name, **kw), open_subscriber(name, **kw)) for one transport."""
    registry = trickle_server.registry

    def http_publisher(name: str, **kw: Any) -> AbstractAsyncContextManager[PublisherLike]:
        return open_publisher(f"{trickle_server.url}/{name}", **kw)

    def http_subscriber(name: str, **kw: Any) -> AbstractAsyncContextManager[SubscriberLike]:
        return open_subscriber(f"{trickle_server.url}/{name}", **kw)

    def local_publisher(name: str, **kw: Any) -> AbstractAsyncContextManager[PublisherLike]:
        return open_local_publisher(registry, name, **kw)

    def local_subscriber(name: str, **kw: Any) -> AbstractAsyncContextManager[SubscriberLike]:
        return open_local_subscriber(registry, name, **kw)

    if request.param == "http":
        return http_publisher, http_subscriber
    return local_publisher, local_subscriber


async def test_same_scenario_on_both_transports(
    clients: tuple[Any, Any], trickle_server: RunningServer
) -> None:
    open_pub, open_sub = clients
    name = fresh_name()

    async def source() -> AsyncIterator[bytes]:
        yield b"from a "
        yield b"source"

    with trio.fail_after(STEP):
        async with open_pub(name, mime_type="text/plain", create=True) as pub:
            got: list[tuple[int, str, bytes]] = []

            async def subscribe(task_status: trio.TaskStatus[None]) -> None:
                sub: SubscriberLike
                async with open_sub(name, start=0) as sub:
                    task_status.started()
                    async for segment in sub:
                        got.append((segment.seq, segment.content_type, await segment.read()))
                    assert sub.stats().segments_delivered == 5

            async with trio.open_nursery() as nursery:
                await nursery.start(subscribe)
                assert await pub.write(b"whole") == 0
                async with pub.segment() as seg:
                    assert seg.seq == 1
                    await seg.send(b"chunk ")
                    await seg.send(b"by chunk")
                assert await pub.write(source()) == 2
                assert await pub.write(b"") == 3
                seg = await pub.next()
                await seg.write(b"next()")
                # all read before the DELETE
                await wait_until(lambda: len(got) == 5)
                await pub.aclose()
            stats = pub.stats()
    assert got == [
        (0, "text/plain", b"whole"),
        (1, "text/plain", b"chunk by chunk"),
        (2, "text/plain", b"from a source"),
        (3, "text/plain", b""),
        (4, "text/plain", b"next()"),
    ]
    assert (stats.segments_started, stats.segments_completed) == (5, 5)
    assert stats.empty_segments_completed == 1
    assert name not in trickle_server.registry  # closing deleted the channel


async def test_same_errors_on_both_transports(
    clients: tuple[Any, Any], trickle_server: RunningServer
) -> None:
    open_pub, open_sub = clients
    name = fresh_name()
    with trio.fail_after(STEP):
        async with open_sub(name) as sub:
            with pytest.raises(ChannelNotFoundError):
                await sub.next()
        async with open_pub(name, create=True, delete_on_close=False) as pub:
            for i in range(7):
                await pub.write(b"%d" % i)
        async with open_sub(name, start=0) as sub:
            with pytest.raises(SegmentNotFoundError) as info:
                await sub.next()
        assert info.value.seq == 0
        assert info.value.latest in (7, 8)  # HTTP lets its idle preconnect go: one more
        async with open_sub(name, start=1, on_gap="jump") as sub:
            seen = []

            async def jump_and_read() -> None:
                segment = await sub.next()
                assert segment is not None
                seen.append(segment.seq)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(jump_and_read)
                channel = trickle_server.registry.get(name)
                assert channel is not None
                latest = channel.next_write
                await wait_until(lambda: channel.window.get(latest) is not None)
                async with open_pub(name, start=-1, delete_on_close=False) as pub:
                    await pub.write(b"live")
            assert seen == [latest]
            assert sub.stats().get_470_reset == 1

        async def deleted_while_idle() -> None:
            async with open_pub(name) as pub:
                await pub.write(b"last")
                await trickle_server.registry.delete(name)
                await trio.sleep_forever()

        with pytest.raises(ChannelClosedError):
            await deleted_while_idle()
