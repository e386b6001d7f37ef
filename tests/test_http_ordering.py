"""The cases that started the project (go-livepeer PR #3824) and the DELETE ordering.

Orders are observed, never timed: every response message is logged in the order the
app sent it, and the steps of each scenario are separated by wait_all_tasks_blocked.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio import LocalPublisher
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline

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


LOOP_ROUNDS = 40


async def count_own_seqs(app: Any, channel: str, outcomes: list[tuple[int, str, str]]) -> None:
    """A subscriber counting its own seqs from 0, ignoring Lp-Trickle-Closed, until 404."""
    for seq in range(MAX_REQUESTS):
        response = await request(app, "GET", f"/{channel}/{seq}")
        outcomes.append(
            (
                response.status,
                response.headers.get("lp-trickle-seq", ""),
                response.headers.get("lp-trickle-closed", ""),
            )
        )
        if response.status == 404:
            return


async def loop_minus_one_to_404(
    app: Any, channel: str, outcomes: list[tuple[int, str, str]]
) -> None:
    """A subscriber looping on -1 with no pause, ignoring Lp-Trickle-Closed, until 404."""
    for _ in range(MAX_REQUESTS):
        response = await request(app, "GET", f"/{channel}/-1")
        outcomes.append(
            (
                response.status,
                response.headers.get("lp-trickle-seq", ""),
                response.headers.get("lp-trickle-closed", ""),
            )
        )
        if response.status == 404:
            return


def assert_increasing_then_404(outcomes: list[tuple[int, str, str]]) -> None:
    assert outcomes[-1][0] == 404, outcomes
    seqs = [int(seq) for _, seq, _ in outcomes[:-1]]
    assert seqs == sorted(set(seqs)), outcomes
    closed = [i for i, (_, _, flag) in enumerate(outcomes[:-1]) if flag]
    assert closed in ([], [len(outcomes) - 2]), outcomes  # only the last answer, if any


@pytest.mark.parametrize("delete_first", [True, False], ids=["delete-first", "release-first"])
async def test_looping_subscribers_never_see_a_seq_twice_while_a_slow_reader_holds_on(
    trickle_app: Any, autojump_clock: trio.testing.MockClock, delete_first: bool
) -> None:
    """Many rounds of the close in either order, with a reader that can't take its
    response head (so the old channel's teardown lasts its whole grace): the loopers
    see strictly increasing seqs and then 404, and the last segment is never lost."""
    for round_ in range(LOOP_ROUNDS):
        channel = f"cam{round_}"
        await publish(trickle_app, channel, 0, b"last frame")
        minus_one: list[tuple[int, str, str]] = []
        own: list[tuple[int, str, str]] = []
        async with (
            open_exchange(
                trickle_app, "GET", f"/{channel}/0", response_buffer=0, shield_sends=True
            ) as stuck,
            open_exchange(trickle_app, "POST", f"/{channel}/1") as preconnect,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(loop_minus_one_to_404, trickle_app, channel, minus_one)
            nursery.start_soon(count_own_seqs, trickle_app, channel, own)
            await trio.testing.wait_all_tasks_blocked()
            if delete_first:
                assert (await request(trickle_app, "DELETE", f"/{channel}")).status == 200
                await preconnect.end_body()
            else:
                await preconnect.end_body()
                await trio.testing.wait_all_tasks_blocked()
                assert (await request(trickle_app, "DELETE", f"/{channel}")).status == 200
            assert (await preconnect.read_response()).status == 200
            assert (await stuck.read_response()).body == b"last frame"
        assert_increasing_then_404(minus_one)
        assert_increasing_then_404(own)
        assert own[0] == (200, "0", "")
