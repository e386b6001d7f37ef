"""Create, delete, next, DELETE of a seq, hooks, base path, health, bad input."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.core.errors import RequestError
from trickle_trio.http.app import create_app
from trickle_trio.http.hooks import HookRequest
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


def app_with(registry: ChannelRegistry, **settings: Any) -> Any:
    return create_app(Settings(**settings), registry)


# -- create ----------------------------------------------------------------------------------


async def test_create_with_expect_content(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    response = await request(
        trickle_app, "POST", "/cam", headers=[("Expect-Content", "application/json")]
    )
    assert (response.status, response.body) == (200, b"")
    assert response.headers["content-length"] == "0"
    assert "content-type" not in response.headers
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert channel.mime_type == "application/json"


async def test_create_existing_is_a_no_op(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await request(trickle_app, "POST", "/cam", headers=[("Expect-Content", "video/mp2t")])
    await publish(trickle_app, "cam", 0, b"x")
    response = await request(trickle_app, "POST", "/cam", headers=[("Expect-Content", "x/y")])
    assert response.status == 200
    channel = trickle_registry.get("cam")
    assert channel is not None
    assert channel.mime_type == "video/mp2t"
    assert channel.next_write == 1


async def test_create_without_autocreate_is_404_unless_it_exists(
    trickle_registry: ChannelRegistry,
) -> None:
    app = app_with(trickle_registry, autocreate=False)
    response = await request(app, "POST", "/cam")
    assert (response.status, response.body) == (404, b"Stream not found\n")
    trickle_registry.create("made-in-process", "video/mp2t")
    assert (await request(app, "POST", "/made-in-process")).status == 200


# -- delete ----------------------------------------------------------------------------------


async def test_delete_channel_then_404(trickle_app: Any, trickle_registry: ChannelRegistry) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    response = await request(trickle_app, "DELETE", "/cam")
    assert (response.status, response.body) == (200, b"")
    assert "cam" not in trickle_registry
    assert (await fetch(trickle_app, "cam", 0)).status == 404
    assert (await request(trickle_app, "GET", "/cam/next")).status == 404


async def test_delete_unknown_channel_is_400_invalid_stream(trickle_app: Any) -> None:
    response = await request(trickle_app, "DELETE", "/nope")
    assert (response.status, response.body) == (400, b"Invalid stream\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_delete_seq(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    assert (await request(trickle_app, "DELETE", "/cam/0")).status == 200
    missing = await request(trickle_app, "DELETE", "/cam/3")
    assert (missing.status, missing.body) == (400, b"Nonexistent segment\n")
    assert (await request(trickle_app, "DELETE", "/nope/0")).status == 404
    bad = await request(trickle_app, "DELETE", "/cam/zero")
    assert (bad.status, bad.body) == (400, b"Invalid idx\n")


async def test_delete_of_an_empty_seq_moves_next_before_readers_wake(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    async with (
        open_exchange(trickle_app, "GET", "/cam/1") as first,
        open_exchange(trickle_app, "POST", "/cam/1") as preconnect,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert (await request(trickle_app, "DELETE", "/cam/1")).status == 200
        seen = await first.read_response()
        released = await preconnect.read_response()
    assert (seen.body, seen.headers["lp-trickle-latest"]) == (b"", "2")
    assert released.headers["lp-trickle-seq"] == "1"
    # Without a preconnect too: a reader looping on -1 moves on, it never spins.
    async with open_exchange(trickle_app, "GET", "/cam/-1") as waiting:
        await trio.testing.wait_all_tasks_blocked()
        await request(trickle_app, "DELETE", "/cam/2")
        assert (await waiting.read_response()).headers["lp-trickle-latest"] == "3"
    async with open_exchange(trickle_app, "GET", "/cam/-1") as next_one:
        await trio.testing.wait_all_tasks_blocked()
        assert next_one.response is None  # waiting on seq 3, not handed seq 2 again


async def test_delete_seq_minus_n_closes_the_open_segment(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    async with (
        open_exchange(trickle_app, "POST", "/cam/1") as post,
        open_exchange(trickle_app, "GET", "/cam/1") as get,
    ):
        await post.send_body(b"half")
        assert await get.read_chunk() == b"half"
        assert (await request(trickle_app, "DELETE", "/cam/-2")).status == 200  # current
        assert await get.read_chunk() is None
        await post.end_body()
        await post.read_response()
    assert (await request(trickle_app, "DELETE", "/cam/-9")).status == 400


# -- next ------------------------------------------------------------------------------------


async def test_next(trickle_app: Any, trickle_registry: ChannelRegistry) -> None:
    await request(trickle_app, "POST", "/cam")
    response = await request(trickle_app, "GET", "/cam/next")
    assert (response.status, response.body) == (200, b"0")
    assert response.headers["lp-trickle-latest"] == "0"
    assert "lp-trickle-closed" not in response.headers
    await publish(trickle_app, "cam", 0, b"x")
    assert (await request(trickle_app, "GET", "/cam/next")).body == b"1"
    channel = trickle_registry.get("cam")
    assert channel is not None
    channel.request_delete()  # a deleted channel is never seen closed: it is gone
    gone = await request(trickle_app, "GET", "/cam/next")
    assert (gone.status, gone.body) == (404, b"Stream not found\n")
    await channel.wait_deleted()


# -- hooks -----------------------------------------------------------------------------------


async def test_before_create_hook_can_refuse_with_a_4xx(trickle_registry: ChannelRegistry) -> None:
    seen: list[tuple[str, str, str]] = []

    async def before_create(req: HookRequest, name: str) -> None:
        await trio.lowlevel.checkpoint()
        seen.append((req.method, req.path, name))
        if req.headers.get("authorization") != "Bearer ok":
            raise RequestError(403, "forbidden")

    app = app_with(trickle_registry, autocreate=True, before_create=before_create)
    refused = await request(app, "POST", "/cam")
    assert (refused.status, refused.body) == (403, b"forbidden\n")
    refused_publish = await publish(app, "cam", 0, b"x")
    assert refused_publish.status == 403
    assert "cam" not in trickle_registry
    allowed = await request(app, "POST", "/cam", headers=[("Authorization", "Bearer ok")])
    assert allowed.status == 200
    assert "cam" in trickle_registry
    assert seen == [("POST", "/cam", "cam"), ("POST", "/cam/0", "cam"), ("POST", "/cam", "cam")]


async def test_hook_that_crashes_answers_500_and_changes_nothing(
    trickle_registry: ChannelRegistry,
) -> None:
    def before_delete(req: HookRequest, name: str) -> None:
        raise RuntimeError("bug in the embedding program")

    app = app_with(trickle_registry, autocreate=True, before_delete=before_delete)
    await request(app, "POST", "/cam")
    response = await request(app, "DELETE", "/cam")
    assert response.status == 500
    assert "cam" in trickle_registry


async def test_before_delete_hook_refuses(trickle_registry: ChannelRegistry) -> None:
    def before_delete(req: HookRequest, name: str) -> None:
        raise RequestError(401, "who are you")

    app = app_with(trickle_registry, autocreate=True, before_delete=before_delete)
    await request(app, "POST", "/cam")
    response = await request(app, "DELETE", "/cam")
    assert (response.status, response.body) == (401, b"who are you\n")
    assert "cam" in trickle_registry


# -- base path, health -------------------------------------------------------------------------


async def test_base_path(trickle_registry: ChannelRegistry) -> None:
    app = app_with(trickle_registry, autocreate=True, base_path="/ai/trickle")
    assert (await request(app, "POST", "/ai/trickle/cam")).status == 200
    assert (await publish(app, "ai/trickle/cam", 0, b"x")).status == 200
    assert (await request(app, "GET", "/ai/trickle/cam/0")).body == b"x"
    assert (await request(app, "GET", "/ai/trickle/cam/next")).body == b"1"
    assert (await request(app, "GET", "/cam/0")).status == 404
    assert (await request(app, "POST", "/cam/0", b"x")).status == 404
    assert set(trickle_registry.channels()) == {trickle_registry.get("cam")}
    assert (await request(app, "DELETE", "/ai/trickle/cam")).status == 200


async def test_health_and_readiness(trickle_app: Any) -> None:
    assert (await request(trickle_app, "GET", "/healthz")).status == 200
    assert (await request(trickle_app, "GET", "/readyz")).status == 200
    trickle_app.extensions["trickle"].draining = True
    assert (await request(trickle_app, "GET", "/readyz")).status == 503


# -- bad input ---------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("PUT", "/cam/0"),
    ("PATCH", "/cam"),
    ("GET", "/cam"),
    ("HEAD", "/cam/0"),
    ("OPTIONS", "/cam/0"),
    ("GET", "/"),
    ("POST", "/"),
    ("DELETE", "/"),
    ("GET", "/cam/0/extra"),
    ("POST", "/cam/0/extra"),
    ("GET", "/cam/"),
    ("POST", "/cam/"),
    ("POST", "/cam/next"),
    ("GET", "/cam/9007199254740992"),
    ("POST", "/cam/-3"),
    ("POST", "/a b/0"),
    ("POST", "/caf\u00e9/0"),
    ("POST", "/" + "x" * 300 + "/0"),
    ("POST", "/" + "x" * 300),
    ("GET", "/cam/\u0661"),
    ("DELETE", "/cam/1e3"),
    ("POST", "/%00/0"),
    ("BREW", "/cam/0"),
]


@pytest.mark.parametrize(("method", "path"), BAD_REQUESTS)
async def test_bad_requests_get_a_4xx_and_leave_other_channels_alone(
    trickle_app: Any, trickle_registry: ChannelRegistry, method: str, path: str
) -> None:
    await publish(trickle_app, "cam", 0, b"kept")
    before = {channel.name for channel in trickle_registry.channels()}
    async with open_exchange(trickle_app, method, path, body=b"junk") as bad:
        response = await bad.read_response()
    assert 400 <= response.status < 500, (response.status, response.body)
    if response.body:  # every error in plain text, none a Werkzeug HTML page
        assert response.headers["content-type"] == "text/plain; charset=utf-8", response
        assert not response.body.lstrip().startswith(b"<"), response.body
    assert {channel.name for channel in trickle_registry.channels()} == before
    assert (await fetch(trickle_app, "cam", 0)).body == b"kept"
    assert (await request(trickle_app, "GET", "/cam/next")).body == b"1"


@pytest.mark.parametrize("base_path", ["/", "/trickle/"])
async def test_wrong_method_and_unknown_route_are_answered_as_go_words_them(
    trickle_registry: ChannelRegistry, base_path: str
) -> None:
    app = app_with(trickle_registry, autocreate=True, base_path=base_path)
    wrong = await request(app, "PUT", f"{base_path}cam/0")
    assert (wrong.status, wrong.body) == (405, b"Method Not Allowed\n")
    assert wrong.headers["content-type"] == "text/plain; charset=utf-8"
    assert wrong.headers["x-content-type-options"] == "nosniff"
    assert "DELETE" in wrong.headers["allow"]
    unknown = await request(app, "GET", f"{base_path}cam/0/extra/more")
    assert (unknown.status, unknown.body) == (404, b"404 page not found\n")
    assert unknown.headers["content-type"] == "text/plain; charset=utf-8"


async def test_requests_racing_a_delete_never_5xx(
    trickle_app: Any, trickle_registry: ChannelRegistry
) -> None:
    await publish(trickle_app, "cam", 0, b"x")
    statuses: list[int] = []

    async def one(method: str, path: str, body: bytes) -> None:
        statuses.append((await request(trickle_app, method, path, body)).status)

    async with trio.open_nursery() as nursery:
        for seq in range(3):
            nursery.start_soon(one, "POST", f"/cam/{seq + 1}", b"y")
            nursery.start_soon(one, "GET", f"/cam/{seq}", b"")
        nursery.start_soon(one, "DELETE", "/cam", b"")
        nursery.start_soon(one, "GET", "/cam/next", b"")
    assert all(status < 500 for status in statuses), statuses
    assert "cam" not in trickle_registry
