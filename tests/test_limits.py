"""Limits and faults: each limit answers a clear 4xx, logs a line, and harms nobody else."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio import LocalPublisher
from trickle_trio.config import Settings
from trickle_trio.core.errors import LimitExceededError
from trickle_trio.http.app import create_app
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


def app_for(nursery: trio.Nursery, **overrides: Any) -> tuple[Any, ChannelRegistry]:
    settings = Settings(autocreate=True, **overrides)
    registry = ChannelRegistry.from_settings(nursery, settings)
    return create_app(settings, registry), registry


async def test_segment_over_the_limit_gets_413_and_is_closed_at_the_limit(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = app_for(nursery, max_segment_bytes=10)
    async with (
        open_exchange(app, "POST", "/cam/0") as post,
        open_exchange(app, "GET", "/cam/0") as get,
    ):
        await post.send_body(b"123456")
        assert await get.read_chunk() == b"123456"
        await post.send_body(b"7890abc")  # 13 bytes in all: 3 over
        answer = await post.read_response()
        rest = await get.read_response()
    assert (answer.status, answer.body) == (413, b"Segment too large\n")
    assert answer.headers["connection"] == "close"
    assert answer.headers["lp-trickle-seq"] == "0"
    assert rest.body == b"1234567890"  # ends cleanly, exactly at the limit
    assert (await fetch(app, "cam", 0)).body == b"1234567890"
    assert "limit hit limit=max_segment_bytes channel=cam seq=0 value=10" in caplog.messages
    assert (await publish(app, "cam", 1, b"fits")).status == 200  # the channel goes on


async def test_local_publisher_over_the_limit_raises_413(nursery: trio.Nursery) -> None:
    _, registry = app_for(nursery, max_segment_bytes=4)
    pub = LocalPublisher(registry, "cam")
    pub.create_channel()
    with pytest.raises(LimitExceededError) as info:
        await pub.write(b"too long")
    assert info.value.status == 413


async def test_too_many_channels_is_429(nursery: trio.Nursery) -> None:
    app, registry = app_for(nursery, max_channels=2)
    assert (await publish(app, "a", 0, b"x")).status == 200
    assert (await request(app, "POST", "/b")).status == 200
    refused = await publish(app, "c", 0, b"x")
    assert (refused.status, refused.body) == (429, b"Too many channels\n")
    assert (await request(app, "POST", "/c")).status == 429
    assert len(registry) == 2
    await request(app, "DELETE", "/a")
    assert (await publish(app, "c", 0, b"x")).status == 200


async def test_too_many_subscribers_is_429_and_others_keep_streaming(
    nursery: trio.Nursery,
) -> None:
    app, _ = app_for(nursery, max_subscribers_per_channel=2)
    await request(app, "POST", "/cam")
    async with (
        open_exchange(app, "GET", "/cam/0") as one,
        open_exchange(app, "GET", "/cam/0") as two,
    ):
        await trio.testing.wait_all_tasks_blocked()
        refused = await fetch(app, "cam", 0)
        assert (refused.status, refused.body) == (429, b"Too many subscribers_per_channel\n")
        await publish(app, "cam", 0, b"data")
        assert (await one.read_response()).body == b"data"
        assert (await two.read_response()).body == b"data"


async def test_too_many_publishers_is_429(nursery: trio.Nursery) -> None:
    app, _ = app_for(nursery, max_publishers_per_channel=1)
    await request(app, "POST", "/cam")
    async with open_exchange(app, "POST", "/cam/0") as idle:
        await trio.testing.wait_all_tasks_blocked()
        refused = await publish(app, "cam", 0, b"x")
        assert refused.status == 429
        assert refused.headers["connection"] == "close"
        await idle.end_body()
        await idle.read_response()


async def test_idle_preconnect_is_released_by_the_preconnect_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    app, registry = app_for(nursery, preconnect_timeout=30)
    await request(app, "POST", "/cam")
    async with (
        open_exchange(app, "POST", "/cam/0") as idle,
        open_exchange(app, "GET", "/cam/0") as waiting,
    ):
        start = trio.current_time()
        answer = await idle.read_response()
        assert trio.current_time() - start == pytest.approx(30)
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        # The segment is untouched: the waiting subscriber still waits, next is still 0,
        # and a retry of the same seq is served to it.
        assert waiting.response is None
        assert registry.get("cam").next_write == 0  # type: ignore[union-attr]
        await publish(app, "cam", 0, b"retry")
        assert (await waiting.read_response()).body == b"retry"
    assert any(m.startswith("segment timed_out channel=cam seq=0") for m in caplog.messages)


async def test_preconnect_timeout_off_by_default(
    trickle_app: Any, autojump_clock: trio.testing.MockClock
) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "POST", "/cam/0") as idle:
        await trio.sleep(24 * 3600)
        assert idle.response is None
        await idle.send_body(b"a day later")
        await idle.end_body()
        assert (await idle.read_response()).status == 200


async def test_long_names_and_urls(nursery: trio.Nursery) -> None:
    app, registry = app_for(nursery, max_name_length=8, max_url_length=40)
    assert (await publish(app, "12345678", 0, b"x")).status == 200
    assert (await publish(app, "123456789", 0, b"x")).status == 400
    assert (await request(app, "POST", "/123456789")).status == 400
    long_path = "/cam/" + "1" * 40
    assert (await request(app, "GET", long_path)).status == 414
    assert set(c.name for c in registry.channels()) == {"12345678"}


async def test_too_many_requests_in_flight_is_429_but_probes_pass(
    nursery: trio.Nursery,
) -> None:
    app, _ = app_for(nursery, max_requests=2)
    await request(app, "POST", "/cam")
    async with (
        open_exchange(app, "GET", "/cam/0"),
        open_exchange(app, "GET", "/cam/0"),
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert (await fetch(app, "cam", 0)).status == 429
        assert (await request(app, "GET", "/healthz")).status == 200
    assert (await request(app, "GET", "/cam/next")).status == 200


async def test_far_ahead_preconnect_flood_does_not_move_the_live_edge(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    async with trio.open_nursery() as nursery:
        for seq in range(1000, 1020):
            await nursery.start(_idle_post, trickle_app, f"/cam/{seq}")
        await trio.testing.wait_all_tasks_blocked()
        channel = trickle_registry.get("cam")
        assert channel is not None
        assert channel.next_write == 1  # the live edge did not move
        # Those whose slot was free took it (1001-1004); every other waits outside the
        # window for its first byte, so seq 0 is still readable.
        assert len(channel.publishers) == 20
        assert sorted(segment.seq for segment in channel.window) == [0, 1001, 1002, 1003, 1004]
        assert (await fetch(trickle_app, "cam", 0)).body == b"x"
        assert (await publish(trickle_app, "cam", -1, b"live")).headers["lp-trickle-seq"] == "1"
        assert (await fetch(trickle_app, "cam", 0)).body == b"x"
        nursery.cancel_scope.cancel()


async def _idle_post(app: Any, path: str, *, task_status: trio.TaskStatus[None]) -> None:
    async with open_exchange(app, "POST", path) as post:
        task_status.started()
        await post.read_response()  # released by eviction (or cancelled at the end)


async def test_slow_subscriber_does_not_slow_the_publisher_or_others(
    trickle_app: Any, trickle_registry: ChannelRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    await request(trickle_app, "POST", "/cam")
    # A client that stopped reading: its first send blocks, shielded, as in hypercorn.
    async with (
        open_exchange(trickle_app, "GET", "/cam/0", response_buffer=0, shield_sends=True) as stuck,
        open_exchange(trickle_app, "GET", "/cam/0") as healthy,
        open_exchange(trickle_app, "POST", "/cam/0") as post,
    ):
        for index in range(50):
            await post.send_body(b"%d," % index)
            await trio.testing.wait_all_tasks_blocked()
        await post.end_body()
        assert (await post.read_response()).status == 200
        assert (await healthy.read_response()).body == b"".join(b"%d," % i for i in range(50))
        assert stuck.response is None  # still blocked in its first send
        for seq in range(1, 8):  # the window moves on regardless
            assert (await publish(trickle_app, "cam", seq, b"later")).status == 200
        start = trio.current_time()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        assert trio.current_time() == start  # the DELETE waits for nobody
        assert "cam" not in trickle_registry
        # The client reads again: it gets the whole segment it was attached to.
        got = await stuck.read_response()
        assert got.complete
        assert got.body == b"".join(b"%d," % i for i in range(50))


@pytest.mark.parametrize("level", [logging.WARNING])
async def test_limit_log_lines_are_warnings(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    app, _ = app_for(nursery, max_channels=1)
    await request(app, "POST", "/a")
    await request(app, "POST", "/b")
    (record,) = [r for r in caplog.records if r.getMessage().startswith("limit hit")]
    assert record.levelno == level
    assert record.getMessage() == "limit hit limit=max_channels channel=b value=1"


async def test_teardown_overrun_never_cuts_a_status_line_in_half(
    trickle_app: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A subscriber blocked sending its status line when the teardown grace runs out:
    the response it finally gets is still whole and well-formed."""
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "GET", "/cam/0", response_buffer=0) as stuck:
        await trio.testing.wait_all_tasks_blocked()
        await publish(trickle_app, "cam", 0, b"data")
        await trio.testing.wait_all_tasks_blocked()  # now blocked in send(start)
        start = trio.current_time()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        assert trio.current_time() == start  # the DELETE waits for nobody
        response = await stuck.read_response()
    assert (response.status, response.headers["lp-trickle-seq"]) == (200, "0")
    assert (response.body, response.complete) == (b"data", True)


