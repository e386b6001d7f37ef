"""The HTTP publisher against our server over real sockets (level 4).

Every test is bounded by ``fail_after``; waiting is on events or polled server state,
never on sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trickle_trio import RequestError, Settings, open_server
from trickle_trio.client import (
    ChannelClosedError,
    ChannelNotFoundError,
    HTTPError,
    Publisher,
    SegmentWriteError,
    Transport,
    open_publisher,
    open_subscriber,
)
from trickle_trio.core import wire
from trickle_trio.server import RunningServer

from .client_support import STEP, RecordingTransport, fresh_name, open_proxy, wait_until


def settings(**changes: Any) -> Settings:
    return Settings(host="127.0.0.1", port=0, autocreate=True).replace(**changes)


async def read_segments(url: str, start: int, count: int) -> list[tuple[int, bytes]]:
    got = []
    async with open_subscriber(url, start=start) as sub:
        for _ in range(count):
            segment = await sub.next()
            assert segment is not None
            got.append((segment.seq, await segment.read()))
    return got


async def delete(url: str) -> int:
    async with Transport() as transport:
        return (await transport.request("DELETE", url)).status


async def test_segments_from_bytes_chunks_and_an_async_source(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"

    async def source() -> AsyncIterator[bytes]:
        for part in (b"s", b"ou", b"rce"):
            yield part

    with trio.fail_after(STEP):
        async with open_publisher(url, "text/plain") as pub:
            assert pub.next_seq == 0
            assert await pub.write(b"bytes") == 0
            async with pub.segment() as seg:
                assert seg.seq == 1
                await seg.send(b"chu")
                await seg.send(b"nks")
            assert await pub.write(source()) == 2
            assert await read_segments(url, 0, 3) == [(0, b"bytes"), (1, b"chunks"), (2, b"source")]
            channel = trickle_server.registry.get(name)
            assert channel is not None
            assert channel.mime_type == "text/plain"
            stats = pub.stats()
    assert stats.segments_started == stats.segments_completed == stats.post_success == 3
    assert stats.bytes_submitted_to_transport == len(b"byteschunkssource")
    assert stats.post_attempts == 4  # three segments, and the preconnect of seq 3
    assert stats.seq == 3
    assert stats.segments_failed == stats.post_retries == 0


async def test_preconnect_opens_at_once_and_next_preconnects_the_following_seq(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    with trio.fail_after(STEP):
        async with open_publisher(f"{trickle_server.url}/{name}") as pub:
            # The preconnect alone autocreated the channel and holds a publisher lease.
            await wait_until(lambda: name in trickle_server.registry)
            channel = trickle_server.registry.get(name)
            assert channel is not None
            await wait_until(lambda: len(channel.publishers) == 1)
            seg = await pub.next()
            assert (seg.seq, pub.next_seq) == (0, 1)
            await wait_until(lambda: len(channel.publishers) == 2)
            assert channel.next_write == 0  # idle POSTs move nothing
            await seg.aclose()  # a zero-byte segment is a valid, empty one
            assert channel.next_write == 1
            assert pub.stats().empty_segments_completed == 1


async def test_early_404_to_the_idle_preconnect_fails_the_block_at_once() -> None:
    events: list[str] = []
    publishers: list[Publisher] = []

    async def publish_idle(url: str) -> None:
        async with open_publisher(url) as pub:
            publishers.append(pub)
            events.append("idle")
            await trio.sleep_forever()  # only the server's answer can end this

    with trio.fail_after(STEP):
        async with open_server(settings(autocreate=False)) as server:
            with pytest.raises(ChannelNotFoundError) as info:
                await publish_idle(f"{server.url}/missing")
            events.append("raised")
    assert events == ["idle", "raised"]
    assert "missing" in str(info.value)
    assert publishers[0].stats().post_404 == 1


async def test_early_closed_to_the_idle_preconnect_fails_the_block_at_once(
    trickle_server: RunningServer,
) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    events: list[str] = []
    publishers: list[Publisher] = []

    async def delete_elsewhere(written: trio.Event) -> None:
        await written.wait()
        events.append(f"deleted {await delete(url)}")

    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            written = trio.Event()
            nursery.start_soon(delete_elsewhere, written)

            async def publish_then_idle() -> None:
                async with open_publisher(url) as pub:
                    publishers.append(pub)
                    await pub.write(b"one")
                    events.append("idle")
                    written.set()
                    await trio.sleep_forever()  # only the server's answer can end this

            with pytest.raises(ChannelClosedError):
                await publish_then_idle()
            events.append("raised")
    # The server releases the preconnect before it answers the DELETE itself.
    assert events[0] == "idle"
    assert sorted(events[1:]) == ["deleted 200", "raised"]
    assert publishers[0].stats().segments_completed == 1


async def test_a_4xx_from_a_hook_fails_create_and_the_idle_preconnect() -> None:
    def refuse(request: object, name: str) -> None:
        raise RequestError(403, "no publishing here")

    with trio.fail_after(STEP):
        async with open_server(settings(before_create=refuse)) as server:
            url = f"{server.url}/{fresh_name()}"
            with pytest.raises(HTTPError) as info:
                async with open_publisher(url, create=True):
                    pytest.fail("create should have failed")  # pragma: no cover
            assert (info.value.status, info.value.body) == (403, b"no publishing here\n")
            with pytest.raises(HTTPError):
                async with open_publisher(url):
                    await trio.sleep_forever()


async def test_a_preconnect_the_server_lets_go_is_opened_again() -> None:
    """A server with ``preconnect_timeout`` answers an idle preconnect 408: the publisher
    opens it again (it is not an error), and keeps publishing."""
    name = fresh_name()
    with trio.fail_after(STEP):
        async with open_server(settings(preconnect_timeout=0.1)) as server:
            url = f"{server.url}/{name}"
            async with open_publisher(url, create=True) as pub:
                await wait_until(lambda: pub.stats().post_retries >= 2)  # 408, 408, ...
                assert await pub.write(b"still here") == 0
                assert await read_segments(url, 0, 1) == [(0, b"still here")]
                stats = pub.stats()
    assert stats.post_http_failures >= 2
    assert stats.segments_completed == 1
    assert stats.terminal_error is None


async def test_closed_while_a_segment_streams(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"

    async def publish() -> None:
        async with open_publisher(url) as pub, pub.segment() as seg:
            await seg.send(b"first half")
            await delete(url)
            await seg.send(b"second half")  # the server has answered: this (or the
            await seg.aclose()  # preconnect's task) raises at once

    with trio.fail_after(STEP), pytest.raises(ChannelClosedError):
        await publish()


async def test_create_makes_the_channel_with_its_mime_type(trickle_server: RunningServer) -> None:
    name = fresh_name()
    with trio.fail_after(STEP):
        async with open_publisher(f"{trickle_server.url}/{name}", "video/mp2t", create=True):
            channel = trickle_server.registry.get(name)
            assert channel is not None
            assert channel.mime_type == "video/mp2t"
        async with open_server(settings(autocreate=False)) as server:
            server.registry.create(name, "application/json")
            async with open_publisher(f"{server.url}/{name}", "ignored", create=True) as pub:
                await pub.create()  # a no-op on an existing channel
                assert await pub.write(b"{}") == 0
            with pytest.raises(ChannelNotFoundError):
                async with open_publisher(f"{server.url}/other", create=True):
                    pass  # pragma: no cover


async def test_rewriting_a_failed_segment_reposts_the_same_seq_on_a_fresh_connection(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    with trio.fail_after(STEP):
        async with (
            open_proxy(trickle_server.url) as (proxy, via_proxy),
            open_publisher(f"{via_proxy}/{name}") as pub,
        ):
            seg = await pub.next()
            await seg.send(b"partial")
            await wait_until(lambda: trickle_server.registry.get(name) is not None)
            channel = trickle_server.registry.get(name)
            assert channel is not None
            await wait_until(lambda: channel.next_write == 1)  # the server has the byte
            connections = proxy.connections
            await proxy.cut()
            with pytest.raises(SegmentWriteError) as info:
                await seg.aclose()
            assert info.value.seq == 0
            await seg.write(b"whole")  # again: same seq, new POST, new connection
            assert seg.seq == 0
            assert proxy.connections > connections
            stats = pub.stats()
            # One re-POST of seq 0; and the idle preconnect of seq 1, cut too, opened again.
            assert (stats.post_retries, stats.segments_failed) == (2, 1)
            assert stats.segments_completed == 1
            got = await read_segments(f"{trickle_server.url}/{name}", 0, 1)
            assert got == [(0, b"whole")]


async def test_drop_ends_the_body_and_deletes_the_seq(trickle_server: RunningServer) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    transport = RecordingTransport()
    with trio.fail_after(STEP):
        async with open_publisher(url, transport=transport) as pub:
            async with open_subscriber(url, start=0) as sub:
                seg = await pub.next()
                await seg.send(b"half")
                segment = await sub.next()
                assert segment is not None
                await seg.drop()
                assert await segment.read() == b"half"  # subscribers reach the end

                async def give_up() -> None:
                    async with pub.segment() as seg2:
                        await seg2.send(b"x")
                        raise ValueError("given up")

                with pytest.raises(ValueError, match="given up"):
                    await give_up()
                assert await pub.write(b"next") == 2
            stats = pub.stats()
    await transport.aclose()
    assert stats.segments_dropped == 2
    log = transport.log
    assert log.index(f"END POST /{name}/0") < log.index(f"DELETE /{name}/0")
    assert log.index(f"END POST /{name}/1") < log.index(f"DELETE /{name}/1")


async def test_a_failing_source_drops_its_segment(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"

    async def source() -> AsyncIterator[bytes]:
        yield b"some"
        raise OSError("camera unplugged")

    with trio.fail_after(STEP):
        async with open_publisher(url) as pub, open_subscriber(url, start=0) as sub:
            with pytest.raises(OSError, match="unplugged"):
                await pub.write(source())
            segment = await sub.next()
            assert segment is not None
            assert (segment.seq, await segment.read()) == (0, b"some")
            assert pub.stats().segments_dropped == 1


# -- closing: go-livepeer PR #3824 -------------------------------------------------------------


async def test_close_acknowledges_then_deletes_then_lets_the_preconnect_go() -> None:
    """The order on the wire, and the server's view when the DELETE arrives."""
    name = fresh_name()
    seen: dict[str, Any] = {}

    def before_delete(request: object, channel_name: str) -> None:
        channel = server.registry.get(channel_name)
        assert channel is not None
        last = channel.window.get(1)
        seen["last"] = (last.closed, last.size) if last is not None else None
        seen["preconnects"] = len(channel.publishers)

    transport = RecordingTransport()
    with trio.fail_after(STEP):
        async with open_server(settings(before_delete=before_delete)) as server:
            async with open_publisher(f"{server.url}/{name}", transport=transport) as pub:
                await pub.write(b"a")
                await pub.write(b"b" * 100_000)
            await transport.aclose()
    log = transport.log
    assert log.index(f"END POST /{name}/1") < log.index(f"DELETE /{name}")
    # Our server releases the idle preconnect itself on DELETE; a server that does not
    # (the reference) gets its body ended only now.
    after_delete = log[log.index(f"DELETE /{name}") :]
    assert f"END POST /{name}/2" in after_delete or f"END POST /{name}/2" not in log
    # When the DELETE arrived, the last segment was complete and the preconnect was idle.
    assert seen == {"last": (True, 100_000), "preconnects": 1}


