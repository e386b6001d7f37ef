"""The HTTP subscriber against our server (and scripted servers) over real sockets.

Every test is bounded by ``fail_after``; waiting is on events or polled server state.
"""

from __future__ import annotations

import pytest
import trio

from trickle_trio.client import (
    ChannelNotFoundError,
    HTTPError,
    SegmentNotFoundError,
    SubscriberSegment,
    Transport,
    TransportError,
    open_publisher,
    open_subscriber,
)
from trickle_trio.server import RunningServer

from .client_support import (
    STEP,
    fresh_name,
    read_request_head,
    scripted_server,
    task_names,
    wait_until,
)


async def publish(url: str, *segments: bytes) -> None:
    """Write ``segments`` at the live edge with a publisher that leaves the channel open
    (letting its idle preconnect go makes one more, empty, segment)."""
    async with open_publisher(url, start=-1, delete_on_close=False) as pub:
        for data in segments:
            await pub.write(data)


async def test_start_next_current_and_a_seq(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        async with open_publisher(url, "text/plain") as pub:
            for data in (b"zero", b"one", b"two"):
                await pub.write(data)
            async with open_subscriber(url, start=-2) as current:
                segment = await current.next()
                assert segment is not None
                assert (segment.seq, segment.latest, await segment.read()) == (2, 3, b"two")
                assert segment.content_type == "text/plain"
                assert segment.headers["lp-trickle-seq"] == "2"
                assert segment.headers["Lp-Trickle-Latest"] == "3"
                assert segment.size == 3
            async with open_subscriber(url, start=0) as first:
                segment = await first.next()
                assert segment is not None
                assert (segment.seq, await segment.read()) == (0, b"zero")
                segment = await first.next()  # preconnected when seq 0's head came
                assert segment is not None
                assert (segment.seq, await segment.read()) == (1, b"one")
            channel = trickle_server.registry.get(url.rsplit("/", 1)[1])
            assert channel is not None
            await wait_until(lambda: len(channel.subscribers) == 0)  # the GETs above are gone
            async with open_subscriber(url, start=-1) as following:
                async with trio.open_nursery() as nursery:
                    got: list[tuple[int, int, bytes]] = []

                    async def take() -> None:
                        segment = await following.next()
                        assert segment is not None
                        got.append((segment.seq, segment.latest, await segment.read()))

                    nursery.start_soon(take)
                    await wait_until(lambda: len(channel.subscribers) == 1)  # GET -1 is there
                    await pub.write(b"three")
                assert got == [(3, 3, b"three")]


async def test_iteration_follows_seqs_and_ends_with_the_channel(
    trickle_server: RunningServer,
) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    got: list[tuple[int, bytes]] = []
    with trio.fail_after(STEP):
        async with open_publisher(url, create=True) as pub, trio.open_nursery() as nursery:

            async def subscribe() -> None:
                async with open_subscriber(url, start=0) as sub:
                    async for segment in sub:
                        got.append((segment.seq, b"".join([c async for c in segment])))
                    assert sub.ended
                    assert sub.stats().segments_delivered == 4

            nursery.start_soon(subscribe)
            for data in (b"a", b"", b"bb", b"ccc"):  # an empty segment is a segment
                await pub.write(data)
            # all read before the DELETE
            await wait_until(lambda: len(got) == 4)
            await pub.aclose()
    assert got == [(0, b"a"), (1, b""), (2, b"bb"), (3, b"ccc")]


async def test_a_missing_channel_raises_channel_not_found(trickle_server: RunningServer) -> None:
    with trio.fail_after(STEP):
        async with open_subscriber(f"{trickle_server.url}/{fresh_name()}") as sub:
            with pytest.raises(ChannelNotFoundError):
                await sub.next()
            assert sub.stats().get_404 == 1


async def test_470_raises_with_seq_and_latest(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        await publish(url, *[b"%d" % i for i in range(7)])  # seqs 0-1 have left the window
        async with open_subscriber(url, start=0) as sub:
            with pytest.raises(SegmentNotFoundError) as info:
                await sub.next()
    assert (info.value.seq, info.value.latest) == (0, 8)  # 7 is the empty one


async def test_470_with_jump_resyncs_to_the_live_edge_and_counts_it(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        await publish(url, *[b"%d" % i for i in range(7)])
        async with open_subscriber(url, start=1, on_gap="jump") as sub:
            async with trio.open_nursery() as nursery:
                got: list[tuple[int, bytes]] = []

                async def take() -> None:
                    segment = await sub.next()
                    assert segment is not None
                    got.append((segment.seq, await segment.read()))

                nursery.start_soon(take)
                channel = trickle_server.registry.get(name)
                assert channel is not None
                await wait_until(lambda: len(channel.subscribers) == 1)  # waiting on seq 8
                await publish(url, b"live")
            assert got == [(8, b"live")]
            stats = sub.stats()
    assert (stats.get_470_reset, stats.seq_gap_events) == (1, 1)
    assert stats.latest_seq == 8


async def test_set_seq_repositions(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        await publish(url, b"zero", b"one", b"two", b"three")
        async with open_subscriber(url, start=0) as sub:
            segment = await sub.next()
            assert segment is not None
            assert segment.seq == 0
            sub.set_seq(3)
            assert sub.seq == 3
            segment = await sub.next()
            assert segment is not None
            assert (segment.seq, await segment.read()) == (3, b"three")
            sub.set_seq(1)
            segment = await sub.next()
            assert segment is not None
            assert (segment.seq, await segment.read()) == (1, b"one")
            assert sub.stats().seq_gap_events == 0  # asked for: not a gap


async def test_a_preconnect_without_a_head_is_reissued(trickle_server: RunningServer) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        async with (
            open_publisher(url, create=True) as pub,
            open_subscriber(url, start=0, preconnect_timeout=0.05) as sub,
        ):
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def take() -> None:
                    segment = await sub.next()
                    assert segment is not None
                    got.append(await segment.read())

                nursery.start_soon(take)
                await wait_until(lambda: sub.stats().preconnect_reissues >= 2)
                await pub.write(b"at last")
            assert got == [b"at last"]
            stats = sub.stats()
    assert stats.get_retries == stats.preconnect_reissues
    assert stats.get_failures == 0


async def test_more_than_five_consecutive_errors_fail_the_subscription() -> None:
    requests = 0

    async def always_503(stream: trio.SocketStream) -> None:
        nonlocal requests
        while await read_request_head(stream):
            requests += 1
            await stream.send_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")

    with trio.fail_after(STEP):
        async with (
            scripted_server(always_503) as base,
            open_subscriber(f"{base}/ch", start=0, retry_delay=0.001) as sub,
        ):
            with pytest.raises(HTTPError) as info:
                await sub.next()
            stats = sub.stats()
    assert (info.value.status, info.value.body) == (503, b"busy")
    assert requests == stats.get_attempts == 6  # the first try and 5 retries
    assert stats.get_failures == 6


async def test_an_unreachable_server_fails_after_the_retries() -> None:
    async with scripted_server(read_request_head) as base:  # type: ignore[arg-type]
        pass  # the port is free again
    with trio.fail_after(STEP):
        async with open_subscriber(f"{base}/ch", retry_delay=0.001) as sub:
            with pytest.raises(TransportError):
                await sub.next()
            assert sub.stats().get_attempts == 6


async def test_other_4xx_raise_http_error(trickle_server: RunningServer) -> None:
    with trio.fail_after(STEP):
        async with open_subscriber(f"{trickle_server.url}/bad%20name") as sub:
            with pytest.raises(HTTPError) as info:
                await sub.next()
    assert info.value.status == 400


async def test_a_url_that_cannot_be_sent_fails_at_once() -> None:
    with pytest.raises(ValueError, match="percent-encode"):
        async with open_subscriber("http://127.0.0.1:1/bad name"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="not an http"):
        async with open_subscriber("ftp://127.0.0.1/ch"):
            pass  # pragma: no cover


async def test_a_subscriber_cancelled_mid_wait_leaves_no_task_behind(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        async with open_publisher(url, create=True) as pub:
            channel = trickle_server.registry.get(name)
            assert channel is not None
            await pub.write(b"zero")

            def get_tasks() -> list[str]:
                return [name for name in task_names() if name.startswith("trickle GET")]

            async with trio.open_nursery() as nursery:

                async def subscribe() -> None:
                    async with open_subscriber(url, start=0) as sub:
                        async for segment in sub:
                            await segment.read()

                nursery.start_soon(subscribe)
                # Reading seq 0 done, seq 1 preconnected and waiting on the server.
                await wait_until(lambda: get_tasks() == [f"trickle GET {url}/1"])
                await wait_until(lambda: len(channel.subscribers) == 1)
                nursery.cancel_scope.cancel()
            assert get_tasks() == []
            await wait_until(lambda: len(channel.subscribers) == 0)  # the server saw it go


async def test_a_segment_left_half_read_is_closed_by_the_next(
    trickle_server: RunningServer,
) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        await publish(url, b"x" * 1_000_000, b"small")
        async with Transport() as transport:
            async with open_subscriber(url, start=0, transport=transport) as sub:
                first = await sub.next()
                assert isinstance(first, SubscriberSegment)
                chunk = await first.__anext__()
                assert chunk
                second = await sub.next()
                assert second is not None
                assert (second.seq, await second.read()) == (1, b"small")
                assert not first.complete
                assert second.complete
            stats = transport.statistics()
    assert stats.connections_idle <= 4
