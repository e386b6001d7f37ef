"""A tiny full-duplex HTTP/1.1 test client on h11 for the real-socket tests (level 4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import trio

#: How often ``until`` looks at server state. Level-4 tests cannot use MockClock (it
#: jumps while socket I/O is in flight), so they poll, always under a fail_after.
POLL_INTERVAL = 0.005


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, polling; only ever call under ``fail_after``."""
    while not predicate():  # ruff: ignore[async-busy-wait] - state of another process or the kernel
        await trio.sleep(POLL_INTERVAL)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)


class Conn:
    """One request on its own connection; the body may be streamed and left idle."""

    def __init__(self, stream: trio.abc.Stream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def start(
        self, method: str, path: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        all_headers = [("Host", self.host), *(headers or [])]
        if method == "POST" and not any(k.lower() == "content-length" for k, _ in all_headers):
            all_headers.append(("Transfer-Encoding", "chunked"))
        await self._send(h11.Request(method=method, target=path, headers=all_headers))

    async def send(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
                continue
            assert isinstance(event, h11.Event)
            return event

    async def head(self) -> Reply:
        """Wait for the status line and headers (skipping 1xx)."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                self.reply = Reply(event.status_code, headers)
                return self.reply
            assert isinstance(event, h11.InformationalResponse), event

    async def chunk(self) -> bytes | None:
        """The next body bytes, or None at the end of the response."""
        event = await self._next_event()
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            self.reply.body += data
            self.reply.chunks.append(data)
            return data
        assert isinstance(event, h11.EndOfMessage), event
        return None

    async def response(self) -> Reply:
        """The whole response (the rest of it, if its head was already read)."""
        reply = getattr(self, "reply", None) or await self.head()
        while await self.chunk() is not None:
            pass
        return reply

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(url: str) -> Conn:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    return Conn(stream, parts.netloc)


async def call(
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    """One whole request on a fresh connection."""
    conn = await connect(url)
    try:
        headers = [("Content-Length", str(len(body))), *(headers or [])]
        await conn.start(method, path, headers)
        if body:
            await conn.send(body)
        await conn.end()
        return await conn.response()
    finally:
        await conn.aclose()
