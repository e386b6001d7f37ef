"""trickle_trio/h1/reactor.py: one task reading many sockets, over socket pairs."""

from __future__ import annotations

import os

import trio
import trio.testing

from trickle_trio.h1.reactor import Reactor, current_reactor

LIMIT = 10


def _reactor() -> Reactor:
    reactor = current_reactor()
    assert reactor is not None  # Linux: the suite runs there
    return reactor


async def test_a_callback_reads_every_time_its_socket_is_readable_until_it_says_stop() -> None:
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

    with trio.fail_after(LIMIT):
        reactor.watch(ours.fileno(), on_readable)
        assert reactor.watching(ours.fileno())
        for message in (b"one", b"two", b"stop"):
            arrived = trio.Event()
            await peer.send(message)
            await arrived.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert read == [b"one", b"two", b"stop"]
    assert not reactor.watching(ours.fileno())  # False unwatched it
    ours.close()
    peer.close()


async def test_bytes_a_callback_leaves_are_reported_again() -> None:
    reactor = _reactor()
    ours, peer = trio.socket.socketpair()
    read: list[bytes] = []
    done = trio.Event()

    def one_byte_at_a_time() -> bool:
        read.append(os.read(ours.fileno(), 1))
        if len(read) == 3:
            done.set()
            return False
        return True

    with trio.fail_after(LIMIT):
        reactor.watch(ours.fileno(), one_byte_at_a_time)
        await peer.send(b"abc")  # one readiness, three calls: level-triggered
        await done.wait()
    assert read == [b"a", b"b", b"c"]
    ours.close()
    peer.close()


async def test_unwatch_and_rewatch() -> None:
    reactor = _reactor()
    ours, peer = trio.socket.socketpair()
    calls: list[str] = []

    def first() -> bool:
        calls.append("first")
        os.read(ours.fileno(), 100)
        return True

    def second() -> bool:
        calls.append("second")
        os.read(ours.fileno(), 100)
        return False

    with trio.fail_after(LIMIT):
        reactor.watch(ours.fileno(), first)
        reactor.unwatch(ours.fileno())
        reactor.unwatch(ours.fileno())  # twice: harmless
        await peer.send(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert calls == []
        reactor.watch(ours.fileno(), first)
        reactor.watch(ours.fileno(), second)  # replaces the callback
        await trio.testing.wait_all_tasks_blocked()
    assert calls == ["second"]
    ours.close()
    peer.close()
