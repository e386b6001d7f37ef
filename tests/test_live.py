"""GET /{ch}/live: the endless stream, in-process (level 3) and over real sockets (level 4)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio.config import Settings
from trickle_trio.http.app import create_app
from trickle_trio.http.live import live_counters
from trickle_trio.registry import ChannelRegistry
from trickle_trio.server import RunningServer
from trickle_trio.testing import Exchange, open_exchange

from .helpers import publish, request
from .sockets import call, connect

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


async def _create(app: Any, name: str = "cam", mime: str = "video/mp2t") -> None:
    response = await request(app, "POST", f"/{name}", headers=[("Expect-Content", mime)])
    assert response.status == 200


async def _read_until(live: Exchange, size: int) -> bytes:
    """Read live body chunks until ``size`` bytes have arrived in all."""
    response = await live.read_start()
    while len(response.body) < size:
        chunk = await live.read_chunk()
        assert chunk is not None, response.body
    return response.body


# -- the stream ----------------------------------------------------------------------------


async def test_segments_back_to_back_byte_exact_with_an_empty_one(trickle_app: Any) -> None:
    await _create(trickle_app, mime="video/mp2t")
    async with open_exchange(trickle_app, "GET", "/cam/live") as live:
        head = await live.read_start()  # at once, before any byte is published
        assert head.status == 200
        assert head.headers["content-type"] == "video/mp2t"
        assert head.headers["lp-trickle-seq"] == "0"
        assert head.headers["cache-control"] == "no-store"
        async with open_exchange(trickle_app, "POST", "/cam/0") as post:
            await post.send_body(b"\x47first")
            assert await _read_until(live, 6) == b"\x47first"  # each chunk as it comes
            await post.send_body(b"-more")
            await post.end_body()
            assert (await post.read_response()).status == 200
        await publish(trickle_app, "cam", 1, b"")  # a zero-byte segment adds nothing
        await publish(trickle_app, "cam", 2, b"\x47second")
        await publish(trickle_app, "cam", 3, b"\x47third")
        assert await _read_until(live, 24) == b"\x47first-more\x47second\x47third"
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        response = await live.read_response()  # a clean end: the channel is gone
    assert response.complete
    assert response.body == b"\x47first-more\x47second\x47third"


async def test_default_start_is_the_next_segment_boundary(trickle_app: Any) -> None:
    await _create(trickle_app)
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"middle of seq 0")
        await trio.testing.wait_all_tasks_blocked()
        async with open_exchange(trickle_app, "GET", "/cam/live") as live:
            head = await live.read_start()
            assert head.headers["lp-trickle-seq"] == "1"
            assert head.headers["lp-trickle-latest"] == "1"
            await post.send_body(b", end of seq 0")
            await post.end_body()
            await post.read_response()
            await publish(trickle_app, "cam", 1, b"seq 1 from byte 0")
            assert await _read_until(live, 17) == b"seq 1 from byte 0"


async def test_start_current_begins_at_byte_0_of_the_segment_being_written(
    trickle_app: Any,
) -> None:
    await _create(trickle_app)
    await publish(trickle_app, "cam", 0, b"old;")
    async with open_exchange(trickle_app, "POST", "/cam/1") as post:
        await post.send_body(b"start of 1;")
        await trio.testing.wait_all_tasks_blocked()
        async with open_exchange(trickle_app, "GET", "/cam/live?start=current") as live:
            head = await live.read_start()
            assert head.headers["lp-trickle-seq"] == "1"
            assert await _read_until(live, 11) == b"start of 1;"
            await post.send_body(b"rest of 1;")
            await post.end_body()
            await post.read_response()
            await publish(trickle_app, "cam", 2, b"two;")
            assert await _read_until(live, 25) == b"start of 1;rest of 1;two;"


async def test_start_at_a_seq_reads_from_there_and_outside_the_window_is_470(
    trickle_app: Any,
) -> None:
    await _create(trickle_app)
    for seq in range(7):
        await publish(trickle_app, "cam", seq, b"%d;" % seq)
    async with open_exchange(trickle_app, "GET", "/cam/live?start=4") as live:
        assert await _read_until(live, 6) == b"4;5;6;"
    async with open_exchange(trickle_app, "GET", "/cam/live?start=-3") as live:
        assert await _read_until(live, 4) == b"5;6;"  # -N as on a segment GET
    gone = await request(trickle_app, "GET", "/cam/live?start=1")
    assert gone.status == 470
    assert gone.headers["lp-trickle-latest"] == "7"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=soon", "start must be next, current or a seq"),
        ("start=01", "start must be next, current or a seq"),
        ("on_gap=maybe", "on_gap must be jump or end"),
        ("offset=3", "Unknown parameter 'offset' (start, on_gap)"),
        ("start=next&start=current", "Repeated parameter 'start'"),
    ],
)
async def test_a_bad_query_is_400_and_nothing_attaches(
    trickle_app: Any, trickle_registry: ChannelRegistry, query: str, message: str
) -> None:
    await _create(trickle_app)
    response = await request(trickle_app, "GET", f"/cam/live?{query}")
    assert (response.status, response.body) == (400, message.encode() + b"\n")
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert len(channel.subscribers) == 0
    assert channel.window.get(0) is None  # nothing precreated


async def test_unknown_channel_is_404_and_live_is_no_seq_elsewhere(trickle_app: Any) -> None:
    missing = await request(trickle_app, "GET", "/nope/live")
    assert (missing.status, missing.body) == (404, b"Stream not found\n")
    await _create(trickle_app)
    assert (await request(trickle_app, "POST", "/cam/live", b"x")).status == 400
    assert (await request(trickle_app, "DELETE", "/cam/live")).status == 400


# -- slow readers and the window ---------------------------------------------------------------


async def test_a_reader_that_stops_does_not_slow_the_publisher_then_jumps(
    autojump_clock: trio.testing.MockClock, trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    channel = trickle_registry.get("cam")
    assert channel is not None
    async with open_exchange(
        trickle_app, "GET", "/cam/live", response_buffer=0, shield_sends=True
    ) as live:
        await live.read_start()  # then it stops reading
        with trio.fail_after(1):  # autojump: a publisher waiting for the reader fails here
            for seq in range(8):
                response = await publish(trickle_app, "cam", seq, b"[%d]" % seq)
                assert response.status == 200
        assert channel.next_write == 8
        assert sorted(segment.seq for segment in channel.window) == [3, 4, 5, 6, 7]
        # It holds what it still has to send, seq 0 (evicted), and nothing more.
        assert channel.retained_bytes == 3
        # The reader wakes up: all of seq 0 (held by it), then seqs 1..7 are gone: it
        # jumps to the live edge, the next segment, and says so in the counters.
        assert await _read_until(live, 3) == b"[0]"
        await trio.testing.wait_all_tasks_blocked()
        counters = live_counters(channel)
        assert (counters.readers, counters.jumps, counters.skipped) == (1, 1, 7)
        await publish(trickle_app, "cam", 8, b"[8]")
        assert await _read_until(live, 6) == b"[0][8]"
        status = await request(trickle_app, "GET", "/_status")
        (entry,) = [c for c in _json(status.body)["channels"] if c["channel"] == "cam"]
        assert (entry["live_readers"], entry["live_jumps"], entry["live_skipped"]) == (1, 1, 7)
    metrics = await request(trickle_app, "GET", "/metrics")
    assert b"trickle_live_jumps_total 1.0" in metrics.body


async def test_with_start_current_a_jump_goes_to_byte_0_of_the_segment_being_written(
    autojump_clock: trio.testing.MockClock, trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    async with open_exchange(
        trickle_app, "GET", "/cam/live?start=current", response_buffer=0, shield_sends=True
    ) as live:
        await live.read_start()
        for seq in range(8):
            await publish(trickle_app, "cam", seq, b"[%d]" % seq)
        async with open_exchange(trickle_app, "POST", "/cam/8") as post:
            await post.send_body(b"[8 so far")
            await trio.testing.wait_all_tasks_blocked()
            assert await _read_until(live, 12) == b"[0][8 so far"
            channel = trickle_registry.get("cam")
            assert channel is not None
            counters = live_counters(channel)
            assert (counters.jumps, counters.skipped) == (1, 7)
            assert channel.retained_bytes == 9  # it holds seq 8 now, and only that
            await post.send_body(b"]")
            await post.end_body()
            await post.read_response()
        await publish(trickle_app, "cam", 9, b"[9]")
        assert await _read_until(live, 16) == b"[0][8 so far][9]"


async def test_on_gap_end_cuts_the_response_where_the_reader_fell_out(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    async with open_exchange(
        trickle_app, "GET", "/cam/live?on_gap=end", response_buffer=0, shield_sends=True
    ) as live:
        await live.read_start()
        for seq in range(7):
            await publish(trickle_app, "cam", seq, b"[%d]" % seq)
        assert await _read_until(live, 3) == b"[0]"
        with pytest.raises(EOFError, match="cut short"):  # no clean end: not "channel gone"
            await live.read_chunk()
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert live_counters(channel).jumps == 0
    assert len(channel.subscribers) == 0


async def test_delete_lets_the_reader_finish_its_segment_then_ends_cleanly(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    channel = trickle_registry.get("cam")
    assert channel is not None
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"half of 0")
        async with open_exchange(trickle_app, "GET", "/cam/live?start=current") as live:
            assert await _read_until(live, 9) == b"half of 0"
            assert (await request(trickle_app, "DELETE", "/cam")).status == 200
            response = await live.read_response()
            assert (response.complete, response.body) == (True, b"half of 0")
            closed = await post.read_response()
            assert closed.headers["lp-trickle-closed"] == "terminated"
    assert len(channel.subscribers) == 0
    assert live_counters(channel).readers == 0


async def test_delete_does_not_wait_for_a_reader_that_stopped(
    autojump_clock: trio.testing.MockClock, trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    async with open_exchange(
        trickle_app, "GET", "/cam/live", response_buffer=0, shield_sends=True
    ) as live:
        await live.read_start()
        await publish(trickle_app, "cam", 0, b"zero;")
        await publish(trickle_app, "cam", 1, b"one;")
        start = trio.current_time()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        assert trio.current_time() == start  # answered at once (autojump: no waiting)
        assert trickle_registry.get("cam") is None
        (retired,) = trickle_registry.retired()
        assert retired.retained_bytes == 5  # counted while the reader keeps it
        # It reads again, later: the segment it was in, whole, then a clean end.
        response = await live.read_response()
        assert (response.complete, response.body) == (True, b"zero;")
        await retired.wait_deleted()  # its last reader is gone: nothing is kept
        assert retired.retained_bytes == 0


async def test_no_publisher_is_answered_before_a_live_head_is_out(nursery: trio.Nursery) -> None:
    settings = Settings(port=0, autocreate=True, teardown_grace=60)
    registry = ChannelRegistry.from_settings(nursery, settings)
    app = create_app(settings, registry)
    await _create(app)
    channel = registry.get("cam")
    assert channel is not None
    async with (
        open_exchange(app, "POST", "/cam/0") as preconnect,
        open_exchange(app, "GET", "/cam/live", response_buffer=0, shield_sends=True) as live,
    ):
        await trio.testing.wait_all_tasks_blocked()  # the head waits for the client
        assert (await request(app, "DELETE", "/cam")).status == 200
        await trio.testing.wait_all_tasks_blocked()
        assert not channel.released  # the preconnect waits for the live reader's head
        assert not preconnect.finished.is_set()
        await live.read_start()
        await channel.wait_released()
        released = await preconnect.read_response()
        assert released.headers["lp-trickle-closed"] == "terminated"
        assert (await live.read_response()).complete  # seq 0 never had a byte: clean end


async def test_a_client_leaving_releases_the_lease(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await _create(trickle_app)
    channel = trickle_registry.get("cam")
    assert channel is not None
    async with open_exchange(trickle_app, "GET", "/cam/live") as live:
        await live.read_start()
        assert len(channel.subscribers) == 1
        assert live_counters(channel).readers == 1
        await live.disconnect()
        await live.finished.wait()
    assert len(channel.subscribers) == 0
    assert live_counters(channel).readers == 0


async def test_live_readers_count_against_the_subscriber_limit(nursery: trio.Nursery) -> None:
    settings = Settings(port=0, autocreate=True, max_subscribers_per_channel=1)
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    await _create(app)
    async with open_exchange(app, "GET", "/cam/live") as live:
        await live.read_start()
        refused = await request(app, "GET", "/cam/live")
        assert refused.status == 429
        assert (await request(app, "GET", "/cam/0")).status == 429


async def test_live_needs_the_subscribe_token(nursery: trio.Nursery) -> None:
    token = "subscribe-token-0123456789"
    settings = Settings(
        port=0, autocreate=True, publish_token="publish-token-0123456789", subscribe_token=token
    )
    registry = ChannelRegistry.from_settings(nursery, settings)
    app = create_app(settings, registry)
    registry.create("cam", "video/mp2t")
    assert (await request(app, "GET", "/cam/live")).status == 401
    auth = [("Authorization", f"Bearer {token}")]
    async with open_exchange(app, "GET", "/cam/live", auth) as live:
        assert (await live.read_start()).status == 200


# -- over real sockets, through the fast path -------------------------------------------------


async def test_live_over_real_sockets_ends_cleanly_on_delete(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(10):
        assert (await call(trickle_server.url, "POST", "/sock")).status == 200
        conn = await connect(trickle_server.url)
        try:
            await conn.start("GET", "/sock/live")
            await conn.end()
            head = await conn.head()
            assert head.status == 200
            assert head.headers["transfer-encoding"] == "chunked"
            parts = [b"\x47" * 1000, b"", b"\x47" * 188, b"\x47" * 70000]
            for seq, data in enumerate(parts):
                assert (await call(trickle_server.url, "POST", f"/sock/{seq}", data)).status == 200
            assert (await call(trickle_server.url, "DELETE", "/sock")).status == 200
            reply = await conn.response()  # EndOfMessage: the terminating chunk came
        finally:
            await conn.aclose()
    assert reply.body == b"".join(parts)


def _json(body: bytes) -> Any:
    import json

    return json.loads(body)
