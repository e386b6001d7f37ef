"""trickle_trio/http/listener.py: waiting connections are accepted in batches."""

from __future__ import annotations

import hypercorn.trio.run as hypercorn_run
import pytest
import trio

from trickle_trio.http import listener
from trickle_trio.http.listener import BatchSocketListener

LIMIT = 10


async def _listening() -> tuple[BatchSocketListener, tuple[str, int]]:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return BatchSocketListener(sock), sock.getsockname()


async def test_waiting_connections_are_taken_without_a_scheduler_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener, "ACCEPT_BATCH", 2)
    batch, address = await _listening()
    with trio.fail_after(LIMIT):
        clients = [await trio.open_tcp_stream(*address) for _ in range(4)]
        accepted = []
        with trio.CancelScope() as scope:
            scope.cancel()  # any checkpoint in accept() would raise Cancelled here
            accepted.append(await batch.accept())
            accepted.append(await batch.accept())
            await batch.accept()  # a third in a row: through trio's accept, a checkpoint
        assert scope.cancelled_caught
        assert len(accepted) == 2
        with trio.CancelScope() as scope:  # that pass began a new batch
            scope.cancel()
            accepted.append(await batch.accept())
            accepted.append(await batch.accept())
        assert not scope.cancelled_caught
        for client, server_side in zip(clients, accepted, strict=True):
            await client.send_all(b"ping")
            assert await server_side.receive_some(10) == b"ping"
        with trio.CancelScope() as scope:  # nothing waiting: trio's accept, cancellable
            scope.cancel()
            await batch.accept()
        assert scope.cancelled_caught
        for stream in [*clients, *accepted]:
            await stream.aclose()
    await batch.aclose()


def test_hypercorn_builds_batching_listeners_and_sees_trio_otherwise() -> None:
    listener.install_for_hypercorn()
    listener.install_for_hypercorn()  # idempotent
    view = hypercorn_run.trio
    assert view.SocketListener is BatchSocketListener
    assert view.serve_listeners is trio.serve_listeners
    assert view.SSLListener is trio.SSLListener
