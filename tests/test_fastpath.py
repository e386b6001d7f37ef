"""The fast path (trickle_trio/http/fastpath.py and faststream.py), over real sockets.

What it promises beyond plain hypercorn: a response's head, last bytes and end leave in
one write; payloads are written with ``os.writev`` (never joined), whole even when the
socket only takes part of them; the keep-alive timer still closes idle connections (and
never busy ones), also at shutdown; and with ``fast_path`` off, hypercorn's own classes
serve. Writes are counted by wrapping ``os.writev``. Each test is bounded by fail_after.
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
import hypercorn.config
import pytest
import trio
from hypercorn.config import Config

from trickle_trio.channels import Segment
from trickle_trio.config import Settings
from trickle_trio.core.segment import SegmentState
from trickle_trio.http import fastpath, faststream, streams
from trickle_trio.http.reactor import Reactor, current_reactor
from trickle_trio.server import RunningServer, open_server

from .sockets import call, connect, until

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
        await until(lambda: "cam" in trickle_server.registry)
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        assert (await subscriber.head()).status == 200
        assert await subscriber.chunk() == b"one"
        # the head and the first chunk went out together, nothing else yet
        assert len(writes.taken) == 1
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
    # server closing the connection (which once never came: the disconnect watcher's
    # cancel landed in hypercorn's close).
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
    assert head.startswith(b"HTTP/1.1 200 ")
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


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


@dataclasses.dataclass
class Takeovers:
    """What each offer to hand a body to the connection's reader answered, and how many
    body bytes the fast path's own chunked decoder (not h11) went through."""

    answers: list[bool] = dataclasses.field(default_factory=list)
    decoded: int = 0


@pytest.fixture
def takeovers(monkeypatch: pytest.MonkeyPatch) -> Takeovers:
    record = Takeovers()
    take = faststream.FastHTTPStream._take_body
    feed = faststream.ChunkedBody.feed

    def recording_take(self: faststream.FastHTTPStream, sink: Any) -> bool:
        record.answers.append(take(self, sink))
        return record.answers[-1]

    def recording_feed(self: faststream.ChunkedBody, data: bytes, deliver: Any) -> Any:
        record.decoded += len(data)
        return feed(self, data, deliver)

    monkeypatch.setattr(faststream.FastHTTPStream, "_take_body", recording_take)
    monkeypatch.setattr(faststream.ChunkedBody, "feed", recording_feed)
    return record


def _stored(server: RunningServer, name: str, seq: int) -> int:
    channel = server.registry.get(name)
    segment = channel.segment_in_window(seq) if channel is not None else None
    return segment.size if segment is not None else -1


async def _taken_publisher(url: str, takeovers: Takeovers, path: str = "/cam/0") -> Any:
    """A chunked POST whose body the server's reader has taken over."""
    conn = await connect(url)
    await conn.start("POST", path)
    await conn.send(b"fir")  # the takeover is offered once a body comes in pieces
    await conn.send(b"st;")
    await until(lambda: True in takeovers.answers)
    return conn


