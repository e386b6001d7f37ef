"""The cases that started the project (go-livepeer PR #3824) and the DELETE ordering.

Orders are observed, never timed: every response message is logged in the order the
app sent it, and the steps of each scenario are separated by wait_all_tasks_blocked.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trickle_trio import LocalPublisher
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import publish, request

MAX_REQUESTS = 50


async def subscribe_on_minus_one(app: Any, outcomes: list[str]) -> None:
    """A subscriber looping on GET -1 until end of stream or 404 (at most MAX_REQUESTS)."""
    for _ in range(MAX_REQUESTS):
        async with open_exchange(app, "GET", "/cam/-1") as get:
            response = await get.read_response()
        if response.status == 404:
            outcomes.append("404")
            return
        if response.headers.get("lp-trickle-closed") == "terminated":
            outcomes.append("closed")
            return
        outcomes.append(f"seq {response.headers['lp-trickle-seq']} {response.body!r}")


async def test_old_close_order_still_ends_a_minus_one_subscriber(trickle_app: Any) -> None:
    """Release the preconnect, then DELETE: the zero-byte segment advances next."""
    await publish(trickle_app, "cam", 0, b"last frame")
    outcomes: list[str] = []
    async with (
        open_exchange(trickle_app, "POST", "/cam/1") as preconnect,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(subscribe_on_minus_one, trickle_app, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        await preconnect.end_body()  # 1. the idle preconnect goes (zero bytes)
        assert (await preconnect.read_response()).headers["lp-trickle-seq"] == "1"
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200  # 2. DELETE
    assert outcomes == ["seq 1 b''", "closed"]


async def test_new_close_order_ends_a_minus_one_subscriber_at_once(trickle_app: Any) -> None:
    """DELETE, then release the preconnect (the PR #3824 order)."""
    await publish(trickle_app, "cam", 0, b"last frame")
    outcomes: list[str] = []
    async with (
        open_exchange(trickle_app, "POST", "/cam/1") as preconnect,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(subscribe_on_minus_one, trickle_app, outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        released = await preconnect.read_response()  # released by the DELETE already
        assert released.headers["lp-trickle-closed"] == "terminated"
    assert outcomes == ["closed"]


async def test_subscriber_arriving_after_the_close_gets_404(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    await request(trickle_app, "DELETE", "/cam")
    outcomes: list[str] = []
    await subscribe_on_minus_one(trickle_app, outcomes)
    assert outcomes == ["404"]


async def test_delete_answers_every_subscriber_before_any_preconnect(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"old")
    log: list[tuple[str, str]] = []

    def exchange(method: str, path: str, label: str) -> Any:
        return open_exchange(trickle_app, method, path, label=label, log=log)

    async with (
        # Preconnects first on purpose: the order must come from the DELETE, not arrival.
        exchange("POST", "/cam/2", "idle preconnect") as idle,
        exchange("POST", "/cam/1", "active publisher") as active,
        exchange("GET", "/cam/1", "streaming subscriber") as streaming,
        exchange("GET", "/cam/2", "waiting subscriber") as waiting,
        exchange("GET", "/cam/0", "done subscriber") as done,
    ):
        await active.send_body(b"half")
        assert await streaming.read_chunk() == b"half"
        await done.read_response()
        await trio.testing.wait_all_tasks_blocked()
        log.clear()
        async with exchange("DELETE", "/cam", "delete") as delete:
            assert (await delete.read_response()).status == 200
        responses = {
            name: await ex.read_response()
            for name, ex in [("idle", idle), ("active", active), ("waiting", waiting)]
        }
        assert (await streaming.read_response()).body == b"half"

    def position(label: str, kind: str) -> int:
        return log.index((label, kind))

    subscribers_done = max(
        position("streaming subscriber", "end"), position("waiting subscriber", "end")
    )
    preconnects_start = min(
        position("idle preconnect", "start"), position("active publisher", "start")
    )
    # Every subscriber's terminal response has started (here: ended, the in-process
    # driver never blocks) before any publisher is answered; the DELETE's own answer
    # waits for none of them.
    assert subscribers_done < preconnects_start, log
    assert log.index(("delete", "end")) < preconnects_start, log
    assert responses["waiting"].headers["lp-trickle-closed"] == "terminated"
    assert responses["waiting"].body == b""
    for name in ("idle", "active"):
        assert responses[name].status == 200
        assert responses[name].headers["lp-trickle-closed"] == "terminated"
        assert responses[name].headers["connection"] == "close"
    assert "cam" not in trickle_registry


async def test_released_preconnect_never_shows_a_fresh_empty_segment(trickle_app: Any) -> None:
    """During a DELETE a subscriber may reconnect at once: it must see the end, not seq+1."""
    await publish(trickle_app, "cam", 0, b"x")
    seen: list[str] = []

    async def eager_subscriber() -> None:
        for _ in range(3):
            async with open_exchange(trickle_app, "GET", "/cam/-1") as get:
                response = await get.read_response()
            seen.append(response.headers.get("lp-trickle-closed", "") or str(response.status))
            if response.status == 404 or "lp-trickle-closed" in response.headers:
                return

    async with open_exchange(trickle_app, "POST", "/cam/1"), trio.open_nursery() as nursery:
        nursery.start_soon(eager_subscriber)
        await trio.testing.wait_all_tasks_blocked()
        await request(trickle_app, "DELETE", "/cam")
    assert seen == ["terminated"]


async def test_nothing_of_a_channel_outlives_what_it_serves(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    channel = trickle_registry.get("cam")
    assert channel is not None
    async with (
        open_exchange(trickle_app, "POST", "/cam/1") as idle,
        open_exchange(trickle_app, "GET", "/cam/1") as first,
        open_exchange(trickle_app, "GET", "/cam/1") as second,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert (len(channel.subscribers), len(channel.publishers)) == (2, 1)
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        assert "cam" not in trickle_registry  # the name is gone with the answer
        for exchange in (idle, first, second):
            assert (await exchange.read_response()).headers["lp-trickle-closed"] == "terminated"
        await channel.wait_deleted()
        assert (len(channel.subscribers), len(channel.publishers)) == (0, 0)
        assert list(channel.window) == []
        assert trickle_registry.retired() == []


async def test_delete_never_takes_away_a_segment_completed_before_it(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    """The subscriber's handler has been woken by the last byte but has not run yet when
    the DELETE arrives: it must still deliver the whole segment."""
    await request(trickle_app, "POST", "/cam")
    async with (
        open_exchange(trickle_app, "GET", "/cam/0") as waiting,
        open_exchange(trickle_app, "GET", "/cam/1") as next_one,
    ):
        await trio.testing.wait_all_tasks_blocked()
        LocalPublisher(trickle_registry, "cam").write_nowait(b"last words")
        await trickle_registry.delete("cam")  # no checkpoint in between
        got = await waiting.read_response()
        after = await next_one.read_response()
    assert (got.status, got.body) == (200, b"last words")
    assert after.headers["lp-trickle-closed"] == "terminated"


async def test_a_preconnect_its_publisher_lets_go_is_answered_after_the_subscribers(
    trickle_app: Any,
) -> None:
    """The PR #3824 close (DELETE, then the publisher ends its idle preconnect itself):
    the preconnect's answer still waits until every subscriber attached at the DELETE has
    handed its terminal response over, here one whose client is slow to take it."""
    await publish(trickle_app, "cam", 0, b"x")
    log: list[tuple[str, str]] = []
    async with (
        open_exchange(trickle_app, "POST", "/cam/1", label="preconnect", log=log) as idle,
        open_exchange(
            trickle_app,
            "GET",
            "/cam/1",
            label="subscriber",
            log=log,
            response_buffer=0,
            shield_sends=True,
        ) as slow,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam")).status == 200
        await idle.end_body()  # the publisher lets its preconnect go
        await trio.testing.wait_all_tasks_blocked()
        assert ("preconnect", "start") not in log, log  # held for the subscriber
        answer = await slow.read_response()
        released = await idle.read_response()
    assert answer.headers["lp-trickle-closed"] == "terminated"
    assert released.headers["lp-trickle-closed"] == "terminated"
    assert log.index(("subscriber", "start")) < log.index(("preconnect", "start")), log
