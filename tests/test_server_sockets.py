"""Over real sockets with hypercorn (level 4): what only a real connection can show.

Each test is bounded with trio.fail_after; waiting for server state is done by polling
it under that bound (MockClock is not usable with socket I/O in flight).
"""

from __future__ import annotations

import json
import socket

import h11
import pytest
import trio
import trustme

from trickle_trio.config import Settings
from trickle_trio.server import BindError, RunningServer, open_server

from .client_support import task_names
from .sockets import call, connect, until

LIMIT = 10


def path_of(server: RunningServer, path: str) -> str:
    return server.state.base_path.rstrip("/") + path


async def test_chunks_stream_through_real_sockets(trickle_server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        publisher = await connect(trickle_server.url)
        subscriber = await connect(trickle_server.url)
        await publisher.start("POST", "/cam/0", [("Content-Type", "video/mp2t")])
        await until(lambda: "cam" in trickle_server.registry)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        await publisher.send(b"frame-1")
        head = await subscriber.head()
        assert head.status == 200
        assert head.headers["lp-trickle-seq"] == "0"
        assert head.headers["content-type"] == "video/mp2t"
        assert head.headers["transfer-encoding"] == "chunked"
        assert "server" not in head.headers
        assert await subscriber.chunk() == b"frame-1"
        await publisher.send(b"frame-2")
        assert await subscriber.chunk() == b"frame-2"
        await publisher.end()
        assert (await publisher.response()).headers["lp-trickle-seq"] == "0"
        assert await subscriber.chunk() is None
        await publisher.aclose()
        await subscriber.aclose()


async def test_publisher_connection_breaking_mid_body_ends_subscribers_cleanly(
    trickle_server: RunningServer,
) -> None:
    with trio.fail_after(LIMIT):
        publisher = await connect(trickle_server.url)
        await publisher.start("POST", "/cam/0")
        await publisher.send(b"written before the break")
        await until(lambda: "cam" in trickle_server.registry)
        subscriber = await connect(trickle_server.url)
        await subscriber.start("GET", "/cam/0")
        await subscriber.end()
        assert (await subscriber.head()).status == 200
        await publisher.aclose()  # no terminating chunk: the body is cut
        reply = await subscriber.response()  # ends cleanly, not hanging
        assert reply.body == b"written before the break"
        await subscriber.aclose()
        late = await call(trickle_server.url, "GET", "/cam/0")
        assert late.body == b"written before the break"


async def test_subscriber_leaving_releases_its_lease(trickle_server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        await call(trickle_server.url, "POST", "/cam")
        channel = trickle_server.registry.get("cam")
        assert channel is not None
        subscribers = [await connect(trickle_server.url) for _ in range(20)]
        for subscriber in subscribers:
            await subscriber.start("GET", "/cam/0")
            await subscriber.end()
        await until(lambda: len(channel.subscribers) == 20)
        for subscriber in subscribers:
            await subscriber.aclose()
        await until(lambda: len(channel.subscribers) == 0)


async def test_idle_preconnect_to_unknown_channel_gets_404_before_any_body() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=False)
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/unknown/0")  # the body never starts
            reply = await preconnect.response()
            assert (reply.status, reply.body) == (404, b"Stream not found\n")
            assert reply.headers["connection"] == "close"
            await preconnect.aclose()


async def test_delete_releases_an_idle_preconnect_over_the_wire(
    trickle_server: RunningServer,
) -> None:
    trickle_server.registry.create("cam", "video/mp2t")
    with trio.fail_after(LIMIT):
        preconnect = await connect(trickle_server.url)
        await preconnect.start("POST", "/cam/0")
        channel = trickle_server.registry.get("cam")
        assert channel is not None
        await until(lambda: len(channel.publishers) == 1)
        assert (await call(trickle_server.url, "DELETE", "/cam")).status == 200
        reply = await preconnect.response()
        assert reply.status == 200
        assert reply.headers["lp-trickle-closed"] == "terminated"
        assert reply.headers["lp-trickle-seq"] == "0"
        await preconnect.aclose()


async def test_shutdown_drains_every_channel_before_hypercorn_stops() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, graceful_timeout=30)
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            await call(server.url, "POST", "/cam/0", b"first")
            subscriber = await connect(server.url)
            await subscriber.start("GET", "/cam/-1")
            await subscriber.end()
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/cam/1")
            channel = server.registry.get("cam")
            assert channel is not None
            await until(lambda: (len(channel.subscribers), len(channel.publishers)) == (1, 1))
            await server.shutdown()
            sub_reply = await subscriber.response()
            pub_reply = await preconnect.response()
            await subscriber.aclose()
            await preconnect.aclose()
        # Well inside graceful_timeout (30 s > LIMIT): nothing waited for hypercorn to
        # cut a stream.
    assert sub_reply.headers["lp-trickle-closed"] == "terminated"
    assert sub_reply.headers["connection"] == "close"  # no keep-alive while draining
    assert pub_reply.headers["lp-trickle-closed"] == "terminated"