async def test_a_taken_body_is_decoded_by_the_reader(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    pieces = [b"%04d;" % n for n in range(50)]
    with trio.fail_after(LIMIT):
        conn = await _taken_publisher(trickle_server.url, takeovers)
        for piece in pieces:
            await conn.send(piece)
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        assert (await subscriber.head()).status == 200
        await conn.end()
        assert (await conn.response()).status == 200
        reply = await subscriber.response()
        # the same connection carries on after the body (h11 read the last chunk)
        conn.h11.start_next_cycle()
        del conn.reply
        await conn.start("GET", "/cam/0")
        again = await conn.response()
        await conn.aclose()
        await subscriber.aclose()
    assert reply.body == again.body == b"first;" + b"".join(pieces)
    assert takeovers.decoded >= len(_chunked(pieces))


async def test_the_reader_takes_over_only_between_two_chunks(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    # h11 reads a chunk up to its payload's end and still expects the CRLF after it:
    # the decoder must not start there (nor in the middle of a chunk).
    with trio.fail_after(LIMIT):
        conn = await connect(trickle_server.url)
        await conn.start("POST", "/cam/0")
        conn.h11.send(h11.Data(data=b"first;"))  # keep the client's h11 state in step
        await conn.stream.send_all(b"3\r\nfir\r\n3\r\nst;")
        await until(lambda: True in takeovers.answers)
        await conn.stream.send_all(b"\r\n9\r\nsecond")  # CRLF, and part of a chunk
        await until(lambda: _stored(trickle_server, "cam", 0) == 12)
        await conn.stream.send_all(b";..\r\n1")  # the rest of it, and h11 holds a "1"
        await until(lambda: _stored(trickle_server, "cam", 0) == 15)
        await conn.stream.send_all(b"6\r\n" + b"x" * 22 + b"\r\n")  # a 0x16-byte chunk
        await until(lambda: _stored(trickle_server, "cam", 0) == 37)
        assert takeovers.decoded == 0
        conn.h11.send(h11.Data(data=b"second;..x"))
        await conn.send(b"third;")
        await conn.end()
        assert (await conn.response()).status == 200
        await conn.aclose()
        stored = await call(trickle_server.url, "GET", "/cam/0")
    assert stored.body == b"first;second;.." + b"x" * 22 + b"third;"
    assert takeovers.decoded > 0


async def test_a_body_sent_in_one_piece_is_not_taken_over(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"small event")
        reply = await call(trickle_server.url, "GET", "/cam/0")
    assert reply.body == b"small event"
    assert takeovers.answers == []


async def _publish_in_one_burst(url: str, path: str, pieces: list[bytes]) -> None:
    """POST ``pieces`` as that many chunks, all in one send (one read for the server)."""
    conn = await connect(url)
    await conn.start("POST", path)
    await conn.stream.send_all(_chunked(pieces) + b"0\r\n\r\n")
    conn.h11.send(h11.Data(data=b"x"))  # keep the client's h11 state in step
    conn.h11.send(h11.EndOfMessage())
    assert (await conn.response()).status == 200
    await conn.aclose()


async def test_body_chunks_keep_their_order_when_the_reader_takes_over(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    # Thousands of chunks in one burst: hypercorn queues some for the app before the
    # body is handed over; none may overtake another.
    pieces = [b"%06d;" % n for n in range(3000)]
    with trio.fail_after(LIMIT):
        await _publish_in_one_burst(trickle_server.url, "/cam/0", pieces)
        reply = await call(trickle_server.url, "GET", "/cam/0")
    assert reply.body == b"".join(pieces)
    assert takeovers.answers[-1] is True


async def test_pending_chunks_go_out_unjoined_even_past_one_writevs_buffer_limit(
    trickle_server: RunningServer, writes: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that finds many chunks waiting sends them as they are (PARTS_EXTENSION):
    # never joined, framed as one chunk (not one per piece, nor one h11 event each), in
    # as many writev calls as the kernel's buffer limit needs.
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
    assert fastpath.IOV_MAX == 1024


async def test_a_body_is_not_taken_over_while_chunks_wait_in_the_apps_queue() -> None:
    # What keeps the order above, without the socket timing that decides whether a
    # burst is queued when the app makes its offer.
    stream = object.__new__(faststream.FastHTTPStream)
    stream.closed = False
    send_channel, receive_channel = trio.open_memory_channel[Any](10)
    stream.app_put = send_channel.send
    send_channel.send_nowait({"type": "http.request", "body": b"queued", "more_body": True})
    sink: list[bytes] = []
    assert stream._take_body(sink.append) is False
    assert stream.sink is None
    receive_channel.receive_nowait()
    assert stream._take_body(sink.append) is True
    assert stream.sink == sink.append
    send_channel.close()
    receive_channel.close()


async def test_the_byte_limit_holds_when_the_reader_writes_the_body(
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
    assert takeovers.decoded > 0


async def test_a_publisher_gone_mid_chunk_leaves_what_arrived(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        conn = await _taken_publisher(trickle_server.url, takeovers)
        await conn.stream.send_all(b"10\r\nhalf")  # 16 announced, 4 sent
        await until(lambda: takeovers.decoded > 0)
        await conn.aclose()
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        reply = await subscriber.response()
        await subscriber.aclose()
    assert reply.body == b"first;half"


async def test_a_finished_request_is_freed_without_the_cycle_collector(
    trickle_server: RunningServer, monkeypatch: pytest.MonkeyPatch, takeovers: Takeovers
) -> None:
    # Streams (and what the app left in their scope) must go by refcount: the shipped
    # GC thresholds leave cycles uncollected for a long time.
    streams: list[weakref.ref[faststream.FastHTTPStream]] = []
    real_init = faststream.FastHTTPStream.__init__

    def recording(self: faststream.FastHTTPStream, *args: Any) -> None:
        real_init(self, *args)
        streams.append(weakref.ref(self))

    monkeypatch.setattr(faststream.FastHTTPStream, "__init__", recording)
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(LIMIT):
            publisher = await connect(trickle_server.url)
            await publisher.start("POST", "/cam/0")
            await publisher.send(b"fir")
            await publisher.send(b"st")
            await until(lambda: True in takeovers.answers)
            await publisher.send(b"second")  # through the sink
            await publisher.end()
            assert (await publisher.response()).status == 200
            assert (await call(trickle_server.url, "GET", "/cam/0")).body == b"firstsecond"
            await publisher.aclose()
            await until(lambda: all(ref() is None for ref in streams))
    finally:
        gc.enable()
    assert len(streams) == 2


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
    # complete, empty, 470, 404 and a publish answer, back to back on one connection
    asks = [
        ("GET", "/cam/0", 200, b"zero"),
        ("GET", "/cam/1", 200, b""),
        ("GET", "/cam/9", 470, b"Entry not found"),
        ("GET", "/nobody/0", 404, b"Stream not found\n"),
        ("POST", "/cam/2", 200, b""),
        ("GET", "/cam/2", 200, b"two"),
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


async def _read_until_closed(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_pipelined_requests_are_answered_in_order(trickle_server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam/0", b"first")
        await call(trickle_server.url, "POST", "/cam/1", b"second")
        conn = await connect(trickle_server.url)
        host = conn.host.encode()
        ask = b"GET /cam/%d HTTP/1.1\r\nHost: %s\r\n\r\n"
        last = b"GET /cam/1 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host
        await conn.stream.send_all(ask % (0, host) + last)  # both before any answer
        data = await _read_until_closed(conn.stream)  # Connection: close ends it
        await conn.aclose()
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert data.index(b"first") < data.index(b"second")
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


async def test_a_client_error_still_gets_hypercorns_400() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            conn = await connect(server.url)
            await conn.stream.send_all(b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n")
            data = b""
            while chunk := await conn.stream.receive_some(1024):
                data += chunk
            assert data.startswith(b"HTTP/1.1 400 ")
            await conn.aclose()


async def test_with_fast_path_off_hypercorn_serves_as_shipped(writes: Writes) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, fast_path=False)
    async with open_server(settings) as server:
        assert not fastpath._is_fast(server.app)
        with trio.fail_after(LIMIT):
            await call(server.url, "POST", "/cam/0", b"stock")
            assert (await call(server.url, "GET", "/cam/0")).body == b"stock"
    assert writes.taken == []


def test_install_refuses_an_untested_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypercorn.trio.run as hypercorn_run
    from hypercorn.trio.tcp_server import TCPServer

    monkeypatch.setattr(hypercorn_run, "TCPServer", TCPServer)
    monkeypatch.setattr(fastpath, "_hypercorn_version", lambda: "0.99.0")
    assert fastpath.install() is False
    assert hypercorn_run.TCPServer is TCPServer
    monkeypatch.setattr(fastpath, "_hypercorn_version", lambda: "0.18.0")
    assert fastpath.install() is True
    assert hypercorn_run.TCPServer is fastpath.FastTCPServer


def test_the_date_header_is_built_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    now = [1_800_000_000.2]
    monkeypatch.setattr(faststream.time, "time", lambda: now[0])
    monkeypatch.setattr(hypercorn.config, "time", lambda: now[0])
    first = faststream._response_headers(config)
    now[0] += 0.5
    assert faststream._response_headers(config) is first  # same second: reused
    now[0] += 1.0
    later = faststream._response_headers(config)
    assert later is not first
    dates = [dict(headers)[b"date"] for headers in (first, later)]
    assert dates == [b"Fri, 15 Jan 2027 08:00:00 GMT", b"Fri, 15 Jan 2027 08:00:01 GMT"]


async def test_a_chunk_of_no_bytes_is_not_written() -> None:
    # "0\r\n" would end the response: parts holding no bytes are skipped.
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET /cam/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert type(connection.next_event()) is h11.Request
    connection.send(h11.Response(status_code=200, headers=[]))
    protocol = object.__new__(faststream.FastH11Protocol)
    protocol.connection = connection
    written: list[tuple[bytes, ...]] = []

    async def write(parts: Sequence[bytes]) -> None:
        written.append(tuple(parts))

    protocol.write_parts = write
    await protocol.send_chunk([b""])
    await protocol.send_chunk([b"ab", b"", b"c"])
    assert written == [(b"3\r\n", b"ab", b"", b"c", b"\r\n")]


# -- pushed chunks: a live subscriber written from the publisher's task -------------------


@dataclasses.dataclass
class Pushes:
    """``FastTCPServer.try_write``'s answers (0 none, 1 all, 2 part) and reader wake-ups."""

    answers: list[int] = dataclasses.field(default_factory=list)
    wakes: int = 0


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> Pushes:
    record = Pushes()
    real_try = fastpath.FastTCPServer.try_write
    real_wait = Segment.wait_readable

    def try_write(self: fastpath.FastTCPServer, parts: Sequence[bytes]) -> int:
        answer = real_try(self, parts)
        record.answers.append(answer)
        return answer

    async def wait_readable(self: Segment, index: int) -> bool:
        record.wakes += 1
        return await real_wait(self, index)

    monkeypatch.setattr(fastpath.FastTCPServer, "try_write", try_write)
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


async def test_try_write_never_cuts_into_another_write_and_keeps_the_order() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    ours = trio.socket.socket()
    await ours.connect(listener.getsockname())
    peer, _ = await listener.accept()
    connection = object.__new__(fastpath.FastTCPServer)  # just the writing half
    connection.stream = trio.SocketStream(ours)
    connection.send_lock = trio.Lock()
    connection._backlog = []
    connection._unyielded = 0
    received = bytearray()
    with trio.fail_after(LIMIT):
        async with connection.send_lock:  # another write is under way
            assert connection.try_write([b"not now"]) == 0
        assert connection.try_write([b"ab", b"cd"]) == 1
        while len(received) < 4:
            received.extend(await peer.recv(100))
        sent: list[bytes] = []
        answer = 1
        while answer != 2:  # fill the socket until a write is cut short
            sent.append(b"%06d" % len(sent) + bytes(99_994))
            answer = connection.try_write([sent[-1][:50_000], sent[-1][50_000:]])
            if answer == 0:  # full to the byte: nothing taken; make a little room
                sent.pop()
                received.extend(await peer.recv(1000))
        assert connection.try_write([b"behind the rest"]) == 0
        expected = b"abcd" + b"".join(sent) + b"next"

        async def read_all() -> None:
            while len(received) < len(expected):
                received.extend(await peer.recv(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await connection._write(())  # what the protocol's flush does: the backlog
            await connection._write([b"next"])
    assert bytes(received) == expected
    for sock in (ours, peer, listener):
        sock.close()


# -- the reactor: a taken-over body between chunks is read without waking its task --------


async def _parked_publisher(server: RunningServer, takeovers: Takeovers) -> tuple[Any, Reactor]:
    """A publisher whose body the reader decodes, its socket now waiting in the reactor."""
    reactor = current_reactor()
    assert reactor is not None
    conn = await _taken_publisher(server.url, takeovers)
    await conn.send(b"third;")  # decoded by the connection's task: the reactor is next
    await until(lambda: _stored(server, "cam", 0) == 12 and len(reactor) == 1)
    return conn, reactor


async def test_a_live_publisher_is_read_by_the_reactor_not_its_task(
    trickle_server: RunningServer, takeovers: Takeovers, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {"reactor": 0, "task": 0}
    read_ready = fastpath.FastTCPServer._read_ready
    receive = fastpath.FastTCPServer._receive

    def counted_ready(self: fastpath.FastTCPServer) -> bool:
        counts["reactor"] += 1
        return read_ready(self)

    async def counted_receive(self: fastpath.FastTCPServer) -> bytes:
        counts["task"] += 1
        return await receive(self)

    monkeypatch.setattr(fastpath.FastTCPServer, "_read_ready", counted_ready)
    monkeypatch.setattr(fastpath.FastTCPServer, "_receive", counted_receive)
    pieces = [b"%02d;" % n for n in range(20)]
    with trio.fail_after(LIMIT):
        conn, reactor = await _parked_publisher(trickle_server, takeovers)
        before = dict(counts)
        sent = [b"first;third;"]
        for piece in pieces:  # paced: each one stored before the next is sent
            await conn.send(piece)
            sent.append(piece)
            await until(lambda: _stored(trickle_server, "cam", 0) == sum(map(len, sent)))
        assert counts["reactor"] - before["reactor"] == len(pieces)
        assert counts["task"] == before["task"]  # the connection's task slept throughout
        await conn.end()
        assert (await conn.response()).status == 200  # the end went back to the task
        assert len(reactor) == 0
        conn.h11.start_next_cycle()
        del conn.reply
        await conn.start("GET", "/cam/0")  # and the connection carries on
        reply = await conn.response()
        await conn.aclose()
    assert reply.body == b"first;third;" + b"".join(pieces)


async def test_bad_framing_read_by_the_reactor_is_a_400(
    trickle_server: RunningServer, takeovers: Takeovers
) -> None:
    with trio.fail_after(LIMIT):
        conn, reactor = await _parked_publisher(trickle_server, takeovers)
        await conn.stream.send_all(b"5\r\nfourth\r\n")  # one byte too many
        assert (await conn.head()).status == 400
        assert await conn.stream.receive_some(100) == b""  # and the connection closed
        await conn.aclose()
        stored = await call(trickle_server.url, "GET", "/cam/0")
    assert stored.body == b"first;third;fourt"
    assert len(reactor) == 0


async def test_a_connection_closed_while_its_socket_waits_in_the_reactor_lets_it_go(
    takeovers: Takeovers,
) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, max_segment_bytes=1000)
    async with open_server(settings) as server:
        with trio.fail_after(LIMIT):
            conn, reactor = await _parked_publisher(server, takeovers)
            await conn.stream.send_all(_chunked([b"b" * 1000]))  # over the limit
            assert (await conn.head()).status == 413  # answered and closed by the app...
            assert await conn.stream.receive_some(100) == b""
            await until(lambda: len(reactor) == 0)  # ...which woke the parked reader
            await conn.aclose()


async def test_shutdown_answers_a_publisher_whose_socket_waits_in_the_reactor(
    takeovers: Takeovers,
) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, graceful_timeout=30)
    with trio.fail_after(LIMIT):  # well inside graceful_timeout: nothing was cut
        async with open_server(settings) as server:
            conn, reactor = await _parked_publisher(server, takeovers)
            await server.shutdown()
            reply = await conn.response()
            await conn.aclose()
            assert len(reactor) == 0
    assert reply.status == 200
    assert reply.headers["lp-trickle-closed"] == "terminated"