async def test_a_client_leaving_mid_answer_is_not_a_server_error(
    trickle_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """hypercorn 0.18 half-closes a socket the client left without its send lock, so the
    handler's last send can raise BusyResourceError: nobody is left to answer."""
    await request(trickle_app, "POST", "/cam")
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise trio.BusyResourceError("another task is currently sending data")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/cam/0",
        "headers": [],
        "query_string": b"",
        "root_path": "",
    }
    caplog.set_level(logging.DEBUG, logger="trickle_trio")
    await trickle_app(scope, receive, send)  # returns: no exception escapes
    assert sent == ["http.response.start", "http.response.body"]
    assert "client left while being answered path=/cam/0" in caplog.messages


async def test_a_parked_far_ahead_post_enters_the_window_with_its_first_byte(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"zero")
    async with open_exchange(trickle_app, "POST", "/cam/10") as far:
        await trio.testing.wait_all_tasks_blocked()
        channel = trickle_registry.get("cam")
        assert channel is not None
        assert len(channel.publishers) == 1
        assert channel.window.get(10) is None  # parked: seq 0 keeps its slot
        assert (await fetch(trickle_app, "cam", 0)).body == b"zero"
        await far.send_body(b"ten")
        await trio.testing.wait_all_tasks_blocked()
        assert channel.next_write == 11  # a publisher that really writes there wins
        await far.end_body()
        assert (await far.read_response()).status == 200
    assert (await fetch(trickle_app, "cam", 10)).body == b"ten"
    assert (await fetch(trickle_app, "cam", 0)).status == 470  # evicted by real bytes


