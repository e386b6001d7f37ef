"""The client transport (h11 over trio streams): full duplex, TLS, deadlines, the pool.

Scripted servers answer with exact bytes where our own server would not (an early
answer to a request whose body is still open, 1xx keepalives, 5xx, closing idle
connections). Every test is bounded by ``fail_after``.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trustme

from trickle_trio import Settings, open_server
from trickle_trio.client import (
    Timeouts,
    Transport,
    TransportError,
    TransportTimeout,
    open_publisher,
    open_subscriber,
)
from trickle_trio.client.connection import Connection, Exchange, _readable_now
from trickle_trio.client.http import Origin, ResponseArrived, make_ssl_context, split_url
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name, read_request_head, scripted_server


async def test_the_answer_to_an_idle_body_is_read_at_once() -> None:
    """The server answers before reading any body: the head arrives while the body is
    open, and the next write says so instead of blocking."""

    async def answer_early(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 17\r\n\r\n"
            b"Stream not found\n"
        )
        await trio.sleep_forever()  # never reads the body, never closes

    with trio.fail_after(STEP):
        async with scripted_server(answer_early) as base, Transport() as transport:
            exchange = await transport.open("POST", f"{base}/ch/0", content_length=None)
            head = await exchange.read_head()  # while the body is still open
            assert (head.status, exchange.early, exchange.body_ended) == (404, True, False)
            assert await exchange.read_body() == b"Stream not found\n"
            with pytest.raises(ResponseArrived):
                await exchange.send(b"late")
            await exchange.aclose()
            assert transport.statistics().connections_open == 0  # not pooled


async def test_an_early_answer_cancels_a_blocked_write() -> None:
    """A write blocked on a server that does not read ends as soon as the answer comes."""
    go = trio.Event()

    async def answer_later(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await go.wait()
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep_forever()

    with trio.fail_after(STEP):
        async with scripted_server(answer_later) as base, Transport() as transport:
            exchange = await transport.open("POST", f"{base}/ch/0", content_length=None)
            events: list[str] = []

            async def write_forever() -> None:
                try:
                    while True:
                        await exchange.send(b"x" * 65536)  # the kernel buffers fill up
                except ResponseArrived:
                    events.append("write ended")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_forever)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
                head = await exchange.read_head()
                events.append(f"answered {head.status}")
            await exchange.aclose()
    assert events == ["answered 403", "write ended"]


async def test_a_cancelled_end_still_ends_the_body() -> None:
    """``end()`` cancelled while it waits to write (the server is not reading) still
    writes the end of the body once it can: the server gets a complete request. A
    lockstep stream makes every write wait for the peer's read."""
    client, server = trio.testing.lockstep_stream_pair()
    conn = Connection(client, Origin("http", "test", 80), trio.Semaphore(1))
    exchange = Exchange(conn, "http://test/ch/0", Timeouts())
    request = h11.Request(
        method="POST", target="/ch/0", headers=[("Host", "test"), ("Transfer-Encoding", "chunked")]
    )
    received = bytearray()

    async def read_some() -> None:
        received.extend(await server.receive_some(65536))

    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.send_head, request)
            while not received.endswith(b"\r\n\r\n"):
                await read_some()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.send, b"data")
            while not received.endswith(b"data\r\n"):
                await read_some()
        end_scope = trio.CancelScope()

        async def end() -> None:
            with end_scope:
                await exchange.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(end)
            await trio.testing.wait_all_tasks_blocked()  # end() waits for a reader
            end_scope.cancel()  # ... and is cancelled
            await trio.testing.wait_all_tasks_blocked()
            while not received.endswith(b"0\r\n\r\n"):
                await read_some()  # the server reads again: the end arrives
    assert exchange.body_ended
    assert bytes(received).endswith(b"\r\n4\r\ndata\r\n0\r\n\r\n")
    await exchange.aclose()


async def test_informational_responses_are_skipped() -> None:
    async def keepalives(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        for _ in range(3):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 200 OK\r\nLp-Trickle-Seq: 0\r\nContent-Length: 0\r\n\r\n")
        await read_request_head(stream)

    with trio.fail_after(STEP):
        async with scripted_server(keepalives) as base, Transport() as transport:
            response = await transport.request("POST", f"{base}/ch/0", body=b"data")
    assert response.status == 200
    assert response.headers["lp-trickle-seq"] == "0"


async def test_connections_are_reused_and_the_idle_pool_is_bounded(
    trickle_server: RunningServer,
) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        async with Transport(max_idle=2) as transport:
            await transport.request("POST", url)
            for _ in range(5):
                assert (await transport.request("GET", f"{url}/next")).status == 200
            stats = transport.statistics()
            assert (stats.connections_opened, stats.connections_reused) == (1, 5)
            exchanges = [await transport.open("GET", f"{url}/next") for _ in range(5)]
            for exchange in exchanges:
                await exchange.read_body()
                await exchange.aclose()
            stats = transport.statistics()
            assert stats.connections_idle == 2
            assert stats.connections_open == 2  # the three others were closed


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Occupy descriptors until the next one opened is numbered above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the descriptor limit ({hard}) is too low to reach fd 1024")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []
    try:
        while not held or held[-1] <= 1024:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connections_are_reused_past_fd_1024(high_fds: None) -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True)
    with trio.fail_after(STEP):
        async with open_server(settings) as server, Transport() as transport:
            url = f"{server.url}/{fresh_name()}"
            await transport.request("POST", url)
            for _ in range(5):
                assert (await transport.request("GET", f"{url}/next")).status == 200
            exchange = await transport.open("GET", f"{url}/next")
            await exchange.read_body()
            assert exchange._conn.stream.socket.fileno() > 1024  # type: ignore[attr-defined]
            await exchange.aclose()
            stats = transport.statistics()
            assert (stats.connections_opened, stats.connections_reused) == (1, 6)


