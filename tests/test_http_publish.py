"""POST /{ch}/{seq}: streaming publish through the raw-ASGI layer, in-process."""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from trickle_trio.config import Settings
from trickle_trio.http.app import create_app
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


async def test_publish_streams_each_chunk_to_a_subscriber_as_it_arrives(trickle_app: Any) -> None:
    async with (
        open_exchange(trickle_app, "POST", "/cam/0", [("Content-Type", "video/mp2t")]) as post,
        open_exchange(trickle_app, "GET", "/cam/0") as get,
    ):
        await post.send_body(b"first")
        assert await get.read_chunk() == b"first"
        await post.send_body(b"second")
        assert await get.read_chunk() == b"second"
        await post.end_body()
        assert await get.read_chunk() is None
        response = await post.read_response()
    assert response.status == 200
    assert response.headers["lp-trickle-seq"] == "0"
    assert response.headers["content-length"] == "0"
    assert "connection" not in response.headers
    assert "lp-trickle-closed" not in response.headers
    assert get.response is not None
    assert get.response.body == b"firstsecond"


async def test_publish_minus_one_writes_next_and_echoes_the_seq(trickle_app: Any) -> None:
    assert (await publish(trickle_app, "cam", 0, b"a")).headers["lp-trickle-seq"] == "0"
    response = await publish(trickle_app, "cam", -1, b"b")
    assert response.headers["lp-trickle-seq"] == "1"
    assert (await fetch(trickle_app, "cam", 1)).body == b"b"
    assert (await request(trickle_app, "GET", "/cam/next")).body == b"2"


async def test_first_byte_advances_next_write(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"a")
    async with open_exchange(trickle_app, "POST", "/cam/1") as post:
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "GET", "/cam/next")).body == b"1"  # idle: no change
        await post.send_body(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "GET", "/cam/next")).body == b"2"
        await post.end_body()
        await post.read_response()


async def test_restarted_publisher_moves_next_write_backwards(trickle_app: Any) -> None:
    for seq in range(4):
        await publish(trickle_app, "cam", seq, b"x")
    await publish(trickle_app, "cam", 1, b"restart")
    assert (await request(trickle_app, "GET", "/cam/next")).body == b"2"