async def test_a_parked_far_ahead_post_is_answered_by_a_delete(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"zero")
    async with open_exchange(trickle_app, "POST", "/cam/10") as far:
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        response = await far.read_response()
        assert response.status == 200
        assert response.headers["lp-trickle-closed"] == "terminated"
        assert response.headers["lp-trickle-seq"] == "10"


async def test_requests_in_flight_per_client_address(nursery: trio.Nursery) -> None:
    app, _ = app_for(nursery, max_requests_per_client=2)
    async with (
        open_exchange(app, "POST", "/cam/0") as first,
        open_exchange(app, "GET", "/cam/0") as second,
    ):
        await trio.testing.wait_all_tasks_blocked()
        refused = await request(app, "GET", "/cam/next")
        assert (refused.status, refused.headers["connection"]) == (429, "close")
        assert (await request(app, "GET", "/healthz")).status == 200  # probes are exempt
        await first.send_body(b"x", more=False)
        assert (await first.read_response()).status == 200
        assert (await second.read_response()).body == b"x"
    assert (await request(app, "GET", "/cam/next")).status == 200  # counted back down


async def test_no_limit_per_client_by_default(nursery: trio.Nursery) -> None:
    app, _ = app_for(nursery)
    async with trio.open_nursery() as posts:
        for seq in range(50):  # a client's idle preconnects are never refused
            await posts.start(_idle_post, app, f"/cam{seq}/0")
        assert (await request(app, "GET", "/cam0/next")).status == 200
        posts.cancel_scope.cancel()
