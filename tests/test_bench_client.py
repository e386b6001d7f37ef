"""bench/client.py, the load generator's one HTTP/1.1 client: both ways of driving a
``Conn`` (awaiting, and the reactor's synchronous calls) fed responses split at random
points; which idle connections are reused; framing errors.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable

import pytest
import trio

from bench.client import Body, Conn, ConnPool, Head, HttpError, put_idle, take_idle


def _chunked_response(rng: random.Random, payload: bytes) -> bytes:
    out = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nLp-Trickle-Seq: 3\r\n\r\n"]
    i = 0
    while i < len(payload):
        piece = payload[i : i + rng.randint(1, 70000)]
        i += len(piece)
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    out.append(b"0\r\n\r\n")
    out.append(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    return b"".join(out)


def _collect(into: list[bytes]) -> Callable[[memoryview], None]:
    return lambda view: into.append(bytes(view))


async def _write_in_pieces(rng: random.Random, sock: socket.socket, wire: bytes) -> None:
    pos = 0
    while pos < len(wire):
        await trio.lowlevel.wait_writable(sock)
        try:
            pos += sock.send(wire[pos : pos + rng.choice([1, 2, 3, 7, 100, 5000, 70000])])
        except BlockingIOError:
            continue
        if rng.random() < 0.3:
            await trio.lowlevel.checkpoint()


async def test_the_awaiting_way_parses_any_split() -> None:
    rng = random.Random(1)
    for _ in range(40):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        conn = Conn(b, b"test")
        payload = rng.randbytes(rng.randint(0, 200_000))
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_in_pieces, rng, a, _chunked_response(rng, payload))
            head = await conn.read_head()
            assert head.headers["lp-trickle-seq"] == "3"
            assert await conn.read_body(head, _collect(got)) == len(payload)
            assert b"".join(got) == payload
            second = await conn.read_head()
            assert await conn.read_body_bytes(second) == b"hello"
            assert conn.closed
        a.close()


async def test_the_reactors_way_parses_any_split() -> None:
    rng = random.Random(2)
    for _ in range(40):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        conn = Conn(b, b"test")
        payload = rng.randbytes(rng.randint(0, 200_000))
        got: list[bytes] = []
        bodies: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_in_pieces, rng, a, _chunked_response(rng, payload))
            body: Body | None = None
            while len(bodies) < 2:
                await trio.lowlevel.wait_readable(b)
                conn.recv()
                while len(bodies) < 2:
                    if body is None:
                        head = conn.parse_head()
                        if head is None:
                            break
                        body = Body(head)
                    if not body.feed(conn, _collect(got)):
                        break
                    bodies.append(b"".join(got))
                    got.clear()
                    body = None
        assert bodies == [payload, b"hello"]
        a.close()
        b.close()


def _pair() -> tuple[socket.socket, Conn]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, Conn(b, b"test")


async def test_a_body_until_close_ends_with_the_connection() -> None:
    peer, conn = _pair()
    peer.send(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    peer.close()
    head = await conn.read_head()
    assert await conn.read_body_bytes(head) == b"all of it"
    assert conn.closed


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",  # not hex
        b"1" * 2000,  # a size line that never ends
    ],
)
async def test_a_broken_chunk_size_line_is_an_http_error(wire: bytes) -> None:
    peer, conn = _pair()
    peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
    head = await conn.read_head()
    # The head and the size line came in one read: the decoder has all it needs.
    with pytest.raises(HttpError, match="chunk size line"):
        Body(head).feed(conn, lambda _: None)
    peer.close()
    conn.close()


async def test_a_response_cut_inside_the_body_is_an_http_error_and_closes() -> None:
    peer, conn = _pair()
    peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    peer.close()
    head = await conn.read_head()
    with pytest.raises(HttpError, match="inside a body"):
        await conn.read_body_bytes(head)
    assert conn.closed


def test_only_fresh_open_quiet_connections_are_reused() -> None:
    peers: list[socket.socket] = []
    conns: list[Conn] = []
    for _ in range(4):
        peer, conn = _pair()
        peers.append(peer)
        conns.append(conn)
    fresh, closed_by_server, stale, unread = conns
    pool: list[Conn] = []
    for conn in (fresh, closed_by_server, stale, unread):
        put_idle(pool, conn)
    peers[1].close()
    stale.idle_since = time.monotonic() - 10
    unread.start, unread.end = 0, 3  # bytes nobody asked for
    opened = set(conns)
    assert take_idle(pool, 5.0, opened) is fresh
    assert pool == []
    assert opened == {fresh}
    assert closed_by_server.closed
    assert stale.closed
    assert unread.closed
    assert not fresh.closed
    for peer in peers:
        peer.close()
    fresh.close()


async def test_the_pool_hands_back_a_connection_only_after_a_whole_response() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    pool = ConnPool("127.0.0.1", port)
    first = await pool.get()
    pool.put(first)
    assert await pool.get() is first  # reused
    first.close()
    pool.put(first)  # a closed one is dropped
    second = await pool.get()
    assert second is not first
    assert pool.open_conns == {second}
    pool.close()
    assert second.closed
    listener.close()


def test_a_head_says_whether_the_connection_stays() -> None:
    assert Head(200, {}).keep_alive
    assert not Head(200, {"connection": "Close"}).keep_alive


def test_the_parser_cost_tool_checks_both_parsers_on_the_same_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import parser_cost

    wire = parser_cost.response(bytes(range(256)) * 300, 1000)
    a, b = socket.socketpair()
    conn = Conn(b, b"test", 128 * 1024)
    assert parser_cost.parse_with_bench(wire, conn) == 256 * 300
    assert parser_cost.parse_with_h11(wire) == 256 * 300
    a.close()
    conn.close()
    assert parser_cost.main(["--repeat", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| 200 B segment",
        "| 1 MiB segment, 16 KiB chunks",
    ]