async def test_zero_byte_post_is_a_segment_and_advances_next(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    response = await publish(trickle_app, "cam", 0, b"")
    assert response.status == 200
    assert response.headers["lp-trickle-seq"] == "0"
    assert response.headers["connection"] == "close"
    assert "lp-trickle-closed" not in response.headers
    assert (await request(trickle_app, "GET", "/cam/next")).headers["lp-trickle-latest"] == "1"
    empty = await fetch(trickle_app, "cam", 0)
    assert (empty.status, empty.body, empty.headers["lp-trickle-seq"]) == (200, b"", "0")


async def test_idle_preconnect_released_by_its_publisher_is_an_empty_segment(
    trickle_app: Any,
) -> None:
    """The publisher lets its preconnect go (ends the body with nothing in it)."""
    await request(trickle_app, "POST", "/cam")
    async with (
        open_exchange(trickle_app, "POST", "/cam/0") as preconnect,
        open_exchange(trickle_app, "GET", "/cam/0") as waiting,
    ):
        await trio.testing.wait_all_tasks_blocked()
        await preconnect.end_body()
        released = await preconnect.read_response()
        seen = await waiting.read_response()
    assert released.headers["lp-trickle-seq"] == "0"
    assert released.headers["connection"] == "close"
    assert (seen.status, seen.body) == (200, b"")
    assert seen.headers["lp-trickle-seq"] == "0"
    assert seen.headers["lp-trickle-latest"] == "1"  # fresh: the empty segment advanced it
    assert "lp-trickle-closed" not in seen.headers


async def test_subscriber_looping_on_minus_one_never_gets_the_same_empty_segment_twice(
    trickle_app: Any,
) -> None:
    await request(trickle_app, "POST", "/cam")
    seqs: list[str] = []
    for _ in range(3):
        async with open_exchange(trickle_app, "GET", "/cam/-1") as get:
            await trio.testing.wait_all_tasks_blocked()
            await publish(trickle_app, "cam", -1, b"")
            seqs.append((await get.read_response()).headers["lp-trickle-seq"])
    assert seqs == ["0", "1", "2"]


async def test_delete_of_the_seq_releases_an_idle_preconnect(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "POST", "/cam/0") as preconnect:
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam/0")).status == 200
        released = await preconnect.read_response()
    assert released.status == 200
    assert released.headers["lp-trickle-seq"] == "0"
    assert released.headers["connection"] == "close"
    assert "lp-trickle-closed" not in released.headers
    assert (await request(trickle_app, "GET", "/cam/next")).body == b"1"


async def test_unknown_channel_without_autocreate_is_404_with_connection_close(
    trickle_registry: ChannelRegistry,
) -> None:
    app = create_app(Settings(autocreate=False), trickle_registry)
    response = await publish(app, "nope", 0, b"data")
    assert response.status == 404
    assert response.body == b"Stream not found\n"
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "nope" not in trickle_registry


async def test_autocreate_takes_the_mime_type_from_content_type(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x", headers=[("Content-Type", "video/mp2t")])
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert channel.mime_type == "video/mp2t"
    assert (await fetch(trickle_app, "cam", 0)).headers["content-type"] == "video/mp2t"


@pytest.mark.parametrize(
    "seq", ["abc", "1.5", "+1", "01", "-0", "99999999999999999999", "-2", "-9"]
)
async def test_bad_seq_is_400_before_anything_is_created(
    trickle_app: Any, trickle_registry: ChannelRegistry, seq: str
) -> None:
    response = await publish(trickle_app, "fresh", seq, b"x")
    assert (response.status, response.body) == (400, b"Invalid idx\n")
    assert "fresh" not in trickle_registry


async def test_reset_header_closes_older_segments_and_unblocks_their_readers(
    trickle_app: Any,
) -> None:
    await request(trickle_app, "POST", "/cam")
    async with (
        open_exchange(trickle_app, "POST", "/cam/3") as stuck_publisher,
        open_exchange(trickle_app, "GET", "/cam/3") as stuck_reader,
    ):
        await stuck_publisher.send_body(b"half")
        assert await stuck_reader.read_chunk() == b"half"
        # The publisher restarts at seq 4 with the reset header.
        async with open_exchange(
            trickle_app, "POST", "/cam/4", [("Lp-Trickle-Reset", "1")], body=b"new"
        ) as restarted:
            assert (await restarted.read_response()).status == 200
        assert await stuck_reader.read_chunk() is None  # unblocked, clean end
        await stuck_publisher.send_body(b"late")  # discarded: seq 3 is closed
        await stuck_publisher.end_body()
        await stuck_publisher.read_response()
    assert (await fetch(trickle_app, "cam", 3)).body == b"half"


async def test_publisher_that_disconnects_mid_body_closes_the_segment(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    async with (
        open_exchange(trickle_app, "POST", "/cam/0") as post,
        open_exchange(trickle_app, "GET", "/cam/0") as get,
    ):
        await post.send_body(b"written")
        assert await get.read_chunk() == b"written"
        await post.disconnect()
        assert await get.read_chunk() is None
        await post.finished.wait()
        assert post.response is None  # nobody to answer
    assert get.response is not None
    assert get.response.status == 200
    late = await fetch(trickle_app, "cam", 0)
    assert late.body == b"written"


async def test_post_to_a_closed_seq_starts_it_afresh(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    await publish(trickle_app, "cam", 0, b"first try")
    async with open_exchange(trickle_app, "GET", "/cam/0") as old_reader:
        assert await old_reader.read_chunk() == b"first try"
        await publish(trickle_app, "cam", 0, b"retry")
        assert await old_reader.read_chunk() is None
    assert old_reader.response is not None
    assert old_reader.response.body == b"first try"
    assert (await fetch(trickle_app, "cam", 0)).body == b"retry"


async def test_two_posts_to_the_same_open_seq_append(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    async with (
        open_exchange(trickle_app, "POST", "/cam/0") as one,
        open_exchange(trickle_app, "POST", "/cam/0") as two,
        open_exchange(trickle_app, "GET", "/cam/0") as get,
    ):
        await one.send_body(b"1")
        assert await get.read_chunk() == b"1"
        await two.send_body(b"2")
        assert await get.read_chunk() == b"2"
        await two.end_body()
        assert (await two.read_response()).status == 200
        assert await get.read_chunk() is None  # the first body end closes the segment
        await one.end_body()
        await one.read_response()


async def test_closed_segment_never_changes_again(trickle_app: Any) -> None:
    await request(trickle_app, "POST", "/cam")
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"kept")
        await trio.testing.wait_all_tasks_blocked()
        await request(trickle_app, "DELETE", "/cam/0")
        first_reader = await fetch(trickle_app, "cam", 0)
        await post.send_body(b"-discarded")
        await post.end_body()
        await post.read_response()
    second_reader = await fetch(trickle_app, "cam", 0)
    assert first_reader.body == second_reader.body == b"kept"
