"""GET /{ch}/{seq}: streaming subscribe through the raw-ASGI layer, in-process."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


async def test_headers_go_out_only_with_the_first_byte(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam", headers=[("Expect-Content", "video/mp2t")])
    log: list[tuple[str, str]] = []
    async with (
        open_exchange(trickle_app, "GET", "/cam/0", label="get", log=log) as get,
        open_exchange(trickle_app, "POST", "/cam/0", label="post", log=log) as post,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert log == []  # no status line while the segment has no bytes
        await post.send_body(b"abc")
        start = await get.read_start()
        assert log == [("get", "start")]
        assert start.status == 200
        assert start.headers["lp-trickle-seq"] == "0"
        assert start.headers["content-type"] == "video/mp2t"
        assert start.headers["lp-trickle-size"] == "3"
        assert "lp-trickle-latest" not in start.headers  # it equals seq: omitted
        assert "content-length" not in start.headers  # streamed (chunked on HTTP/1.1)
        await post.end_body()
        await post.read_response()
        assert (await get.read_response()).body == b"abc"


async def test_latest_header_when_it_differs_and_size_of_what_is_buffered(
    trickle_app: Any,
) -> None:
    await publish(trickle_app, "cam", 0, b"old")
    await publish(trickle_app, "cam", 1, b"new")
    old = await fetch(trickle_app, "cam", 0)
    assert old.headers["lp-trickle-seq"] == "0"
    assert old.headers["lp-trickle-latest"] == "2"
    assert old.headers["lp-trickle-size"] == "3"
    assert old.body == b"old"


async def test_content_type_present_even_when_empty(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")  # no Expect-Content
    await publish(trickle_app, "cam", 0, b"x")
    response = await fetch(trickle_app, "cam", 0)
    assert ("content-type", "") in response.raw_headers


async def test_late_reader_gets_everything_so_far_at_once_then_the_rest(
    trickle_app: Any,
) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"a")
        await post.send_body(b"b")
        await trio.testing.wait_all_tasks_blocked()
        async with open_exchange(trickle_app, "GET", "/cam/0") as get:
            assert await get.read_chunk() == b"ab"
            assert get.response is not None
            assert get.response.headers["lp-trickle-size"] == "2"
            await post.send_body(b"c")
            assert await get.read_chunk() == b"c"
            await post.end_body()
            assert (await get.read_response()).body == b"abc"
        await post.read_response()


async def test_470_when_the_segment_is_not_in_the_window(trickle_app: Any) -> None:
    for seq in range(7):
        await publish(trickle_app, "cam", seq, b"x")
    for seq in ("1", "9", "-7"):
        response = await fetch(trickle_app, "cam", seq)
        assert response.status == 470
        assert response.body == b"Entry not found"
        assert response.headers["lp-trickle-latest"] == "7"
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await fetch(trickle_app, "cam", 1)).headers["lp-trickle-seq"] == "1"
    assert (await fetch(trickle_app, "cam", -7)).headers["lp-trickle-seq"] == "1"


async def test_minus_two_is_current_and_minus_n_is_older(trickle_app: Any) -> None:
    for seq in range(4):
        await publish(trickle_app, "cam", seq, f"seg{seq}".encode())
    assert (await fetch(trickle_app, "cam", -2)).body == b"seg3"
    assert (await fetch(trickle_app, "cam", -3)).body == b"seg2"
    assert (await fetch(trickle_app, "cam", -5)).body == b"seg0"
    assert (await fetch(trickle_app, "cam", -6)).status == 470


async def test_minus_two_before_anything_is_written_waits_on_seq_zero(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "GET", "/cam/-2") as get:
        await trio.testing.wait_all_tasks_blocked()
        await publish(trickle_app, "cam", 0, b"zero")
        response = await get.read_response()
    assert (response.headers["lp-trickle-seq"], response.body) == ("0", b"zero")


async def test_precreation_grace_for_seq_one_before_anything_is_written(
    trickle_app: Any,
) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "GET", "/cam/1") as get:
        await trio.testing.wait_all_tasks_blocked()
        assert get.response is None  # waiting, not 470
        await publish(trickle_app, "cam", 0, b"zero")
        await publish(trickle_app, "cam", 1, b"one")
        response = await get.read_response()
    assert response.body == b"one"


async def test_get_just_ahead_of_the_writer_waits_but_further_is_470(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    assert (await fetch(trickle_app, "cam", 2)).status == 470
    async with open_exchange(trickle_app, "GET", "/cam/1") as get:
        await trio.testing.wait_all_tasks_blocked()
        assert get.response is None
        await publish(trickle_app, "cam", 1, b"next")
        assert (await get.read_response()).body == b"next"


async def test_unknown_channel_is_404(trickle_app: Any) -> None:
    response = await fetch(trickle_app, "nope", 0)
    assert (response.status, response.body) == (404, b"Stream not found\n")
    assert "connection" not in response.headers


async def test_end_of_stream_answers_closed(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    async with open_exchange(trickle_app, "GET", "/cam/-1") as waiting:
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        response = await waiting.read_response()
    assert (response.status, response.body) == (200, b"")
    assert response.headers["lp-trickle-closed"] == "terminated"
    assert response.headers["lp-trickle-seq"] == "1"
    assert "cam" not in trickle_registry
    assert (await fetch(trickle_app, "cam", 0)).status == 404


async def test_a_deleted_channel_answers_as_one_that_never_existed(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    channel = trickle_registry.get("cam")
    assert channel is not None
    channel.request_delete()  # the in-process way: the name goes at once too
    for seq in (5, 0, -1, "next"):
        response = await fetch(trickle_app, "cam", seq)
        assert (response.status, response.body) == (404, b"Stream not found\n")
        assert "lp-trickle-closed" not in response.headers
    await channel.wait_deleted()


async def test_subscriber_that_disconnects_leaves_nothing_behind(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await request(trickle_app, "POST", "/cam")
    channel = trickle_registry.get("cam")
    assert channel is not None
    async with open_exchange(trickle_app, "GET", "/cam/0") as get:
        await trio.testing.wait_all_tasks_blocked()
        assert len(channel.subscribers) == 1
        await get.disconnect()
        await get.finished.wait()
        assert len(channel.subscribers) == 0
        assert get.error is None


async def test_a_thousand_disconnecting_subscribers_leave_no_task(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await request(trickle_app, "POST", "/cam")
    channel = trickle_registry.get("cam")
    assert channel is not None
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    all_waiting, leave = trio.Event(), trio.Event()
    waiting = 0

    async def subscribe_then_leave() -> None:
        nonlocal waiting
        async with open_exchange(trickle_app, "GET", "/cam/0") as get:
            waiting += 1
            if waiting == 1000:
                all_waiting.set()
            await leave.wait()
            await get.disconnect()
            await get.finished.wait()
            assert get.error is None

    async with trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(subscribe_then_leave)
        await all_waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(channel.subscribers) == 1000
        leave.set()
    assert len(channel.subscribers) == 0
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before


@pytest.mark.parametrize("seq", ["abc", "1.0", "+3", "-0", "1" * 20])
async def test_bad_seq_is_400(trickle_app: Any, seq: str) -> None:
    await request(trickle_app, "POST", "/cam")
    response = await fetch(trickle_app, "cam", seq)
    assert (response.status, response.body) == (400, b"Invalid idx\n")
