"""Testing an asyncio trickle client against a server that breaks on cue.

The server is a real trickle-trio server in a child process (the ``trickle_server_process``
fixture of trickle-trio's pytest plugin); ``server.faults`` adds fault rules to it over
its control route. The client is ``aiotrickle.py`` beside this file (aiohttp). Each test
is one field failure: a POST cut mid-segment, a GET cut mid-segment, a 404 at teardown,
a stalled first byte.

The tests are sync functions that run their asyncio code with ``asyncio.run``, so they
run in any suite; with pytest-asyncio, ``@pytest.mark.asyncio async def`` tests work the
same way with the same fixture (see the README).
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiotrickle import Publisher, Subscriber

from trickle_trio.testing import ServerProcess

SEGMENT = 64 * 1024


def segment(seq: int) -> bytes:
    """Bytes no other segment has (a lost or mixed-up segment can't go unnoticed)."""
    return bytes([seq]) * 16 + os.urandom(SEGMENT - 16)


def test_a_post_cut_mid_segment_is_retried_without_losing_it(
    trickle_server_process: ServerProcess,
) -> None:
    server = trickle_server_process
    server.faults.add("cut", route="segment-post", seq=2, of="request", after=20_000)
    sent = [segment(seq) for seq in range(5)]

    async def scenario() -> list[tuple[int, bytes]]:
        async with aiohttp.ClientSession() as session:
            publisher = Publisher(session, f"{server.url}/cam")
            for seq, data in enumerate(sent):
                assert await publisher.publish(seq, data)
            assert [seq for seq, _ in publisher.retried] == [2]  # one break, one retry
            subscriber = Subscriber(session, f"{server.url}/cam", start=0)
            return [item async for item in subscriber.segments(limit=5)]

    assert asyncio.run(scenario()) == list(enumerate(sent))
    [fired] = server.faults.fired()
    assert (fired["action"], fired["seq"]) == ("cut", "2")


def test_a_get_cut_mid_segment_resumes_from_the_same_seq(
    trickle_server_process: ServerProcess,
) -> None:
    server = trickle_server_process
    server.faults.add("cut", route="segment-get", seq=1, after=10_000, how="rst")
    sent = [segment(seq) for seq in range(3)]

    async def scenario() -> tuple[list[tuple[int, bytes]], list[int]]:
        async with aiohttp.ClientSession() as session:
            publisher = Publisher(session, f"{server.url}/cam")
            for seq, data in enumerate(sent):
                assert await publisher.publish(seq, data)
            subscriber = Subscriber(session, f"{server.url}/cam", start=0)
            read = [item async for item in subscriber.segments(limit=3)]
            return read, subscriber.resumed

    read, resumed = asyncio.run(scenario())
    assert read == list(enumerate(sent))  # seq 1 whole, once, in its place
    assert resumed == [1]


def test_a_404_at_teardown_ends_the_clients_cleanly(
    trickle_server_process: ServerProcess,
) -> None:
    server = trickle_server_process
    server.faults.add("answer", route="segment-post", seq=3, status=404, body="Stream not found")
    server.faults.add("answer", route="segment-get", seq=2, status=404, body="Stream not found")

    async def scenario() -> tuple[int, list[int], str | None]:
        async with aiohttp.ClientSession() as session:
            publisher = Publisher(session, f"{server.url}/cam")
            published = 0
            for seq in range(10):  # still writing when the channel goes
                if not await publisher.publish(seq, segment(seq)):
                    break
                published += 1
            subscriber = Subscriber(session, f"{server.url}/cam", start=0)
            seqs = [seq async for seq, _ in subscriber.segments()]
            return published, seqs, subscriber.ended

    assert asyncio.run(scenario()) == (3, [0, 1], "not found")


def test_a_stalled_first_byte_trips_the_clients_own_timeout(
    trickle_server_process: ServerProcess,
) -> None:
    server = trickle_server_process
    server.faults.add("delay", route="segment-get", where="first-byte", seconds=3.0)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            assert await Publisher(session, f"{server.url}/cam").publish(0, segment(0))
            subscriber = Subscriber(session, f"{server.url}/cam", start=0, read_timeout=0.5)
            async for _ in subscriber.segments(limit=1):
                raise AssertionError("a stalled segment was read")  # pragma: no cover

    with pytest.raises(TimeoutError):  # without its own timeout it would wait out the 3 s
        asyncio.run(scenario())
    assert [fired["action"] for fired in server.faults.fired()] == ["delay"]
