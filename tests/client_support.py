"""Helpers for the client tests (tests/test_client_*.py): scripted servers, a cuttable
proxy, a request-recording transport, polling, and counting tasks.

Real-socket tests bound themselves with ``trio.fail_after`` and never sleep to
synchronise: they poll server state (:func:`wait_until`) or wait on events.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from trickle_trio.client import Transport
from trickle_trio.client.connection import Exchange

#: Bound for every real-socket test step.
STEP = 10.0

_names = itertools.count()


def fresh_name(prefix: str = "ch") -> str:
    return f"{prefix}-{next(_names)}"


async def wait_until(predicate: Callable[[], object], *, poll: float = 0.005) -> None:
    """Poll ``predicate`` until it is true (bound it with ``fail_after`` outside)."""
    while not predicate():  # ruff: ignore[async-busy-wait] - state of a server or the kernel
        await trio.sleep(poll)


def task_names() -> list[str]:
    """The names of every task in this run."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return names


class RecordingTransport(Transport):
    """A Transport that logs every request it opens, and every body end, in order."""

    def __init__(self, log: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[str] = [] if log is None else log

    async def open(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_length: int | None = 0,
        fresh: bool = False,
    ) -> Exchange:
        path = url.split("/", 3)[3]
        self.log.append(f"{method} /{path}")
        exchange = await super().open(
            method, url, headers, content_length=content_length, fresh=fresh
        )
        if content_length is None:
            log, end = self.log, exchange.end

            async def logged_end() -> None:
                log.append(f"END {method} /{path}")
                await end()

            exchange.end = logged_end  # type: ignore[method-assign]
        return exchange


# -- scripted servers ------------------------------------------------------------------------


async def read_request_head(stream: trio.SocketStream) -> bytes:
    """Read until the end of a request head; b"" if the peer left first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        data += chunk
    return data


@asynccontextmanager
async def scripted_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 running ``handler(stream)`` per connection; yields its
    base URL (``http://127.0.0.1:port``)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()


class Proxy:
    """A TCP proxy in front of a server, whose live connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._streams: set[trio.SocketStream] = set()

    async def handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        self._streams |= {client, server}

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                while data := await src.receive_some(65536):
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(dst)
                await trio.aclose_forcefully(src)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
        finally:
            self._streams -= {client, server}

    async def cut(self) -> None:
        """Close every connection through the proxy at once (both sides)."""
        for stream in list(self._streams):
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_proxy(target_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    """A :class:`Proxy` to ``target_url``'s port; yields (proxy, base URL via the proxy)."""
    port = int(target_url.rsplit(":", 1)[1].split("/", 1)[0])
    rest = target_url.rsplit(":", 1)[1].partition("/")[2]
    proxy = Proxy(port)
    async with scripted_server(proxy.handle) as base:  # type: ignore[arg-type]
        yield proxy, f"{base}/{rest}".rstrip("/")
