"""The client fixtures of ``trickle_trio.testing`` (a publisher/subscriber pair)."""

from __future__ import annotations

import trio

from trickle_trio.client import Publisher, Subscriber
from trickle_trio.server import RunningServer
from trickle_trio.testing import ClientPair

from .client_support import STEP


async def test_the_pair_is_connected(trickle_clients: ClientPair) -> None:
    with trio.fail_after(STEP):
        seq = await trickle_clients.publisher.write(b"hello")
        segment = await trickle_clients.subscriber.next()
        assert segment is not None
        assert (segment.seq, await segment.read()) == (seq, b"hello")
        assert segment.content_type == "application/octet-stream"


async def test_each_test_gets_a_fresh_channel(
    trickle_server: RunningServer,
    trickle_channel_url: str,
    trickle_publisher: Publisher,
    trickle_subscriber: Subscriber,
) -> None:
    name = trickle_channel_url.rsplit("/", 1)[1]
    assert name in trickle_server.registry  # created before the test starts
    assert trickle_publisher.url == trickle_subscriber.url == trickle_channel_url
    assert trickle_publisher.next_seq == 0
