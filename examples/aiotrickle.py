"""A small asyncio trickle client on aiohttp, written for the examples (not a package).

It behaves as a careful field client should, and the examples in
``test_asyncio_client.py`` prove each behaviour against a server that breaks on cue:

- :class:`Publisher` POSTs one segment per seq; a connection that breaks mid-segment is
  retried on a fresh connection, with the whole segment, at the same seq (the server
  starts a seq afresh when it is POSTed again). A 404 or ``Lp-Trickle-Closed`` means the
  channel is gone: :meth:`Publisher.publish` returns False, nothing is raised.
- :class:`Subscriber` reads seq after seq; a response cut mid-segment (no clean end) is
  read again from the same seq; 470 jumps to ``Lp-Trickle-Latest``; 404 or
  ``Lp-Trickle-Closed`` ends the iteration cleanly. Its own ``read_timeout`` (seconds
  without a byte) raises ``TimeoutError``: a stalled server is an error, not a wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

CLOSED = "Lp-Trickle-Closed"
LATEST = "Lp-Trickle-Latest"
SEQ = "Lp-Trickle-Seq"

#: What a connection breaking mid-request looks like to aiohttp.
BROKEN = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


class ChannelError(Exception):
    """An answer the client can't go on from (a 5xx, or too many broken attempts)."""


class Publisher:
    """Publishes segments to ``channel_url`` (``http://host:port/name``)."""

    def __init__(self, session: aiohttp.ClientSession, channel_url: str, *, retries: int = 3):
        self.session = session
        self.url = channel_url
        self.retries = retries
        #: Attempts that broke and were retried, as (seq, error type name).
        self.retried: list[tuple[int, str]] = []

    async def publish(self, seq: int, data: bytes) -> bool:
        """POST ``data`` as segment ``seq``; False if the channel is gone."""
        for _attempt in range(self.retries + 1):
            try:
                async with self.session.post(f"{self.url}/{seq}", data=data) as response:
                    await response.read()
                    if response.status == 404 or CLOSED in response.headers:
                        return False
                    if response.status >= 400:
                        raise ChannelError(f"POST seq {seq}: {response.status}")
                    return True
            except TimeoutError:
                raise
            except BROKEN as exc:
                self.retried.append((seq, type(exc).__name__))
        raise ChannelError(f"POST seq {seq}: broke {self.retries + 1} times")

    async def close(self) -> None:
        """Delete the channel (subscribers see the end of the stream)."""
        async with self.session.delete(self.url) as response:
            await response.read()


class Subscriber:
    """Reads the segments of ``channel_url`` from ``start`` on."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        channel_url: str,
        *,
        start: int = 0,
        read_timeout: float | None = None,
        retries: int = 3,
    ):
        self.session = session
        self.url = channel_url
        self.seq = start
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(sock_read=read_timeout)
        #: The seqs read again after a response was cut.
        self.resumed: list[int] = []
        #: Why the iteration ended: "closed" (or "not found").
        self.ended: str | None = None

    async def segments(self, limit: int | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """(seq, bytes) of each whole segment, in order; at most ``limit`` of them."""
        failures = 0
        count = 0
        while limit is None or count < limit:
            try:
                async with self.session.get(
                    f"{self.url}/{self.seq}", timeout=self.timeout
                ) as response:
                    if response.status == 404:
                        self.ended = "not found"
                        return
                    if response.status == 470:
                        self.seq = int(response.headers[LATEST])
                        continue
                    if response.status >= 400:
                        raise ChannelError(f"GET seq {self.seq}: {response.status}")
                    data = await response.read()  # a cut raises: never a short segment
                    closed = CLOSED in response.headers
                    seq = int(response.headers.get(SEQ, self.seq))
            except TimeoutError:
                raise  # aiohttp's timeouts are connection errors too: never retried here
            except BROKEN:
                failures += 1
                if failures > self.retries:
                    raise ChannelError(f"GET seq {self.seq}: broke too often") from None
                self.resumed.append(self.seq)
                continue  # the same seq again
            failures = 0
            if closed and not data:
                self.ended = "closed"
                return
            yield seq, data
            count += 1
            self.seq = seq + 1
