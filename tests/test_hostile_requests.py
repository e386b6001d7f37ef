"""Hostile requests over real sockets, on the fast path and on stock hypercorn.

Each attack here once got through (issue 19): path tricks around a token, request
smuggling framing, connections left open after ``Connection: close``, heads over the
size limit in one read. Every test runs against both HTTP/1.1 paths (``fast_path`` on
and off), bounded with ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.server import RunningServer, open_server

from .sockets import call, h2_request, send_raw

LIMIT = 20
PUB = "publish-token-0123456789"
SUB = "subscribe-token-0123456789"
AUTH = f"Authorization: Bearer {PUB}\r\n".encode()


@pytest.fixture(params=[True, False], ids=["fast", "stock"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        autocreate=True,
        changefeed=True,
        publish_token=PUB,
        subscribe_token=SUB,
        keep_alive_timeout=1.0,
        fast_path=request.param,
    )
    async with open_server(settings) as running:
        yield running


def get(target: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return (
        method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n"
    )


# -- item 3: the route is decided once ----------------------------------------------------

STATUS_TRICKS = [
    b"//_status",
    b"///_status",
    b"/%2F_status",
    b"/%2f_status",
    b"http://x/_status",
    b"https://evil.example/_status",
    b"http:/_status",
    b"x:/_status",
    b"/a/..%2f_status",
    b"/a/../_status",
    b"/./_status",
    b"/%5Fstatus",
    b"/_status?x=/healthz",
    b"/healthz/../_status",
]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
async def test_status_is_unreachable_without_the_token_by_any_path(
    server: RunningServer, method: bytes
) -> None:
    with trio.fail_after(LIMIT):
        assert (await call(server.url, "POST", "/secret-name/0", b"x")).status == 401
        for target in STATUS_TRICKS:
            answer = await send_raw(server.url, get(target, method=method))
            (status,) = answer.statuses
            assert status in (400, 401), (target, answer.data)
            assert b"secret" not in answer.data
        # With the token, the ordinary path works (and so does absolute-form).
        for target in (b"/_status", b"http://x/_status"):
            (status,) = (await send_raw(server.url, get(target, AUTH, method))).statuses
            assert status == 200, target


async def test_status_is_unreachable_over_http2_prior_knowledge(server: RunningServer) -> None:
    if server.state.settings.fast_path:
        # trickle-trio's own server speaks HTTP/1.1 only (as the reference does without
        # TLS): the HTTP/2 preface gets the reference's 400 and a close.
        with trio.fail_after(LIMIT):
            answer = await send_raw(server.url, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert answer.statuses == [400]
        return
    with trio.fail_after(LIMIT):
        for path in (b"_status", b"http://x/_status", b"//_status", b"/%2F_status", b"*"):
            status, body = await h2_request(server.url, "GET", path)
            assert status in (400, 401), (path, status, body)
        status, _ = await h2_request(server.url, "GET", b"/_status")
        assert status == 401
        bearer = [(b"authorization", f"Bearer {PUB}".encode())]
        status, body = await h2_request(server.url, "GET", b"/_status", bearer)
        assert (status, body[:1]) == (200, b"{")


async def test_absolute_form_routes_as_origin_form(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        body = b"absolute"
        post = (
            b"POST http://x/cam/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + AUTH
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        assert (await send_raw(server.url, post)).statuses == [200]
        for target in (b"/cam/0", b"http://x/cam/0", b"https://other/cam/0"):
            answer = await send_raw(server.url, get(target, AUTH))
            assert answer.statuses == [200], target
            assert answer.data.endswith(b"absolute") or b"\r\n8\r\nabsolute\r\n" in answer.data
        (status,) = (await send_raw(server.url, get(b"http://x/cam/next", AUTH))).statuses
        assert status == 200


# -- item 9: the changefeed is the server's own ------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        b"POST /_changes/-1",
        b"POST /_changes/5",
        b"POST /_changes",
        b"DELETE /_changes",
        b"DELETE /_changes/0",
        b"POST http://x/_changes/-1",
        b"POST /%5Fchanges/-1",
    ],
)
async def test_the_changefeed_cannot_be_written_even_with_the_publish_token(
    server: RunningServer, request_line: bytes
) -> None:
    with trio.fail_after(LIMIT):
        forged = b'{"added": ["forged-channel"]}'
        data = (
            request_line
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + AUTH
            + b"Content-Length: %d\r\n\r\n" % len(forged)
            + forged
        )
        answer = await send_raw(server.url, data)
        assert answer.statuses == [403]
        assert b"changefeed is written by the server only" in answer.data
        # The feed is still there and still announces new channels; nothing forged.
        create = b"POST /later HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH
        assert (await send_raw(server.url, create + b"Content-Length: 0\r\n\r\n")).statuses == [200]
        changefeed = server.registry.get("_changes")
        assert changefeed is not None
        events = b"".join(b"".join(segment.chunks) for segment in changefeed.window)
        assert b"later" in events
        assert b"forged" not in events


# -- item 4: Content-Length with Transfer-Encoding ----------------------------------------


@pytest.mark.parametrize("with_body", [True, False], ids=["body", "head only"])
async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    server: RunningServer, with_body: bool
) -> None:
    with trio.fail_after(LIMIT):
        smuggled = b"GET /_status HTTP/1.1\r\nHost: x\r\n\r\n"
        data = (
            b"POST /cam/0 HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"5\r\nhello\r\n0\r\n\r\n" + smuggled if with_body else b"")
        )
        answer = await send_raw(server.url, data)
        assert answer.closed
        assert answer.statuses == [400]
        assert b"Content-Length with Transfer-Encoding" in answer.data
        assert "cam" not in server.registry


# -- item 5: Connection: close and HTTP/1.0 are followed by a close ------------------------

CLOSING = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\n\r\n",
    b"GET /cam/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH + b"\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH + b"\r\n",
    b"GET /_status HTTP/1.0\r\n" + AUTH + b"\r\n",
]


@pytest.mark.parametrize("request_bytes", CLOSING, ids=lambda data: data.split(b"\r\n")[0].decode())
async def test_every_connection_that_asks_to_close_is_closed(
    server: RunningServer, request_bytes: bytes
) -> None:
    with trio.fail_after(LIMIT):
        await call(server.url, "POST", "/cam", b"")  # 401 without the token: no matter
        answers: list[bytes] = []

        async def one() -> None:
            # Read until the server closes: a connection left open fails the deadline.
            answers.append((await send_raw(server.url, request_bytes)).data)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
        assert len(answers) == 40
        assert all(answer.startswith(b"HTTP/1.1 ") for answer in answers)


async def test_keep_alive_timeout_applies_after_every_kind_of_request(
    server: RunningServer,
) -> None:
    """keep_alive_timeout is 1 s here: every idle connection is closed by the server,
    whichever layer answered its last request (the deadline is far longer)."""
    with trio.fail_after(LIMIT):
        targets = [b"/healthz", b"/metrics", b"/cam/next", b"/nowhere", b"//bad", b"/_status"]

        async def one(target: bytes) -> None:
            data = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
            answer = await send_raw(server.url, data)
            assert answer.closed
            assert len(answer.statuses) == 1

        async with trio.open_nursery() as nursery:
            for target in targets * 5:
                nursery.start_soon(one, target)


# -- item 6: max_header_bytes holds however the head arrives ------------------------------


@pytest.mark.parametrize("size", [20_000, 30_000, 60_000])
async def test_a_head_over_the_limit_in_one_write_is_refused(
    server: RunningServer, size: int
) -> None:
    with trio.fail_after(LIMIT):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
        answer = await send_raw(server.url, head)
        assert answer.closed
        assert answer.statuses == [431]
        many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * (size // 8) + b"\r\n"
        assert (await send_raw(server.url, many)).statuses == [431]


async def test_a_head_just_under_the_limit_is_served(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
        filler = 16 * 1024 - len(start) - len(b"\r\n\r\n") - 64
        answer = await send_raw(server.url, start + b"a" * filler + b"\r\n\r\n")
        assert answer.statuses == [200]