# Stock hypercorn shields its socket writes (hypercorn/trio/tcp_server.py, protocol_send):
# there a reader that never reads holds the worker's shutdown until it is killed.
@pytest.mark.fast_path
async def test_shutdown_cuts_a_reader_that_stopped_reading_visibly() -> None:
    """The drain deletes every channel, but a reader that stopped reading in the middle
    of a big segment can't finish: once hypercorn's graceful timeout runs out, its
    connection is reset (the server exits, nothing waits for the client) and the
    response has no terminating chunk: never a clean end of a cut segment."""
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, graceful_timeout=0.5)
    data = b"z" * (32 * 1024 * 1024)  # far more than loopback socket buffers hold
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            assert (await call(server.url, "POST", "/cam/0", data)).status == 200
            reader = await connect(server.url)
            await reader.start("GET", "/cam/0")
            await reader.end()
            assert (await reader.head()).status == 200
            await server.shutdown()
        # The server has stopped (the block ended) while the reader held data unread.
        got = 0
        clean = True
        try:
            while (chunk := await reader.chunk()) is not None:
                got += len(chunk)
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            clean = False
        await reader.aclose()
    assert not clean
    assert got < len(data)


async def test_a_delete_leaves_only_what_a_slow_reader_takes_and_then_nothing() -> None:
    """DELETE with a reader that stopped reading in the middle of a big segment, an idle
    preconnect and a waiting subscriber: the DELETE is answered while the reader still
    reads nothing, the name is free, what the reader holds is counted; once it has read
    every byte (a clean end) and everyone has left, the tasks and counters are back to
    where they were."""
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, teardown_grace=600)
    data = bytes(range(256)) * (32 * 1024 * 1024 // 256)
    with trio.fail_after(LIMIT * 3):
        async with open_server(settings) as server:
            await call(server.url, "GET", "/healthz")
            baseline = len(task_names())
            assert (await call(server.url, "POST", "/cam/0", data)).status == 200
            reader = await connect(server.url)
            await reader.start("GET", "/cam/0")
            await reader.end()
            assert (await reader.head()).status == 200
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/cam/1")
            waiting = await connect(server.url)
            await waiting.start("GET", "/cam/1")
            await waiting.end()
            channel = server.registry.get("cam")
            assert channel is not None
            await until(lambda: (len(channel.subscribers), len(channel.publishers)) == (2, 1))
            assert (await call(server.url, "DELETE", "/cam")).status == 200
            assert (await call(server.url, "GET", "/cam/0")).status == 404
            assert (await waiting.response()).headers["lp-trickle-closed"] == "terminated"
            assert (await preconnect.response()).headers["lp-trickle-closed"] == "terminated"
            status = json.loads((await call(server.url, "GET", "/_status")).body)
            assert status["channels_retired"] == 1
            assert status["retained_bytes"] == len(data)
            assert status["retired"][0]["channel"] == "cam"
            metrics = (await call(server.url, "GET", "/metrics")).body.decode()
            assert "trickle_channels_retired 1.0" in metrics
            assert f"trickle_retained_bytes {float(len(data)):.7e}" in metrics
            # A publisher restarting now starts a brand-new channel under the name.
            assert (await call(server.url, "POST", "/cam")).status == 200
            fresh = server.registry.get("cam")
            assert fresh is not None
            assert fresh is not channel
            assert (fresh.next_write, fresh.closed) == (0, False)
            assert (await call(server.url, "DELETE", "/cam")).status == 200
            got = b""
            while (chunk := await reader.chunk()) is not None:
                got += chunk
            assert got == data  # every byte, then the terminating chunk
            for conn in (reader, preconnect, waiting):
                await conn.aclose()
            await channel.wait_deleted()
            await until(lambda: len(task_names()) <= baseline)
            assert server.registry.retired() == []
            assert server.registry.gauges()["retained_bytes"] == 0


async def test_tls(tmp_path: object) -> None:
    import ssl
    from pathlib import Path

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = Path(str(tmp_path))
    cert.private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        autocreate=True,
        certfile=str(directory / "server.pem"),
        keyfile=str(directory / "server.pem"),
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            assert server.url.startswith("https://")
            port = int(server.url.rsplit(":", 1)[1])
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
            from .sockets import Conn

            conn = Conn(stream, f"127.0.0.1:{port}")
            await conn.start("POST", "/cam/0", [("Content-Length", "6")])
            await conn.send(b"secret")
            await conn.end()
            assert (await conn.response()).headers["lp-trickle-seq"] == "0"
            await conn.aclose()


KEEP_ALIVE = 0.2


async def test_no_server_timeout_cuts_an_idle_preconnect() -> None:
    """hypercorn can't send the reference's 100 Continue keepalives; instead nothing in
    the stack times an in-flight request out: its keep-alive timeout only applies
    between requests, and there is no read timeout."""
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, keep_alive_timeout=KEEP_ALIVE)
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/cam/0")
            await trio.sleep(5 * KEEP_ALIVE)  # the point of the test: real idle time
            await preconnect.send(b"late but fine")
            await preconnect.end()
            assert (await preconnect.response()).status == 200
            await preconnect.aclose()
            assert (await call(server.url, "GET", "/cam/0")).body == b"late but fine"


async def test_a_taken_port_is_one_bind_error_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as caught, trio.fail_after(LIMIT):
            async with open_server(Settings(port=port)):
                pytest.fail("served on a taken port")  # pragma: no cover
    assert str(caught.value) == f"cannot bind 127.0.0.1:{port}: address already in use"
