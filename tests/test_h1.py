"""trickle-trio's own HTTP/1.1 server (trickle_trio/h1), over real sockets.

What it promises: a response's head, last bytes and end leave in one write; payloads
are written with ``os.writev`` (never joined), whole even when the socket takes only
part of them; a segment POST's body goes straight into the segment from the reactor
(no message, no wake-up of the connection's task per chunk); a live subscriber is
written from the publisher's task; HTTP/1.1 framing, keep-alive, pipelining, HTTP/1.0,
``Expect: 100-continue`` and shutdown behave as clients expect; and what must be cut is
reset, never ended cleanly. Writes are counted by wrapping ``os.writev``. Each test is
bounded by fail_after.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import types
import weakref
from collections.abc import Sequence
from typing import Any

import h11
import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.core.segment import SegmentState
from trickle_trio.h1 import connection as h1_connection
from trickle_trio.h1 import heads as h1_heads
from trickle_trio.h1 import output as h1_output
from trickle_trio.h1.connection import Connection
from trickle_trio.h1.output import Output
from trickle_trio.h1.parser import RequestHead
from trickle_trio.h1.reactor import current_reactor
from trickle_trio.http import subscribe as streams
from trickle_trio.segment import Segment
from trickle_trio.server import RunningServer, open_server

from .sockets import call, connect, until

pytestmark = pytest.mark.fast_path

LIMIT = 10


@dataclasses.dataclass
class Writes:
    """Every ``os.writev`` the server made: sizes offered and bytes taken."""

    offered: list[int] = dataclasses.field(default_factory=list)
    taken: list[int] = dataclasses.field(default_factory=list)

    def reset(self) -> None:
        self.offered.clear()
        self.taken.clear()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    record = Writes()
    real = os.writev

    def counting(fd: int, buffers: Sequence[Any]) -> int:
        record.offered.append(sum(len(buffer) for buffer in buffers))
        taken = real(fd, buffers)
        record.taken.append(taken)
        return taken

    monkeypatch.setattr(os, "writev", counting)
    return record


def _stored(server: RunningServer, name: str, seq: int) -> int:
    channel = server.registry.get(name)
    segment = channel.segment_in_window(seq) if channel is not None else None
    return segment.size if segment is not None else -1


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


async def _raw_exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    conn = await connect(url)
    await conn.stream.send_all(request)
    data = b""
    while chunk := await conn.stream.receive_some(65536):
        data += chunk
    await conn.aclose()
    return data


# -- writes ----------------------------------------------------------------------------------


async def test_a_complete_segment_is_answered_in_one_write(
    trickle_server: RunningServer, writes: Writes
) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"whole segment")
        writes.reset()
        reply = await call(trickle_server.url, "GET", "/cam/0")
        assert reply.status == 200
        assert reply.headers["transfer-encoding"] == "chunked"
        assert reply.body == b"whole segment"
        assert len(writes.taken) == 1  # head + chunk + last chunk
        assert writes.taken == writes.offered


async def test_an_error_answer_is_one_write(trickle_server: RunningServer, writes: Writes) -> None:
    with trio.fail_after(LIMIT):
        reply = await call(trickle_server.url, "GET", "/nobody/0")
        assert reply.status == 404
        assert reply.body == b"Stream not found\n"
        assert len(writes.taken) == 1  # head + body


async def test_a_live_segment_streams_head_with_first_bytes(
    trickle_server: RunningServer, writes: Writes
) -> None:
    with trio.fail_after(LIMIT):
        publisher = await connect(trickle_server.url)
        await publisher.start("POST", "/cam/0")
        await publisher.send(b"one")
        await until(lambda: _stored(trickle_server, "cam", 0) == 3)
        writes.reset()
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        assert (await subscriber.head()).status == 200
        assert await subscriber.chunk() == b"one"
        assert len(writes.taken) == 1  # the head and the first chunk went out together
        await publisher.send(b"two")
        assert await subscriber.chunk() == b"two"
        await publisher.end()
        assert await subscriber.chunk() is None
        assert (await publisher.response()).status == 200
        await publisher.aclose()
        await subscriber.aclose()


@pytest.mark.parametrize("fast_path", [True, False])
async def test_an_http_1_0_subscriber_gets_the_bytes_unframed_then_the_close(
    fast_path: bool,
) -> None:
    # No chunked coding in HTTP/1.0: the body is the bytes themselves, ended by the
    # server closing the connection.
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, fast_path=fast_path)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            publisher = await connect(server.url)
            await publisher.start("POST", "/cam/0")
            await publisher.send(b"one;")
            await until(lambda: _stored(server, "cam", 0) == 4)
            subscriber = await connect(server.url)
            await subscriber.stream.send_all(b"GET /cam/0 HTTP/1.0\r\n\r\n")
            received = b""
            while not received.endswith(b"one;"):
                received += await subscriber.stream.receive_some(65536)
            for piece in (b"two;", b"three;"):
                await publisher.send(piece)
                while not received.endswith(piece):
                    received += await subscriber.stream.receive_some(65536)
            await publisher.end()
            while data := await subscriber.stream.receive_some(65536):
                received += data
            assert (await publisher.response()).status == 200
            await publisher.aclose()
            await subscriber.aclose()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
    assert b"transfer-encoding" not in head.lower()
    assert body == b"one;two;three;"


async def test_a_segment_larger_than_the_socket_buffers_arrives_whole(
    trickle_server: RunningServer, writes: Writes
) -> None:
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB
    with trio.fail_after(LIMIT * 3):
        await call(trickle_server.url, "POST", "/cam/0", payload)
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        # The server writes until the socket is full, then waits for us to read.
        await until(lambda: bool(writes.taken) and writes.taken[-1] < writes.offered[-1])
        reply = await subscriber.response()
        await subscriber.aclose()
    assert reply.body == payload
    assert len(writes.taken) > 1


async def test_pending_chunks_go_out_unjoined_even_past_one_writevs_buffer_limit(
    trickle_server: RunningServer, writes: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that finds many chunks waiting sends them as they are (PARTS_EXTENSION):
    # never joined, framed as one chunk, in as many writev calls as IOV_MAX needs.
    pieces = [b"%05d;" % n for n in range(3000)]
    with trio.fail_after(LIMIT):
        await _publish_in_one_burst(trickle_server.url, "/cam/0", pieces)
        assert _stored(trickle_server, "cam", 0) == len(b"".join(pieces))

        def no_join(self: object, index: int) -> bytes:
            raise AssertionError("joined")

        monkeypatch.setattr(SegmentState, "view_from", no_join)
        writes.reset()
        reply = await call(trickle_server.url, "GET", "/cam/0")
    assert reply.body == b"".join(pieces)
    assert len(writes.taken) >= 3  # 3000 chunks, at most 1024 buffers per writev
    assert sum(writes.taken) - len(reply.body) < 400  # the head and one chunk's framing
    assert h1_output.IOV_MAX == 1024


def test_the_date_header_is_built_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000.2]
    monkeypatch.setattr(h1_heads.time, "time", lambda: now[0])
    first = h1_heads.date_header()
    now[0] += 0.5
    assert h1_heads.date_header() is first  # same second: reused
    now[0] += 1.0
    later = h1_heads.date_header()
    assert (first, later) == (
        b"date: Fri, 15 Jan 2027 08:00:00 GMT\r\n",
        b"date: Fri, 15 Jan 2027 08:00:01 GMT\r\n",
    )


# -- bodies into segments -----------------------------------------------------------------


@dataclasses.dataclass
class Takeovers:
    """What each offer to take a body answered, and the reads done by the reactor and by
    connection tasks (TLS or no epoll)."""

    answers: list[bool] = dataclasses.field(default_factory=list)
    reactor_reads: int = 0
    waits: int = 0


@pytest.fixture
def takeovers(monkeypatch: pytest.MonkeyPatch) -> Takeovers:
    record = Takeovers()
    take = Connection._take_body
    readable = Connection._on_readable
    wait = Connection._wait

    def recording_take(self: Connection, sink: Any) -> bool:
        record.answers.append(take(self, sink))
        return record.answers[-1]

    def recording_readable(self: Connection) -> bool:
        record.reactor_reads += 1
        return readable(self)

    async def recording_wait(self: Connection) -> None:
        record.waits += 1
        await wait(self)

    monkeypatch.setattr(Connection, "_take_body", recording_take)
    monkeypatch.setattr(Connection, "_on_readable", recording_readable)
    monkeypatch.setattr(Connection, "_wait", recording_wait)
    return record


async def _taken_publisher(url: str, takeovers: Takeovers, path: str = "/cam/0") -> Any:
    """A chunked POST whose body now goes straight into its segment."""
    conn = await connect(url)
    await conn.start("POST", path)
    await conn.send(b"fir")  # the takeover is offered once a body comes in pieces
    await conn.send(b"st;")
    await until(lambda: True in takeovers.answers)
    return conn


async def _publish_in_one_burst(url: str, path: str, pieces: list[bytes]) -> None:
    """POST ``pieces`` as that many chunks, all in one send (one read for the server)."""
    conn = await connect(url)
    await conn.start("POST", path)
    await conn.stream.send_all(_chunked(pieces) + b"0\r\n\r\n")
    conn.h11.send(h11.Data(data=b"x"))  # keep the client's h11 state in step
    conn.h11.send(h11.EndOfMessage())
    assert (await conn.response()).status == 200
    await conn.aclose()


async def test_a_live_publisher_is_read_by_the_reactor_not_its_task(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    pieces = [b"%02d;" % n for n in range(20)]
    with trio.fail_after(LIMIT):
        conn = await _taken_publisher(trickle_server.url, takeovers)
        await until(lambda: _stored(trickle_server, "cam", 0) == 6)
        before = (takeovers.reactor_reads, takeovers.waits)
        sent = [b"first;"]
        for piece in pieces:  # paced: each one stored before the next is sent
            await conn.send(piece)
            sent.append(piece)
            await until(lambda: _stored(trickle_server, "cam", 0) == sum(map(len, sent)))
        assert takeovers.reactor_reads - before[0] >= len(pieces)
        assert takeovers.waits == before[1]  # the connection's task slept throughout
        await conn.end()
        assert (await conn.response()).status == 200
        conn.h11.start_next_cycle()
        del conn.reply
        await conn.start("GET", "/cam/0")  # and the connection carries on
        reply = await conn.response()
        await conn.aclose()
    assert reply.body == b"".join(sent)


async def test_a_body_sent_in_one_piece_is_not_taken_over(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"small event")
        reply = await call(trickle_server.url, "GET", "/cam/0")
    assert reply.body == b"small event"
    assert takeovers.answers == []


async def test_body_chunks_keep_their_order_in_a_burst(trickle_server: RunningServer) -> None:
    # Thousands of chunks in one read: most are parsed before the app takes the body.
    pieces = [b"%06d;" % n for n in range(3000)]
    with trio.fail_after(LIMIT):
        await _publish_in_one_burst(trickle_server.url, "/cam/0", pieces)
        reply = await call(trickle_server.url, "GET", "/cam/0")
    assert reply.body == b"".join(pieces)


async def test_a_body_is_not_taken_over_while_chunks_wait_for_the_app() -> None:
    # What keeps the order: chunks parsed before the offer go through receive() first.
    connection = object.__new__(Connection)
    request = h1_connection._Request(RequestHead("POST", b"/cam/0", "1.1", [], True, True, False))
    connection._current = connection._parsing = request
    request.chunks.append(b"queued")
    sink: list[bytes] = []
    assert connection._take_body(sink.append) is False
    assert request.sink is None
    request.chunks.clear()
    assert connection._take_body(sink.append) is True
    assert request.sink == sink.append
    connection._parsing = None  # the body ended: nothing left to take
    request.sink = None
    assert connection._take_body(sink.append) is False


async def test_the_byte_limit_holds_when_the_body_goes_straight_in(
    takeovers: Takeovers,
) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, max_segment_bytes=1000)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            conn = await _taken_publisher(server.url, takeovers)
            # over the limit in one write, and the body never ends
            await conn.stream.send_all(_chunked([b"b" * 100] * 49))
            reply = await conn.head()
            assert reply.status == 413  # at once, not at the end of the body
            assert reply.headers["connection"] == "close"
            await conn.aclose()
            stored = await call(server.url, "GET", "/cam/0")
    assert stored.body == b"first;" + b"b" * 994


async def test_bad_framing_in_a_taken_body_is_a_400_and_keeps_the_bytes_before_it(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        conn = await _taken_publisher(trickle_server.url, takeovers)
        await conn.stream.send_all(b"5\r\nsecond\r\n")  # one byte too many
        reply = await conn.head()
        assert reply.status == 400
        assert await conn.stream.receive_some(100) == b""  # and the connection closed
        await conn.aclose()
        stored = await call(trickle_server.url, "GET", "/cam/0")
    assert stored.body == b"first;secon"


async def test_a_publisher_gone_mid_chunk_leaves_what_arrived(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        conn = await _taken_publisher(trickle_server.url, takeovers)
        await conn.stream.send_all(b"10\r\nhalf")  # 16 announced, 4 sent
        await until(lambda: _stored(trickle_server, "cam", 0) == 10)
        await conn.aclose()
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        reply = await subscriber.response()
        await subscriber.aclose()
    assert reply.body == b"first;half"


async def test_a_closed_connection_leaves_the_reactor(takeovers: Takeovers) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, max_segment_bytes=1000)
    reactor = current_reactor()
    assert reactor is not None
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            idle = len(reactor)
            conn = await _taken_publisher(server.url, takeovers)
            assert len(reactor) == idle + 1
            await conn.stream.send_all(_chunked([b"b" * 1000]))  # over the limit
            assert (await conn.head()).status == 413
            assert await conn.stream.receive_some(100) == b""
            await conn.aclose()
            await until(lambda: len(reactor) == idle)


async def test_shutdown_answers_a_publisher_mid_body() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, graceful_timeout=30)
    with trio.fail_after(LIMIT):  # well inside graceful_timeout: nothing was cut
        async with open_server(settings) as server:
            conn = await connect(server.url)
            await conn.start("POST", "/cam/0")
            await conn.send(b"part")
            await until(lambda: _stored(server, "cam", 0) == 4)
            await server.shutdown()
            reply = await conn.response()
            await conn.aclose()
    assert reply.status == 200
    assert reply.headers["lp-trickle-closed"] == "terminated"


async def test_a_finished_connection_is_freed_without_the_cycle_collector(
    trickle_server: RunningServer, monkeypatch: pytest.MonkeyPatch, takeovers: Takeovers
) -> None:
    # Connections (and what the app left in their scopes: a sink holds a segment) must
    # go by refcount: the shipped GC thresholds leave cycles uncollected for long.
    seen: list[weakref.ref[Connection]] = []
    real_init = Connection.__init__

    def recording(self: Connection, *args: Any) -> None:
        real_init(self, *args)
        seen.append(weakref.ref(self))

    monkeypatch.setattr(Connection, "__init__", recording)
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(LIMIT):
            publisher = await _taken_publisher(trickle_server.url, takeovers)
            await publisher.send(b"second")  # through the sink
            await publisher.end()
            assert (await publisher.response()).status == 200
            assert (await call(trickle_server.url, "GET", "/cam/0")).body == b"first;second"
            await publisher.aclose()
            await until(lambda: len(seen) == 2 and all(ref() is None for ref in seen))
    finally:
        gc.enable()


# -- connections -------------------------------------------------------------------------------


async def test_many_requests_share_one_keep_alive_connection(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(LIMIT):
        conn = await connect(trickle_server.url)
        for seq in range(5):
            await conn.start("POST", f"/cam/{seq}", [("Content-Length", "1")])
            await conn.send(str(seq).encode())
            await conn.end()
            reply = await conn.response()
            assert reply.status == 200
            assert reply.headers["lp-trickle-seq"] == str(seq)
            conn.h11.start_next_cycle()
            del conn.reply
        await conn.start("GET", "/cam/4")
        await conn.end()
        assert (await conn.response()).body == b"4"
        await conn.aclose()


async def test_one_connection_carries_every_kind_of_answer(
    trickle_server: RunningServer,
) -> None:
    # complete, empty, 470, 404, a publish answer and a Quart route, back to back
    asks = [
        ("GET", "/cam/0", 200, b"zero"),
        ("GET", "/cam/1", 200, b""),
        ("GET", "/cam/9", 470, b"Entry not found"),
        ("GET", "/nobody/0", 404, b"Stream not found\n"),
        ("POST", "/cam/2", 200, b""),
        ("GET", "/cam/2", 200, b"two"),
        ("GET", "/cam/next", 200, b"3"),
        ("GET", "/healthz", 200, b"ok\n"),
    ]
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"zero")
        await call(trickle_server.url, "POST", "/cam/1")
        conn = await connect(trickle_server.url)
        for method, path, status, body in asks:
            length = "3" if method == "POST" else "0"
            await conn.start(method, path, [("Content-Length", length)])
            if method == "POST":
                await conn.send(b"two")
            await conn.end()
            reply = await conn.response()
            assert (reply.status, reply.body) == (status, body), path
            conn.h11.start_next_cycle()
            del conn.reply
        await conn.aclose()


async def test_pipelined_requests_are_answered_in_order(trickle_server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"first")
        await call(trickle_server.url, "POST", "/cam/1", b"second")
        ask = b"GET /cam/%d HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /cam/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        post = b"POST /cam/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird"
        data = await _raw_exchange(trickle_server.url, ask % 0 + post + ask % 2 + last)
    assert data.count(b"HTTP/1.1 200 ") == 4
    assert data.index(b"first") < data.index(b"third") < data.index(b"second")
    assert b"connection: close" in data.lower()


async def _closed_by_server(stream: trio.abc.Stream) -> bool:
    """Read until the server closes the connection (True) or sends something (False)."""
    return await stream.receive_some(1024) == b""


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, keep_alive_timeout=0.3)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            conn = await connect(server.url)
            await conn.start("GET", "/healthz")
            await conn.end()
            assert (await conn.response()).status == 200
            began = trio.current_time()
            assert await _closed_by_server(conn.stream)
            assert trio.current_time() - began >= 0.25
            await conn.aclose()


async def test_a_head_dribbled_past_the_keep_alive_timeout_is_closed() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, keep_alive_timeout=0.3)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            conn = await connect(server.url)
            await conn.stream.send_all(b"GET /healthz HTTP/1.1\r\nHost")
            assert await _closed_by_server(conn.stream)
            await conn.aclose()


async def test_an_idle_preconnect_is_never_timed_out() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, keep_alive_timeout=0.2)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/cam/0")
            await trio.sleep(1.0)  # the point of the test: real idle time past the timer
            await preconnect.send(b"late but fine")
            await preconnect.end()
            assert (await preconnect.response()).status == 200
            await preconnect.aclose()


async def test_shutdown_closes_idle_keep_alive_connections_at_once() -> None:
    settings = Settings(
        host="127.0.0.1", port=0, autocreate=True, keep_alive_timeout=60, graceful_timeout=30
    )
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            conn = await connect(server.url)
            await conn.start("GET", "/healthz")
            await conn.end()
            assert (await conn.response()).status == 200
        # left the block: not held by the idle connection (graceful_timeout is 30 s)
        assert await _closed_by_server(conn.stream)
        await conn.aclose()


async def test_connection_close_and_http_1_0_are_followed_by_a_close(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(LIMIT):
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"GET /cam/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            data = await _raw_exchange(trickle_server.url, request)  # returns on the close
            assert b" 200 " in data.split(b"\r\n")[0] or b" 404 " in data.split(b"\r\n")[0]
            assert b"connection: close" in data.lower()


async def test_head_requests_get_no_body(trickle_server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        conn = await connect(trickle_server.url)
        await conn.start("HEAD", "/healthz")
        await conn.end()
        reply = await conn.response()
        assert reply.status == 200
        assert reply.body == b""
        assert int(reply.headers["content-length"]) > 0
        await conn.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (
            b"POST /cam/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /cam/0 HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"POST /cam/0 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505),
        (b"POST /cam/0 HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ],
    ids=[
        "bad-header",
        "cl-and-te",
        "two-lengths",
        "bad-chunk-size",
        "head-too-big",
        "h2",
        "http-9.9",
        "gzip",
    ],
)
async def test_requests_we_do_not_serve_get_a_4xx_and_a_close(
    trickle_server: RunningServer, request_bytes: bytes, status: int
) -> None:
    with trio.fail_after(LIMIT):
        data = await _raw_exchange(trickle_server.url, request_bytes)  # sent in one write
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
    assert b"connection: close" in data.lower()
    assert trickle_server.registry.get("cam") is None or _stored(trickle_server, "cam", 0) <= 0


async def test_expect_100_continue_is_answered_before_the_body(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(LIMIT):
        conn = await connect(trickle_server.url)
        await conn.stream.send_all(
            b"POST /cam/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert (await conn.stream.receive_some(1024)).startswith(b"HTTP/1.1 100 Continue")
        await conn.stream.send_all(b"body")
        assert (await conn.stream.receive_some(1024)).startswith(b"HTTP/1.1 200 ")
        await conn.aclose()
        assert (await call(trickle_server.url, "GET", "/cam/0")).body == b"body"


async def test_an_upgrade_is_ignored_and_served_as_http_1_1(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"plain")
        data = await _raw_exchange(
            trickle_server.url,
            b"GET /cam/0 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"5\r\nplain\r\n0\r\n\r\n")


async def test_a_response_the_app_leaves_unfinished_is_reset_not_ended(
    trickle_server: RunningServer,
) -> None:
    """An app that fails mid-body (here the segment layer's cut: its lease cancelled)
    leaves the response unfinished; the client sees a reset, never a terminating chunk."""
    with trio.fail_after(LIMIT):
        publisher = await connect(trickle_server.url)
        await publisher.start("POST", "/cam/0")
        await publisher.send(b"some;")
        await until(lambda: _stored(trickle_server, "cam", 0) == 5)
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        assert (await subscriber.head()).status == 200
        assert await subscriber.chunk() == b"some;"
        channel = trickle_server.registry.get("cam")
        assert channel is not None
        channel.subscribers.cancel()  # cut every reader
        with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
            await subscriber.chunk()
        await subscriber.aclose()
        await publisher.aclose()


async def test_with_fast_path_off_hypercorn_serves(writes: Writes) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, fast_path=False)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            await call(server.url, "POST", "/cam/0", b"stock")
            assert (await call(server.url, "GET", "/cam/0")).body == b"stock"
    assert writes.taken == []  # hypercorn writes with send(), not os.writev


# -- pushed chunks: a live subscriber written from the publisher's task -------------------


@dataclasses.dataclass
class Pushes:
    """``Output.try_push``'s answers (0 none, 1 all, 2 part) and reader wake-ups."""

    answers: list[int] = dataclasses.field(default_factory=list)
    wakes: int = 0


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> Pushes:
    record = Pushes()
    real_try = Output.try_push
    real_wait = Segment.wait_readable

    def try_push(self: Output, parts: Sequence[bytes]) -> int:
        answer = real_try(self, parts)
        record.answers.append(answer)
        return answer

    async def wait_readable(self: Segment, index: int) -> bool:
        record.wakes += 1
        return await real_wait(self, index)

    monkeypatch.setattr(Output, "try_push", try_push)
    monkeypatch.setattr(Segment, "wait_readable", wait_readable)
    return record


async def _live_pair(server: RunningServer) -> tuple[Any, Any]:
    """A publisher mid-segment (``first;`` sent) and a subscriber that got the head and
    those bytes: from here on, the subscriber is written to by pushes."""
    publisher = await connect(server.url)
    await publisher.start("POST", "/cam/0")
    await publisher.send(b"first;")
    await until(lambda: _stored(server, "cam", 0) == 6)
    subscriber = await connect(server.url)
    await subscriber.start("GET", "/cam/0")
    await subscriber.end()
    assert (await subscriber.head()).status == 200
    assert await subscriber.chunk() == b"first;"
    return publisher, subscriber


async def test_a_live_subscriber_is_written_by_the_publishers_task(
    trickle_server: RunningServer, pushes: Pushes
) -> None:
    pieces = [b"%03d;" % n for n in range(30)]
    with trio.fail_after(LIMIT):
        publisher, subscriber = await _live_pair(trickle_server)
        for piece in pieces:  # paced as a live stream: each one read before the next
            await publisher.send(piece)
            assert await subscriber.chunk() == piece
        await publisher.end()
        assert await subscriber.chunk() is None
        assert (await publisher.response()).status == 200
        await publisher.aclose()
        await subscriber.aclose()
    assert pushes.answers.count(1) == len(pieces)
    # The subscriber's task ran for the head and the end, not for every chunk.
    assert pushes.wakes <= 4


async def test_a_push_the_socket_takes_only_part_of_is_finished_in_order(
    trickle_server: RunningServer, pushes: Pushes
) -> None:
    # The subscriber does not read: pushes fill its socket until one is taken only in
    # part. The rest must follow, before anything else and without a further chunk.
    piece = bytes(range(256)) * 60  # 15,360 bytes: small enough to be pushed
    sent: list[bytes] = []
    with trio.fail_after(LIMIT * 3):
        publisher, subscriber = await _live_pair(trickle_server)
        while 2 not in pushes.answers:
            data = b"%06d" % len(sent) + piece
            await publisher.send(data)
            sent.append(data)
            await until(lambda: _stored(trickle_server, "cam", 0) == 6 + sum(map(len, sent)))
        expected = b"".join(sent)
        received = b""
        while len(received) < len(expected):  # nothing more is published meanwhile
            chunk = await subscriber.chunk()
            assert chunk is not None
            received += chunk
        assert received == expected
        await publisher.send(b"last;")
        await publisher.end()
        assert await subscriber.chunk() == b"last;"
        assert await subscriber.chunk() is None
        await publisher.aclose()
        await subscriber.aclose()
    assert 1 in pushes.answers


async def test_a_delete_ends_a_pushed_subscriber_after_every_byte(
    trickle_server: RunningServer, pushes: Pushes
) -> None:
    with trio.fail_after(LIMIT):
        publisher, subscriber = await _live_pair(trickle_server)
        for piece in (b"two;", b"three;"):
            await publisher.send(piece)
            assert await subscriber.chunk() == piece
        assert pushes.answers == [1, 1]  # the subscriber is parked, being pushed to
        assert (await call(trickle_server.url, "DELETE", "/cam")).status == 200
        assert await subscriber.chunk() is None  # its response ended, complete
        reply = await publisher.response()
        await publisher.aclose()
        await subscriber.aclose()
    assert subscriber.reply.body == b"first;two;three;"
    assert reply.headers["lp-trickle-closed"] == "terminated"


def test_a_pusher_leaves_big_chunks_and_cut_writes_to_its_task() -> None:
    answers = [1, 2]
    offered: list[Sequence[bytes]] = []

    def try_send(parts: Sequence[bytes]) -> int:
        offered.append(parts)
        return answers.pop(0)

    metrics = types.SimpleNamespace(bytes_out=0)
    pusher = streams._Pusher(try_send, metrics)
    assert not pusher(bytes(streams.PUSH_MAX + 1))  # the woken task may batch it
    assert offered == []
    assert pusher(bytes(streams.PUSH_MAX))
    assert not pusher(b"cut")  # taken, but the task must flush the rest
    assert (pusher.taken, pusher.sent, pusher.stalled) == (2, streams.PUSH_MAX + 3, True)
    assert metrics.bytes_out == streams.PUSH_MAX + 3


async def test_a_subscriber_gone_while_pushed_to_is_let_go(
    trickle_server: RunningServer, pushes: Pushes
) -> None:
    with trio.fail_after(LIMIT):
        publisher, subscriber = await _live_pair(trickle_server)
        await publisher.send(b"pushed;")
        assert await subscriber.chunk() == b"pushed;"
        await subscriber.aclose()
        channel = trickle_server.registry.get("cam")
        assert channel is not None
        for n in range(50):  # pushes to a closed peer fail; the reader is let go
            await publisher.send(b"%02d;" % n)
        await until(lambda: len(channel.subscribers) == 0)
        await publisher.end()
        assert (await publisher.response()).status == 200
        await publisher.aclose()
    assert _stored(trickle_server, "cam", 0) == 6 + 7 + 150


async def test_a_push_never_cuts_into_another_write_and_keeps_the_order() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    ours = trio.socket.socket()
    await ours.connect(listener.getsockname())
    peer, _ = await listener.accept()
    connection = Output(trio.SocketStream(ours), ours, lambda: None)
    # a chunked response under way, its head written
    connection.start(200, [], method="GET", http_version="1.1", body_unread=False, stopping=False)
    await connection.body([], more=True)
    assert await peer.recv(1000)  # the head
    received = bytearray()
    with trio.fail_after(LIMIT):
        connection._writing = True  # another write is under way
        assert connection.try_push([b"not now"]) == 0
        connection._writing = False
        assert connection.try_push([b"ab", b"cd"]) == 1
        while len(received) < len(b"4\r\nabcd\r\n"):
            received.extend(await peer.recv(100))
        sent: list[bytes] = []
        answer = 1
        while answer != 2:  # fill the socket until a push is cut short
            sent.append(b"%06d" % len(sent) + bytes(99_994))
            answer = connection.try_push([sent[-1][:50_000], sent[-1][50_000:]])
            if answer == 0:  # full to the byte: nothing taken; make a little room
                sent.pop()
                received.extend(await peer.recv(1000))
        assert connection.try_push([b"behind the rest"]) == 0
        framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in sent)
        expected = b"4\r\nabcd\r\n" + framed + b"4\r\nnext\r\n"

        async def read_all() -> None:
            while len(received) < len(expected):
                received.extend(await peer.recv(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await connection.flush()  # the backlog first
            await connection.body([b"next"], more=True)
    assert bytes(received) == expected
    for sock in (ours, peer, listener):
        sock.close()
