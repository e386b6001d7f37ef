"""Hostile clients over real loopback sockets, measured (see tests/hostile.py).

Slow clients, parsing abuse, protocol abuse, auth under attack and churn, each with a
witness channel beside it, on the fast path and on stock hypercorn. Small sizes in CI;
``TRICKLE_HOSTILE=large`` for the large ones. The figures are printed at the end of the
session (and summarised in the README's operations section).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.server import RunningServer, open_server

from .hostile import (
    Tally,
    abort,
    open_raw,
    read_until_closed,
    run_attack,
    size,
    statuses_in,
)
from .sockets import call, connect, send_raw

KEEP_ALIVE = 1.0  # the header and idle timeout of these servers, in seconds
SEGMENT_LIMIT = 256 * 1024
PUB = "publish-token-0123456789"
SUB = "subscribe-token-0123456789"


def hostile_settings(fast_path: bool, **more: object) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        autocreate=True,
        keep_alive_timeout=KEEP_ALIVE,
        max_segment_bytes=SEGMENT_LIMIT,
        max_channels=size(250, 2500),
        fast_path=fast_path,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture(params=[True, False], ids=["fast", "stock"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    async with open_server(hostile_settings(request.param)) as running:
        yield running


def label(server: RunningServer, name: str) -> str:
    return f"{name} ({'fast' if server.state.settings.fast_path else 'stock'})"


async def legit(server: RunningServer, tally: Tally, count: int) -> int:
    """``count`` ordinary requests, one after the other; how many got their answer."""
    ok = 0
    for _ in range(count):
        reply = await call(server.url, "GET", "/healthz")
        tally.saw(reply.status)
        ok += reply.status == 200
    return ok


# -- slow clients ----------------------------------------------------------------------------


async def test_slowloris_heads_are_cut_and_others_are_served(server: RunningServer) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        count = size(100, 1000)
        cut = 0

        async def dribble() -> None:
            nonlocal cut
            stream = await open_raw(server)
            try:
                head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
                with trio.move_on_after(KEEP_ALIVE * 10):
                    for byte in head:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.05)
                data, closed = await read_until_closed(stream, KEEP_ALIVE * 5)
                assert not data  # cut before any answer
                cut += closed
            except trio.BrokenResourceError:
                cut += 1
            finally:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(dribble)
            tally.held = count
            tally.figures["legit_ok"] = await legit(server, tally, 20)
        tally.figures["cut"] = cut
        assert cut == count
        assert tally.figures["legit_ok"] == 20

    await run_attack(label(server, "slowloris headers"), server, attack)


async def test_idle_connections_are_held_and_legit_requests_served(
    server: RunningServer,
) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        count = size(300, 3000)
        streams = [await open_raw(server) for _ in range(count)]
        tally.held = count
        tally.figures["legit_ok"] = await legit(server, tally, 20)
        assert tally.figures["legit_ok"] == 20
        # Idle before a first request: closed by the server at the keep-alive timeout.
        closed = 0
        for stream in streams:
            _, was_closed = await read_until_closed(stream, KEEP_ALIVE * 10)
            closed += was_closed
            await stream.aclose()
        tally.figures["closed_by_server"] = closed
        assert closed == count

    await run_attack(label(server, "idle connections"), server, attack)


async def test_idle_preconnects_and_parked_gets_are_never_cut_and_all_go(
    server: RunningServer,
) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        count = size(100, 1000)
        conns = []
        for index in range(count):
            publisher = await connect(server.url)
            await publisher.start("POST", f"/p{index}/0")
            conns.append(publisher)
        for index in range(count):
            await call(server.url, "GET", f"/p{index}/next")
            subscriber = await connect(server.url)
            await subscriber.start("GET", f"/p{index}/0")
            await subscriber.end()
            conns.append(subscriber)
        tally.held = len(conns)
        with trio.fail_after(KEEP_ALIVE * 20):
            await trio.sleep(KEEP_ALIVE * 3)  # well past the keep-alive timeout
        # The attack's own channels (the witness publishes beside them, its own
        # preconnect attached or not at any moment).
        attacked = [server.registry.get(f"p{index}") for index in range(count)]
        assert all(channel is not None for channel in attacked)
        publishers = sum(len(channel.publishers) for channel in attacked if channel)
        subscribers = sum(len(channel.subscribers) for channel in attacked if channel)
        assert publishers == count  # none was cut
        assert subscribers == count
        tally.figures["legit_ok"] = await legit(server, tally, 20)
        for conn in conns:
            await conn.aclose()

    await run_attack(label(server, "idle preconnects + parked GETs"), server, attack)


async def test_a_subscriber_that_never_reads_stalls_nobody(server: RunningServer) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        stuck_count = size(5, 30)
        segments = 6
        data = [bytes([65 + seq]) * SEGMENT_LIMIT for seq in range(segments)]
        stuck = []
        publisher = await connect(server.url)
        await publisher.start("POST", "/slow/0")
        await publisher.send(data[0][:1000])
        for _ in range(stuck_count):
            stream = await open_raw(server)
            await stream.send_all(b"GET /slow/0 HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(stream)  # never read
        tally.held = stuck_count
        got: list[bytes] = []

        async def reader() -> None:
            for seq in range(segments):
                reply = await call(server.url, "GET", f"/slow/{seq}")
                tally.saw(reply.status)
                got.append(reply.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await publisher.send(data[0][1000:])
            await publisher.end()
            tally.saw((await publisher.response()).status)
            await publisher.aclose()
            for seq in range(1, segments):
                reply = await call(server.url, "POST", f"/slow/{seq}", data[seq])
                tally.saw(reply.status)
        assert got == data
        tally.figures["retained_mib"] = round(server.registry.gauges()["retained_bytes"] / 2**20, 1)
        for stream in stuck:
            await stream.aclose()

    await run_attack(label(server, "non-reading subscribers"), server, attack)


# -- parsing abuse ---------------------------------------------------------------------------

H = b"Host: x\r\n"
ABUSE = [
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\nGET /a/0 HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Content-Length: 1e3\r\n\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    b"POST /a/0 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
    b"POST /a/1 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n"
    b"0\r\nX-Trailer: y\r\n\r\n",
    b"POST /a/2 HTTP/1.1\r\n"
    + H
    + b"Content-Length: 3\r\n\r\nabcGET /a/2 HTTP/1.1\r\n"
    + H
    + b"\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET http://x/a/next HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a/next HTTP/1.1\r\n" + H + b"X-Long: " + b"b" * 15000 + b"\r\n\r\n",
    b"GET /a/next HTTP/1.1\r\n" + H + b"X-Many: c\r\n" * 3000 + b"\r\n",
    b"GET /a/next HTTP/1.1\r\n" + H + b"X-Huge: " + b"d" * 70000 + b"\r\n\r\n",
    b"GET /a\x00b/0 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a%00b/0 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a%0d%0aX:y/0 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a\rb/0 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a/..%2f_status HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a/%2e%2e/%2e%2e/_status HTTP/1.1\r\n" + H + b"\r\n",
    b"GET //_status HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /a/3 HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /a/4 HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"GET /a/next HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"GET /a HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /a/next HTTP/9.9\r\n" + H + b"\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 30,
]


async def test_parsing_abuse_never_5xx_hangs_or_leaks(server: RunningServer) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        rounds = size(2, 30)
        seen: dict[int, list[int]] = {}

        async def one(index: int, data: bytes) -> None:
            stream = await open_raw(server)
            try:
                await stream.send_all(data)
                received, _ = await read_until_closed(stream, KEEP_ALIVE * 3)
            except trio.BrokenResourceError:
                received = b""
            finally:
                await stream.aclose()
            found = statuses_in(received)
            seen[index] = found
            for status in found:
                tally.saw(status)
            if not found:
                tally.saw(0)  # closed without an answer

        for _ in range(rounds):
            async with trio.open_nursery() as nursery:
                for index, data in enumerate(ABUSE):
                    nursery.start_soon(one, index, data)
            tally.held = max(tally.held, len(ABUSE))
        assert seen[0] == [400]  # Content-Length with Transfer-Encoding
        assert seen[5] == [501]  # the only 5xx: an unsupported transfer coding
        assert 200 not in seen[22]
        assert 200 not in seen[23]
        assert 200 not in seen[24]
        tally.figures["distinct_requests"] = len(ABUSE)

    # 501 is HTTP/1.1's answer to a transfer coding the server does not implement
    # (RFC 9112 §6.1; the reference answers the same): h11 and llhttp refuse "gzip,
    # chunked". 505 is the answer to HTTP/9.9 (the reference's; h11 answers it 200).
    await run_attack(
        label(server, "parsing abuse"), server, attack, allowed_5xx=frozenset({501, 505})
    )


# -- protocol abuse --------------------------------------------------------------------------


async def test_protocol_abuse_never_5xx_hangs_or_leaks(server: RunningServer) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        async def post(path: str, body: bytes = b"", headers: bytes = b"") -> None:
            data = (
                b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n"
                % (path.encode(), headers, len(body))
                + body
            )
            for status in (await send_raw(server.url, data)).statuses:
                tally.saw(status)

        # Far-ahead preconnect flood: seq 0 stays readable, every task goes.
        await post("/flood/0", b"kept")
        flood = []
        for seq in range(size(200, 2000)):
            conn = await connect(server.url)
            await conn.start("POST", f"/flood/{100 + seq}")
            flood.append(conn)
        tally.held = len(flood)
        reply = await call(server.url, "GET", "/flood/0")
        assert (reply.status, reply.body) == (200, b"kept")
        tally.figures["flood_attached"] = server.registry.gauges()["publishers_attached"]
        for conn in flood:
            await conn.aclose()
        # Channels past the limit.
        for index in range(server.state.settings.max_channels + 5 - 2):
            await post(f"/many{index}")
        assert tally.statuses[429] >= 5
        for name in [c.name for c in server.registry.channels() if c.name.startswith("many")]:
            await server.registry.delete(name)

        # DELETE / re-create storm across connections.
        async def storm(worker: int) -> None:
            for round_ in range(size(10, 100)):
                await post("/storm")
                await post("/storm/-1", b"s%d.%d" % (worker, round_))
                data = b"DELETE /storm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                for status in (await send_raw(server.url, data)).statuses:
                    tally.saw(status)
                reply = await call(server.url, "GET", "/storm/0")
                tally.saw(reply.status)

        async with trio.open_nursery() as nursery:
            for worker in range(8):
                nursery.start_soon(storm, worker)

        # Publishers that reset mid-chunk; subscribers get the bytes and a clean end.
        for seq in range(size(10, 100)):
            stream = await open_raw(server)
            await stream.send_all(
                b"POST /reset/%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4\r\nwhol\r\n100\r\nhalf" % seq
            )
            reader = await connect(server.url)
            await reader.start("GET", f"/reset/{seq}")
            await reader.end()
            assert (await reader.head()).status == 200
            abort(stream)
            await stream.aclose()
            reply = await reader.response()
            tally.saw(reply.status)
            assert reply.body.startswith(b"whol")
            await reader.aclose()
        # Reset-header storm.
        for seq in range(size(30, 300)):
            await post(f"/rh/{seq}", b"r", b"Lp-Trickle-Reset: 1\r\n")
        # Segments at and past the size limit.
        await post("/big/0", b"x" * SEGMENT_LIMIT)
        await post("/big/1", b"x" * (SEGMENT_LIMIT + 1))
        assert tally.statuses[413] >= 1
        # Subscribers joining and leaving in a tight loop.
        for _ in range(size(100, 1000)):
            stream = await open_raw(server)
            await stream.send_all(b"GET /big/-1 HTTP/1.1\r\nHost: x\r\n\r\n")
            abort(stream)
            await stream.aclose()
        # Reserved names as channel names.
        for name in ("healthz", "readyz", "metrics", "_status"):
            await post(f"/{name}/0", b"x")
        reply = await call(server.url, "GET", "/big/0")
        assert (reply.status, len(reply.body)) == (200, SEGMENT_LIMIT)

    await run_attack(label(server, "protocol abuse"), server, attack)


# -- churn -----------------------------------------------------------------------------------


async def test_churn_of_short_lived_channels_with_aborting_clients(server: RunningServer) -> None:
    async def attack(server: RunningServer, tally: Tally) -> None:
        deadline = trio.current_time() + size(3, 120)
        names = itertools.count()
        peaks = {"tasks": 0, "fds": 0}

        async def worker() -> None:
            while trio.current_time() < deadline:
                name = f"churn{next(names)}"
                publisher = await open_raw(server)
                await publisher.send_all(
                    b"POST /%s/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n" % name.encode()
                )
                reader = await open_raw(server)
                await reader.send_all(b"GET /%s/0 HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode())
                with trio.move_on_after(1):
                    await reader.receive_some(100)
                abort(reader)
                await reader.aclose()
                abort(publisher)
                await publisher.aclose()
                reply = await call(server.url, "DELETE", f"/{name}")
                tally.saw(reply.status)
                tally.requests += 2

        async def sampler() -> None:
            from .hostile import Sample

            while True:
                now = Sample.now()
                peaks["tasks"] = max(peaks["tasks"], now.tasks)
                peaks["fds"] = max(peaks["fds"], now.fds)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            async with trio.open_nursery() as workers:
                for _ in range(8):
                    workers.start_soon(worker)
            nursery.cancel_scope.cancel()
        tally.held = 16
        tally.figures.update(peak_tasks=peaks["tasks"], peak_fds=peaks["fds"])

    await run_attack(label(server, "churn"), server, attack)


# -- auth under attack -----------------------------------------------------------------------


async def test_no_route_around_a_token_and_no_token_leaks() -> None:
    settings = hostile_settings(True, publish_token=PUB, subscribe_token=SUB, access_log="-")
    async with open_server(settings) as server:

        async def attack(server: RunningServer, tally: Tally) -> None:
            tricks = [
                b"//_status",
                b"/%2F_status",
                b"http://x/_status",
                b"/a/..%2f_status",
                b"/./_status",
                b"/_status/",
                b"/%5Fstatus",
                b"https://e/_status",
            ]
            for target in tricks * size(2, 20):
                for method in (b"GET", b"HEAD"):
                    data = (
                        method
                        + b" "
                        + target
                        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    answer = await send_raw(server.url, data)
                    for status in answer.statuses:
                        tally.saw(status)
                    assert 200 not in answer.statuses, target
            auth = b"Authorization: Bearer %s\r\n" % PUB.encode()
            for path in (b"/_status", b"/metrics"):
                data = (
                    b"GET "
                    + path
                    + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    + auth
                    + b"\r\n"
                )
                answer = await send_raw(server.url, data)
                assert answer.statuses == [200]
                assert PUB.encode() not in answer.data
                assert SUB.encode() not in answer.data

        await run_attack("auth path tricks (fast)", server, attack, token=PUB, secrets=(PUB, SUB))