def test_readable_now_sees_bytes_and_the_end_of_a_high_descriptor(high_fds: None) -> None:
    left, right = socket.socketpair()
    with left, right:
        assert left.fileno() > 1024
        assert not _readable_now(left.fileno())
        right.send(b"x")
        assert _readable_now(left.fileno())
        left.recv(1)
        right.close()
        assert _readable_now(left.fileno())  # end of stream: dropped


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def one_request_per_connection(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stream.aclose()  # without saying "Connection: close"

    with trio.fail_after(STEP):
        async with scripted_server(one_request_per_connection) as base, Transport() as transport:
            for _ in range(3):
                assert (await transport.request("GET", f"{base}/ch/next")).body == b"ok"
            assert transport.statistics().connections_opened == 3


async def test_first_byte_counts_from_the_end_of_the_body(trickle_server: RunningServer) -> None:
    """An idle preconnected POST outlives the first-byte deadline; a GET that gets no
    head in time fails with it."""
    url = f"{trickle_server.url}/{fresh_name()}"
    timeouts = Timeouts(first_byte=0.2)
    with trio.fail_after(STEP):
        async with Transport(timeouts=timeouts) as transport:
            post = await transport.open("POST", f"{url}/0", content_length=None)
            await trio.sleep(0.4)  # idle for twice the deadline: the thing under test
            await post.send(b"late but fine")
            await post.end()
            assert (await post.read_head()).status == 200
            await post.aclose()
            get = await transport.open("GET", f"{url}/1")  # nobody writes seq 1
            with pytest.raises(TransportTimeout) as info:
                await get.read_head()
            assert info.value.phase == "first_byte"
            await get.aclose()


async def test_between_chunks_deadline(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        async with open_publisher(url) as pub, pub.segment() as seg:
            await seg.send(b"first")
            async with open_subscriber(url, start=0, timeouts=Timeouts(between_chunks=0.1)) as sub:
                segment = await sub.next()
                assert segment is not None
                assert await segment.__anext__() == b"first"
                with pytest.raises(TransportTimeout) as info:
                    await segment.__anext__()
                assert info.value.phase == "between_chunks"
            await seg.send(b" and the rest")


async def test_connection_refused_is_a_transport_error() -> None:
    async with scripted_server(read_request_head) as base:  # type: ignore[arg-type]
        pass
    with trio.fail_after(STEP):
        async with Transport() as transport:
            with pytest.raises(TransportError, match="connect"):
                await transport.request("GET", f"{base}/ch/next")


async def test_max_connections_waits_within_the_connect_deadline(
    trickle_server: RunningServer,
) -> None:
    url = f"{trickle_server.url}/{fresh_name()}"
    with trio.fail_after(STEP):
        async with Transport(max_connections=1, timeouts=Timeouts(connect=0.1)) as transport:
            busy = await transport.open("POST", f"{url}/0", content_length=None)
            with pytest.raises(TransportTimeout) as info:
                await transport.open("GET", f"{url}/next")
            assert info.value.phase == "connect"
            await busy.end()
            await busy.read_body()
            await busy.aclose()  # back to the pool: the slot is free again
            assert (await transport.request("GET", f"{url}/next")).status == 200


def test_urls() -> None:
    origin, target = split_url("https://[::1]:8443/trickle/cam?x=1")
    assert (origin.host, origin.port, origin.host_header, target) == (
        "::1",
        8443,
        "[::1]:8443",
        "/trickle/cam?x=1",
    )
    assert split_url("http://example.com/cam")[0].host_header == "example.com"
    for bad in ("ftp://h/x", "http:///x", "http://h:99999/x", "http://h/a b"):
        with pytest.raises(ValueError):  # ruff: ignore[pytest-raises-too-broad] - the message varies
            split_url(bad)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def tls_server(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[RunningServer]:
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(pem)
    settings = Settings(host="127.0.0.1", port=0, autocreate=True)
    async with open_server(settings.replace(certfile=str(pem), keyfile=str(pem))) as server:
        yield server


async def test_tls_verifies_certificates_by_default(ca: trustme.CA, tmp_path: Path) -> None:
    with trio.fail_after(STEP):
        async with tls_server(ca, tmp_path) as server:
            url = f"{server.url}/{fresh_name()}"
            assert url.startswith("https://")
            # Not trusted: refused.
            async with Transport() as transport:
                with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                    await transport.request("POST", url)
            # Trusted through the caller's context: a whole publish/subscribe round trip.
            context = make_ssl_context()
            ca.configure_trust(context)
            async with (
                open_publisher(url, ssl_context=context) as pub,
                open_subscriber(url, start=0, ssl_context=context) as sub,
            ):
                await pub.write(b"over TLS")
                segment = await sub.next()
                assert segment is not None
                assert await segment.read() == b"over TLS"


async def test_tls_insecure_accepts_a_self_signed_certificate(
    ca: trustme.CA, tmp_path: Path
) -> None:
    with trio.fail_after(STEP):
        async with tls_server(ca, tmp_path) as server:
            url = f"{server.url}/{fresh_name()}"
            async with open_publisher(url, insecure=True) as pub:
                assert await pub.write(b"trusting anyone") == 0
    with pytest.raises(ValueError, match="not both"):
        Transport(insecure=True, ssl_context=ssl.create_default_context())