async def test_close_never_loses_a_segment_whose_body_was_handed_over() -> None:
    """The SDK cancels in-flight POSTs before its DELETE; we acknowledge them first: when
    the DELETE reaches the server, the last segment is there, complete."""
    name = fresh_name()
    data = bytes(range(256)) * 4096  # 1 MiB
    seen: list[tuple[bool, int]] = []

    def before_delete(request: object, channel_name: str) -> None:
        channel = server.registry.get(channel_name)
        assert channel is not None
        segment = channel.window.get(0)
        assert segment is not None
        seen.append((segment.closed, segment.size))

    with trio.fail_after(STEP):
        async with open_server(settings(before_delete=before_delete)) as server:
            async with open_publisher(f"{server.url}/{name}") as pub:
                assert pub.next_seq == 0
                async with trio.open_nursery() as writers:
                    writers.start_soon(pub.write, data)
                    await wait_until(lambda: pub.stats().bytes_submitted_to_transport == len(data))
                    writers.cancel_scope.cancel()  # the write never saw its ack
                # ... and the block ends at once: closing must still deliver it.
            stats = pub.stats()
    assert seen == [(True, len(data))]
    assert stats.post_success == 1


async def test_close_ends_a_segment_left_open_before_the_delete() -> None:
    name = fresh_name()
    seen: list[tuple[bool, int]] = []

    def before_delete(request: object, channel_name: str) -> None:
        channel = server.registry.get(channel_name)
        assert channel is not None
        segment = channel.window.get(0)
        assert segment is not None
        seen.append((segment.closed, segment.size))

    with trio.fail_after(STEP):
        async with open_server(settings(before_delete=before_delete)) as server:
            async with open_publisher(f"{server.url}/{name}") as pub:
                seg = await pub.next()
                await seg.send(b"never ended by its writer")
            stats = pub.stats()
    assert seen == [(True, len(b"never ended by its writer"))]
    assert stats.post_success == 1


