"""trickle_trio/http/reactor.py: one task reading many sockets, over socket pairs."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from trickle_trio.http.reactor import Reactor, current_reactor

LIMIT = 10


def _reactor() -> Reactor:
    reactor = current_reactor()
    assert reactor is not None  # Linux: the suite runs there
    return reactor


async def test_a_parked_task_sleeps_while_its_callback_keeps_reading() -> None:
    reactor = _reactor()
    assert current_reactor() is reactor  # one per run
    ours, peer = trio.socket.socketpair()
    read: list[bytes] = []
    arrived = trio.Event()

    def on_readable() -> bool:
        data = os.read(ours.fileno(), 100)
        read.append(data)
        arrived.set()
        return data != b"stop"

    woken = False

    async def parked() -> None:
        nonlocal woken
        await reactor.wait(ours.fileno(), on_readable)
        woken = True

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked)
            for message in (b"one", b"two", b"three"):
                arrived = trio.Event()
                await peer.send(message)
                await arrived.wait()
                assert read[-1] == message
                await trio.testing.wait_all_tasks_blocked()
                assert not woken
            await peer.send(b"stop")
    assert woken
    assert read == [b"one", b"two", b"three", b"stop"]
    ours.close()
    peer.close()


async def test_an_error_in_the_callback_is_raised_in_the_parked_task() -> None:
    reactor = _reactor()
    ours, peer = trio.socket.socketpair()

    def on_readable() -> bool:
        os.read(ours.fileno(), 10)
        raise ConnectionResetError("gone")

    with trio.fail_after(LIMIT):
        await peer.send(b"x")
        with pytest.raises(ConnectionResetError):
            await reactor.wait(ours.fileno(), on_readable)
        # and the socket left the reactor: it can wait there again
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reactor.wait, ours.fileno(), lambda: True)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    ours.close()
    peer.close()


async def test_a_cancelled_wait_leaves_the_reactor(autojump_clock: trio.testing.MockClock) -> None:
    reactor = _reactor()
    ours, peer = trio.socket.socketpair()
    calls = 0

    def on_readable() -> bool:
        nonlocal calls
        calls += 1
        return True  # reads nothing: level-triggered, it would be called again and again

    with trio.move_on_after(1):
        await reactor.wait(ours.fileno(), on_readable)
    await peer.send(b"unread")
    await trio.testing.wait_all_tasks_blocked()
    assert calls == 0
    read: list[bytes] = []

    def read_once() -> bool:
        read.append(os.read(ours.fileno(), 10))
        return False

    await reactor.wait(ours.fileno(), read_once)  # the same fd waits again: nothing stale
    assert read == [b"unread"]
    ours.close()
    peer.close()


async def test_release_wakes_the_parked_task_and_one_fd_has_one_waiter() -> None:
    reactor = _reactor()
    ours, peer = trio.socket.socketpair()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reactor.wait, ours.fileno(), lambda: True)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await reactor.wait(ours.fileno(), lambda: True)
            reactor.release(ours.fileno())
        reactor.release(ours.fileno())  # nobody parked: nothing happens
    ours.close()
    peer.close()
