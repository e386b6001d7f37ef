"""Differential tests: the same requests, over real sockets, to go-livepeer's own trickle
server (the reference) and to ``trickle-trio serve``, each in its own process.

Each scenario runs against both servers and returns what a client saw (status, the
trickle headers, bodies); the two must agree. Where they differ on purpose (PROTOCOL.md,
"Deliberate improvements"), the test says so by name and checks each side on its own.
The DELETE scenarios are those of issue 13: the close sequences in both orders with a
looping subscriber, a DELETE with a stalled reader, a DELETE with a reader mid-segment,
and requests that arrive just after a DELETE.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from .reference import TRICKLE_HEADERS, Served, servers
from .sockets import Conn, Reply, call, connect, until

__all__ = ["servers"]  # the fixture, re-exported for pytest

#: Per scenario, per server. Generous: a DELETE that waited for a slow reader would
#: wait trickle-trio's teardown grace (600 s in these tests) and fail here.
DEADLINE = 30
ROUNDS = 25
BIG = 16 * 1024 * 1024

_names = itertools.count()


def channel_name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def view(reply: Reply) -> tuple[int, dict[str, str], bytes]:
    """What is compared of an answer: status, trickle headers, body."""
    headers = {name: reply.headers[name] for name in TRICKLE_HEADERS if name in reply.headers}
    return (reply.status, headers, reply.body)


Scenario = Callable[[str, str], Awaitable[Any]]


async def run_both(servers: dict[str, Served], scenario: Scenario) -> dict[str, Any]:
    """Run ``scenario(url, channel)`` on each server, with the same channel name."""
    ch = channel_name(scenario.__name__)
    seen: dict[str, Any] = {}
    for name, served in servers.items():
        with trio.fail_after(DEADLINE):
            seen[name] = await scenario(served.url, ch)
    return seen


async def open_post(url: str, path: str, headers: list[tuple[str, str]] | None = None) -> Conn:
    conn = await connect(url)
    await conn.start("POST", path, headers)
    return conn


async def attach_reader(url: str, path: str, take: int = 1) -> tuple[Conn, Reply, bytes]:
    """A GET that reads its head and at least ``take`` bytes, then stops reading."""
    conn = await connect(url)
    await conn.start("GET", path)
    reply = await conn.head()
    got = b""
    while len(got) < take:
        chunk = await conn.chunk()
        assert chunk is not None
        got += chunk
    return conn, reply, got


async def read_rest(conn: Conn) -> tuple[bytes, bool]:
    """The rest of a response body and whether it ended cleanly (terminating chunk)."""
    got = b""
    try:
        while (chunk := await conn.chunk()) is not None:
            got += chunk
    except Exception:
        return got, False
    finally:
        await conn.aclose()
    return got, True


# -- everyday exchanges ----------------------------------------------------------------------


async def everyday(url: str, ch: str) -> list[Any]:
    seen: list[Any] = []
    seen.append(view(await call(url, "POST", f"/{ch}", headers=[("Expect-Content", "video/mp2t")])))
    seen.append(view(await call(url, "GET", f"/{ch}/next")))
    seen.append(view(await call(url, "POST", f"/{ch}/0", b"zero")))
    seen.append(view(await call(url, "GET", f"/{ch}/0")))
    seen.append(view(await call(url, "GET", f"/{ch}/-2")))
    # A subscriber waiting for the next seq gets it as it is written.
    waiting = await connect(url)
    await waiting.start("GET", f"/{ch}/1")  # not -1: the POST may be handled first
    publisher = await open_post(url, f"/{ch}/1")
    await publisher.send(b"one, ")
    head = await waiting.head()
    assert await waiting.chunk() == b"one, "
    await publisher.send(b"streamed")
    await publisher.end()
    seen.append(view(await publisher.response()))
    got = view(await waiting.response())
    # Its Lp-Trickle-Latest says whether it arrived before the first byte (absent) or
    # after it (2): arrival order over two connections, not a server difference.
    assert got[1].pop("lp-trickle-latest", "2") == "2"
    seen.append((*got, head.status))
    await waiting.aclose()
    await publisher.aclose()
    for seq in range(2, 8):
        seen.append(view(await call(url, "POST", f"/{ch}/{seq}", b"s%d" % seq)))
    seen.append(view(await call(url, "GET", f"/{ch}/0")))  # out of the window: 470
    seen.append(view(await call(url, "GET", f"/{ch}/next")))
    seen.append(view(await call(url, "DELETE", f"/{ch}/7")))
    seen.append(view(await call(url, "DELETE", f"/{ch}/99")))
    seen.append(view(await call(url, "GET", f"/{ch}-missing/0")))
    seen.append(view(await call(url, "GET", f"/{ch}-missing/next")))
    seen.append(view(await call(url, "DELETE", f"/{ch}")))
    seen.append(view(await call(url, "DELETE", f"/{ch}")))
    return seen


async def test_everyday_exchanges_agree(servers: dict[str, Served]) -> None:
    seen = await run_both(servers, everyday)
    assert seen["trickle-trio"] == seen["reference"]


async def autocreated_mime_type(url: str, ch: str) -> list[Any]:
    created = view(
        await call(url, "POST", f"/{ch}/0", b"{}", [("Content-Type", "application/json")])
    )
    got = view(await call(url, "GET", f"/{ch}/0"))
    await call(url, "DELETE", f"/{ch}")
    return [created, got]


async def test_an_autocreated_channel_takes_the_posts_content_type(
    servers: dict[str, Served],
) -> None:
    seen = await run_both(servers, autocreated_mime_type)
    assert seen["trickle-trio"] == seen["reference"]
    assert seen["reference"][1][1]["content-type"] == "application/json"


async def changefeed(url: str, ch: str) -> list[Any]:
    first = int((await call(url, "GET", "/_changes/next")).body)
    await call(url, "POST", f"/{ch}")
    await call(url, "DELETE", f"/{ch}")
    return [json.loads((await call(url, "GET", f"/_changes/{first + i}")).body) for i in (0, 1)]


async def test_the_changefeed_records_one_addition_and_one_removal(
    servers: dict[str, Served],
) -> None:
    seen = await run_both(servers, changefeed)
    assert seen["trickle-trio"] == seen["reference"]
    assert [sorted(event) for event in seen["reference"]] == [["added"], ["removed"]]


# -- closing: the looping subscribers ---------------------------------------------------------


async def loop_minus_one(url: str, ch: str, out: list[tuple[int, str, str]]) -> None:
    """GET -1 with no pause until 404, ignoring Lp-Trickle-Closed (the worst client)."""
    for _ in range(50):
        reply = await call(url, "GET", f"/{ch}/-1")
        out.append(
            (
                reply.status,
                reply.headers.get("lp-trickle-seq", ""),
                reply.headers.get("lp-trickle-closed", ""),
            )
        )
        if reply.status == 404:
            return


async def count_own_seqs(url: str, ch: str, start: int, out: list[tuple[int, str, str]]) -> None:
    """GET seq, seq+1, ... with no pause until 404, ignoring Lp-Trickle-Closed."""
    for seq in range(start, start + 50):
        reply = await call(url, "GET", f"/{ch}/{seq}")
        out.append(
            (
                reply.status,
                reply.headers.get("lp-trickle-seq", str(seq)),
                reply.headers.get("lp-trickle-closed", ""),
            )
        )
        if reply.status == 404:
            return


def check_ends_cleanly(seen: list[tuple[int, str, str]], server: str) -> None:
    """Strictly increasing seqs, then 404; nothing but the 404 after a Closed answer."""
    if server == "trickle-trio":
        assert all(int(seq or 0) >= 0 for _, seq, _ in seen), (server, seen)
    assert seen[-1][0] == 404, (server, seen)
    answered = seen[:-1]
    if answered and answered[-1][2] and int(answered[-1][1] or 0) < 0:
        # The reference, in the microseconds between closing a channel and forgetting
        # it, answers a GET -1 with Lp-Trickle-Closed and the seq as asked (-1).
        answered = answered[:-1] + [(200, str(10**9), "terminated")]
    seqs = [int(seq) for _, seq, _ in answered]
    assert seqs == sorted(set(seqs)), (server, seen)
    assert all(status == 200 for status, _, _ in answered), (server, seen)
    closed = [i for i, (_, _, flag) in enumerate(answered) if flag]
    assert closed in ([], [len(answered) - 1]), (server, seen)


async def close_round(url: str, *, delete_first: bool) -> dict[str, Any]:
    """seq 0 written with seq 1 preconnected and two looping subscribers; then the
    publisher closes in either order."""
    ch = channel_name("close")
    await call(url, "POST", f"/{ch}/0", b"last frame")
    preconnect = await open_post(url, f"/{ch}/1")
    minus_one: list[tuple[int, str, str]] = []
    own: list[tuple[int, str, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop_minus_one, url, ch, minus_one)
        nursery.start_soon(count_own_seqs, url, ch, 0, own)
        # The seq-counting looper has had seq 0: both now wait on seq 1 (or are about to).
        await until(lambda: len(own) >= 1)
        if delete_first:
            deleted = await call(url, "DELETE", f"/{ch}")
            await preconnect.end()
        else:
            await preconnect.end()
            deleted = await call(url, "DELETE", f"/{ch}")
        released = await preconnect.response()
        await preconnect.aclose()
    return {
        "delete": deleted.status,
        "released": (released.status, released.headers.get("lp-trickle-seq")),
        "minus_one": minus_one,
        "own": own,
    }


@pytest.mark.parametrize("delete_first", [True, False], ids=["delete-first", "release-first"])
async def test_looping_subscribers_see_increasing_seqs_then_404(
    servers: dict[str, Served], delete_first: bool
) -> None:
    for name, served in servers.items():
        for _ in range(ROUNDS):
            with trio.fail_after(DEADLINE):
                seen = await close_round(served.url, delete_first=delete_first)
            assert seen["delete"] == 200, (name, seen)
            assert seen["released"] == (200, "1"), (name, seen)
            check_ends_cleanly(seen["minus_one"], name)
            check_ends_cleanly(seen["own"], name)
            if delete_first:
                # The DELETE came first: nothing may follow the -1 looper's wait but 404.
                assert seen["minus_one"][0][1:] in (("1", "terminated"), ("", "")), (name, seen)


# -- DELETE with readers -----------------------------------------------------------------------


async def stalled_reader(url: str, ch: str) -> dict[str, Any]:
    """16 MiB published and acknowledged, one reader that stopped reading; DELETE."""
    data = bytes(range(256)) * (BIG // 256)
    published = await call(url, "POST", f"/{ch}/0", data)
    reader, head, got = await attach_reader(url, f"/{ch}/0", take=1)
    deleted = await call(url, "DELETE", f"/{ch}")  # fails the deadline if it waits
    gone = await call(url, "GET", f"/{ch}/0")
    rest, clean = await read_rest(reader)
    return {
        "published": view(published)[:2],
        "head": view(head)[:2],
        "delete": view(deleted),
        "after": view(gone),
        "whole": got + rest == data,
        "clean": clean,
    }


async def test_delete_with_a_stalled_reader_answers_at_once_and_the_reader_gets_it_all(
    servers: dict[str, Served],
) -> None:
    seen = await run_both(servers, stalled_reader)
    assert seen["trickle-trio"] == seen["reference"]
    assert seen["reference"]["whole"]
    assert seen["reference"]["clean"]
    assert seen["reference"]["after"][0] == 404


async def mid_segment_reader(url: str, ch: str) -> dict[str, Any]:
    """A reader of a segment still being written when the channel is deleted."""
    await call(url, "POST", f"/{ch}")  # created first: the GET below may arrive first
    publisher = await open_post(url, f"/{ch}/0")
    await publisher.send(b"first, ")
    # The reader comes after the first byte (its Lp-Trickle-Latest depends on that).
    while (await call(url, "GET", f"/{ch}/next")).body != b"1":
        pass
    reader, head, got = await attach_reader(url, f"/{ch}/0", take=len(b"first, "))
    await publisher.send(b"second")
    while len(got) < len(b"first, second"):
        chunk = await reader.chunk()
        assert chunk is not None
        got += chunk
    deleted = await call(url, "DELETE", f"/{ch}")
    rest, clean = await read_rest(reader)
    try:
        await publisher.end()
        answer = await publisher.response()
        publisher_view: Any = (answer.status, answer.headers.get("lp-trickle-seq"))
    except Exception as exc:  # ours may have closed the publisher's connection already
        publisher_view = type(exc).__name__
    await publisher.aclose()
    return {
        "head": view(head)[:2],
        "delete": view(deleted),
        "body": got + rest,
        "clean": clean,
        "publisher": publisher_view,
    }


async def test_delete_with_a_reader_mid_segment_ends_it_cleanly_with_what_was_written(
    servers: dict[str, Served],
) -> None:
    seen = await run_both(servers, mid_segment_reader)
    for name in servers:
        assert seen[name]["body"] == b"first, second", name
        assert seen[name]["clean"], name
    ours, reference = dict(seen["trickle-trio"]), dict(seen["reference"])
    # Deliberate difference ("a closed segment never changes again"): the reference
    # keeps reading the publisher's body into the closed segment and answers it when
    # it ends; ours stops reading at the DELETE and answers at once, 200 with
    # Lp-Trickle-Closed and Connection: close.
    assert reference.pop("publisher") == (200, "0")
    assert ours.pop("publisher") in ((200, "0"), "RemoteProtocolError", "BrokenResourceError")
    assert ours == reference


async def late_requests(url: str, ch: str) -> list[Any]:
    """Requests that arrive right after a DELETE, a slow reader still attached."""
    await call(url, "POST", f"/{ch}/0", b"x" * (4 * 1024 * 1024))
    await call(url, "POST", f"/{ch}/1", b"old one")
    reader, _, _ = await attach_reader(url, f"/{ch}/0")
    seen = [view(await call(url, "DELETE", f"/{ch}"))]
    for method, path in [
        ("GET", f"/{ch}/0"),
        ("GET", f"/{ch}/-1"),
        ("GET", f"/{ch}/-2"),
        ("GET", f"/{ch}/next"),
        ("DELETE", f"/{ch}/1"),
        ("DELETE", f"/{ch}"),
    ]:
        seen.append(view(await call(url, method, path)))
    # A publisher restarting at once: a brand-new channel, from seq 0.
    seen.append(view(await call(url, "POST", f"/{ch}/-1", b"new")))
    seen.append(view(await call(url, "GET", f"/{ch}/0")))
    seen.append(view(await call(url, "GET", f"/{ch}/next")))
    await call(url, "DELETE", f"/{ch}")
    await read_rest(reader)
    return seen


async def test_requests_after_a_delete_see_no_trace_of_the_old_channel(
    servers: dict[str, Served],
) -> None:
    seen = await run_both(servers, late_requests)
    assert seen["trickle-trio"] == seen["reference"]
    assert [status for status, _, _ in seen["reference"][1:5]] == [404] * 4