async def loop_on_minus_one(url: str, bodies: list[bytes]) -> int:
    """Ask for ``-1`` again after every segment, until the end; return the requests."""
    requests = 0
    async with Transport() as transport:
        while True:
            requests += 1
            response = await transport.request("GET", f"{url}/-1")
            if wire.CLOSED_HEADER in response.headers or response.status == 404:
                return requests
            assert response.status == 200
            bodies.append(response.body)


@pytest.mark.parametrize("order", ["ours", "release first (pre-#3824)"])
async def test_subscriber_looping_on_minus_one_sees_a_bounded_number_of_requests(
    order: str,
) -> None:
    """A reader at ``-1`` waits on the publisher's idle preconnect when it closes. Our
    order (DELETE, then let go) ends it with its first answer; the old order (let the
    preconnect go, then DELETE) first hands it an empty segment, and on a server
    without the PR #3824 fix that empty segment would come back forever."""
    name = fresh_name()
    bodies: list[bytes] = []
    with trio.fail_after(STEP):
        async with open_server(settings()) as server, trio.open_nursery() as nursery:
            url = f"{server.url}/{name}"
            requests: list[int] = []

            async def reader() -> None:
                requests.append(await loop_on_minus_one(url, bodies))

            if order == "ours":
                async with open_publisher(url, create=True) as pub:
                    for i in range(3):
                        await pub.write(b"segment %d" % i)
                    channel = server.registry.get(name)
                    assert channel is not None
                    nursery.start_soon(reader)
                    await wait_until(lambda: len(channel.subscribers) == 1)
            else:
                async with Transport() as transport:
                    await transport.request("POST", url)
                    channel = server.registry.get(name)
                    assert channel is not None
                    preconnect = await transport.open("POST", f"{url}/0", content_length=None)
                    await wait_until(lambda: len(channel.publishers) == 1)
                    nursery.start_soon(reader)
                    await wait_until(lambda: len(channel.subscribers) == 1)
                    await preconnect.end()  # let go first ...
                    assert (await preconnect.read_head()).status == 200
                    await preconnect.aclose()
                    await transport.request("DELETE", url)  # ... then DELETE
    if order == "ours":
        assert (requests, bodies) == ([1], [])
    else:
        assert (requests, bodies) == ([2], [b""])


