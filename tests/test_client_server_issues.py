"""Server behaviours found while testing the clients (fixed; kept as regressions)."""

from __future__ import annotations

import trio

from trickle_trio import LocalPublisher
from trickle_trio.client import open_subscriber
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name, wait_until


async def test_a_waiting_subscriber_gets_the_segment_completed_before_the_delete(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    registry = trickle_server.registry
    channel = registry.create(name, "text/plain")
    got: list[tuple[int, bytes]] = []
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:

            async def subscribe() -> None:
                async with open_subscriber(f"{trickle_server.url}/{name}", start=0) as sub:
                    async for segment in sub:
                        got.append((segment.seq, await segment.read()))

            nursery.start_soon(subscribe)
            await wait_until(lambda: len(channel.subscribers) == 1)  # GET 0 is waiting
            # The last segment, complete, then the DELETE at once (no checkpoint between:
            # the subscriber's handler has been woken but has not run yet).
            LocalPublisher(registry, name).write_nowait(b"last words")
            await registry.delete(name)
    assert got == [(0, b"last words")]
