"""The fault layer in-process (open_exchange(faults=...)), one action at a time, on
virtual time: delays, throttle, stall, answers, cuts and drops, and what an unmatched
request sees (nothing of the layer)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trickle_trio.faults import Answer, Cut, Delay, Drop, FaultPlan, Stall, Throttle
from trickle_trio.faults.layer import FaultLayer
from trickle_trio.http.app import app_state
from trickle_trio.http.extensions import (
    BODY_EXTENSION,
    CUT_EXTENSION,
    DISCONNECT_EXTENSION,
    PARTS_EXTENSION,
    PUSH_EXTENSION,
)
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


async def test_a_head_delay_holds_the_whole_response(
    trickle_app: Any, trickle_faults: FaultPlan, autojump_clock: trio.testing.MockClock
) -> None:
    await publish(trickle_app, "cam", 0, b"segment")
    trickle_faults.add(Delay(5.0), route="segment-get")
    start = trio.current_time()
    async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
        response = await get.read_start()
        assert trio.current_time() - start == pytest.approx(5.0)
        assert (await get.read_response()).body == b"segment"
    assert response.status == 200
    # Fired once: the next GET is served at once.
    start = trio.current_time()
    assert (await fetch(trickle_app, "cam", 0)).body == b"segment"
    async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
        await get.read_start()
    assert trio.current_time() == start


async def test_a_first_byte_delay_sends_the_head_then_holds_the_body(
    trickle_app: Any, trickle_faults: FaultPlan, autojump_clock: trio.testing.MockClock
) -> None:
    await publish(trickle_app, "cam", 0, b"segment")
    trickle_faults.add(Delay(5.0, where="first-byte"), route="segment-get")
    start = trio.current_time()
    async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
        assert (await get.read_start()).status == 200
        assert trio.current_time() == start
        assert await get.read_chunk() == b"segment"
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_throttled_response_goes_out_at_the_rate(
    trickle_app: Any, trickle_faults: FaultPlan, autojump_clock: trio.testing.MockClock
) -> None:
    body = bytes(range(256)) * 4  # 1024 bytes
    await publish(trickle_app, "cam", 0, body)
    trickle_faults.add(Throttle(rate=100), route="segment-get")
    start = trio.current_time()
    async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
        chunks = []
        while (chunk := await get.read_chunk()) is not None:
            chunks.append((trio.current_time() - start, len(chunk)))
    assert get.response is not None
    assert get.response.body == body
    sent = 0
    for at, size in chunks:  # never ahead of 100 bytes/s
        assert at >= sent / 100 - 1e-9
        sent += size
    assert chunks[-1][0] == pytest.approx(1020 / 100)  # pieces of 5 bytes (rate / 20)


async def test_a_stalled_body_is_not_read_for_the_stall(
    trickle_app: Any, trickle_faults: FaultPlan, autojump_clock: trio.testing.MockClock
) -> None:
    trickle_faults.add(Stall(seconds=5.0, after=3), route="segment-post")
    async with (
        open_exchange(trickle_app, "POST", "/cam/0", faults=trickle_faults) as post,
        open_exchange(trickle_app, "GET", "/cam/0") as get,
    ):
        start = trio.current_time()
        await post.send_body(b"abc")
        assert await get.read_chunk() == b"abc"
        await post.send_body(b"def")
        assert await get.read_chunk() == b"def"
        assert trio.current_time() - start == pytest.approx(5.0)
        await post.end_body()
        assert (await post.read_response()).status == 200


async def test_a_470_answer_carries_the_channels_latest_and_the_seq(
    trickle_app: Any, trickle_faults: FaultPlan
) -> None:
    await publish(trickle_app, "cam", 0, b"a")
    await publish(trickle_app, "cam", 1, b"b")
    trickle_faults.add(Answer(470), route="segment-get", seq=7)
    async with open_exchange(trickle_app, "GET", "/cam/7", faults=trickle_faults) as get:
        response = await get.read_response()
    assert response.status == 470
    assert response.headers["lp-trickle-latest"] == "2"
    assert response.headers["lp-trickle-seq"] == "7"
    given = trickle_faults.add(Answer(470, latest=40), route="segment-get", seq=7)
    async with open_exchange(trickle_app, "GET", "/cam/7", faults=trickle_faults) as get:
        assert (await get.read_response()).headers["lp-trickle-latest"] == "40"
    assert given.fired == 1


async def test_an_answer_replaces_the_request_which_never_reaches_the_server(
    trickle_app: Any, trickle_faults: FaultPlan, trickle_registry: ChannelRegistry
) -> None:
    trickle_faults.add(Answer(404, body="Stream not found"), route="segment-post")
    trickle_faults.add(
        Answer(503, closed=True, headers={"Retry-After": "1"}), route="create", channel="m*"
    )
    async with open_exchange(trickle_app, "POST", "/cam/0", faults=trickle_faults) as post:
        await post.send_body(b"bytes", more=False)
        response = await post.read_response()
    assert (response.status, response.body) == (404, b"Stream not found\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert trickle_registry.get("cam") is None  # autocreate is on: the app never saw it
    async with open_exchange(trickle_app, "POST", "/mic", body=b"", faults=trickle_faults) as post:
        response = await post.read_response()
    assert response.status == 503
    assert response.headers["lp-trickle-closed"] == "terminated"
    assert response.headers["retry-after"] == "1"
    assert trickle_registry.get("mic") is None


async def test_a_response_cut_sends_n_bytes_then_never_ends(
    trickle_app: Any, trickle_faults: FaultPlan, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"0123456789" * 10)
    rule = trickle_faults.add(Cut(after=25, of="response", how="rst"), route="segment-get")
    async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
        assert (await get.read_start()).status == 200
        received = b""

        async def read_to_the_end() -> None:
            nonlocal received
            while (chunk := await get.read_chunk()) is not None:
                received += chunk

        with pytest.raises(EOFError, match="body cut short"):
            await read_to_the_end()
        await get.finished.wait()
    assert received == b"0123456789" * 2 + b"01234"
    assert get.cut == "rst"
    assert get.error is None  # the app's request was cancelled, not failed
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert not channel.subscribers  # its slot is free again
    assert [record.rule for record in trickle_faults.fired] == [rule.id]
    assert (await fetch(trickle_app, "cam", 0)).body == b"0123456789" * 10


async def test_a_request_cut_is_a_publisher_gone_mid_segment_and_a_retry_makes_it_whole(
    trickle_app: Any, trickle_faults: FaultPlan
) -> None:
    trickle_faults.add(Cut(after=4, of="request", how="fin"), route="segment-post", seq=0)
    async with (
        open_exchange(trickle_app, "POST", "/cam/0", faults=trickle_faults) as post,
        open_exchange(trickle_app, "GET", "/cam/0") as get,
    ):
        await post.send_body(b"abcdefgh")
        response = await get.read_response()  # the server closes a segment whose
        assert response.body == b"abcd"  # publisher left: the bytes written, a clean end
        with pytest.raises(EOFError):
            await post.read_start()
        assert post.cut == "fin"
    await publish(trickle_app, "cam", 0, b"abcdefgh")  # the retry starts seq 0 afresh
    assert (await fetch(trickle_app, "cam", 0)).body == b"abcdefgh"


async def test_a_drop_answers_nothing(
    trickle_app: Any, trickle_faults: FaultPlan, trickle_registry: ChannelRegistry
) -> None:
    trickle_faults.add(Drop(how="rst"), route="create")
    async with open_exchange(trickle_app, "POST", "/cam", body=b"", faults=trickle_faults) as post:
        with pytest.raises(EOFError, match="no response"):
            await post.read_start()
    assert post.cut == "rst"
    assert trickle_registry.get("cam") is None


async def test_the_nth_request_is_the_one_faulted(
    trickle_app: Any, trickle_faults: FaultPlan
) -> None:
    trickle_faults.add(Answer(503), route="segment-post", nth=2)
    statuses = []
    for seq in range(4):
        async with open_exchange(
            trickle_app, "POST", f"/cam/{seq}", body=b"x", faults=trickle_faults
        ) as post:
            statuses.append((await post.read_response()).status)
    assert statuses == [200, 503, 200, 200]


async def test_an_unmatched_request_reaches_the_app_untouched(trickle_app: Any) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    plan = FaultPlan()
    layer = FaultLayer(app, plan, app_state(trickle_app))
    extensions = {
        name: {} for name in (BODY_EXTENSION, DISCONNECT_EXTENSION, PARTS_EXTENSION, PUSH_EXTENSION)
    }
    extensions[CUT_EXTENSION] = {"cut": lambda reset: None}

    def scope(path: str) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                "extensions": dict(extensions), "headers": []}  # fmt: skip

    async def receive() -> Any:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    first = scope("/cam/0")
    await layer(first, receive, send)  # an empty plan
    plan.add(Delay(1.0), channel="other")
    second = scope("/cam/0")
    await layer(second, receive, send)  # a plan that does not match
    assert seen == [(first, receive, send), (second, receive, send)]
    plan.add(Delay(0.0, where="first-byte"), channel="cam")
    await layer(scope("/cam/0"), receive, send)
    faulted_scope, faulted_receive, faulted_send = seen[-1]
    assert faulted_receive is receive
    assert faulted_send is not send
    # Every byte of a faulted request passes the layer: no shortcut is left.
    assert set(faulted_scope["extensions"]) == {DISCONNECT_EXTENSION}


async def test_a_response_cut_mid_live_segment_lets_go_of_the_segment(
    trickle_app: Any, trickle_faults: FaultPlan, trickle_registry: ChannelRegistry
) -> None:
    trickle_faults.add(Cut(after=3, how="fin"), route="segment-get")
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"abcdef")
        async with open_exchange(trickle_app, "GET", "/cam/0", faults=trickle_faults) as get:
            assert await get.read_chunk() == b"abc"
            with pytest.raises(EOFError):
                await get.read_chunk()
            await get.finished.wait()  # the app's request ended with the cut...
        channel = trickle_registry.get("cam")
        assert channel is not None
        assert not channel.subscribers  # ...while the segment is still being written
        await post.end_body()
        assert (await post.read_response()).status == 200