async def test_our_subscriber_at_minus_one_ends_without_an_empty_segment(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        async with open_publisher(url, create=True) as pub, open_subscriber(url) as sub:
            channel = trickle_server.registry.get(name)
            assert channel is not None
            segments = []
            for i in range(3):
                waiting = sub.next()  # the GET for -1 / the next seq goes out now
                async with trio.open_nursery() as nursery:

                    async def take(waiting: Any = waiting) -> None:
                        segment = await waiting
                        segments.append((segment.seq, await segment.read()))

                    nursery.start_soon(take)
                    await wait_until(lambda: len(channel.subscribers) >= 1)
                    await pub.write(b"segment %d" % i)
            closing = trio.Event()

            async def close_soon() -> None:
                await wait_until(lambda: len(channel.subscribers) >= 1)  # preconnected GET
                closing.set()
                await pub.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                assert await sub.next() is None
            assert closing.is_set()
            stats = sub.stats()
    assert segments == [(i, b"segment %d" % i) for i in range(3)]
    assert stats.segments_delivered == 3
    assert stats.empty_segments_delivered == 0
    assert stats.get_attempts == 4  # -1, then 1, 2, 3 (each preconnected); 3 got the end


async def test_restarted_publisher_resets_and_continues_at_the_live_edge(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    got: list[tuple[int, bytes]] = []
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            # The old publisher hangs half-way through seq 2 (and never deletes).
            old_hung, old_gone = trio.Event(), trio.Event()

            async def old_publisher(task_status: trio.TaskStatus[None]) -> None:
                async with open_publisher(url, delete_on_close=False) as old:
                    await old.write(b"zero")
                    await old.write(b"one")
                    async with old.segment() as seg:
                        await seg.send(b"half")
                        task_status.started()
                        await old_hung.wait()
                        await seg.send(b" and more")  # discarded: seq 2 was reset
                old_gone.set()

            await nursery.start(old_publisher)

            async def subscriber(task_status: trio.TaskStatus[None]) -> None:
                async with open_subscriber(url, start=2) as sub:
                    segment = await sub.next()
                    assert segment is not None
                    task_status.started()
                    got.append((segment.seq, await segment.read()))  # stuck until reset
                    segment = await sub.next()
                    assert segment is not None
                    got.append((segment.seq, await segment.read()))

            await nursery.start(subscriber)
            async with open_publisher(url, start=-1) as new:
                assert new.next_seq == 3  # GET /next: the old one's first byte of 2 made it 3
                await wait_until(lambda: len(got) == 1)  # the reset closed seq 2
                assert await new.write(b"three") == 3
                await wait_until(lambda: len(got) == 2)
                old_hung.set()
                await old_gone.wait()
                channel = trickle_server.registry.get(name)
                assert channel is not None
                segment = channel.window.get(2)
                assert segment is not None
                assert (segment.closed, segment.size) == (True, len(b"half"))
    assert got == [(2, b"half"), (3, b"three")]
