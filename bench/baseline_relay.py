"""A minimal relay to compare against: bare ASGI on hypercorn + trio, no protocol features.

What it does: ``POST /{ch}/{seq}`` appends the body to segment ``seq`` as it arrives;
``GET /{ch}/{seq}`` (``-1`` = next write, ``-2`` = current) streams the segment from
byte 0, waiting for more until the POST ends; a GET for a seq not there yet creates
it (so preconnects work); the last 5 segments are kept. ``POST /{ch}`` and
``DELETE /{ch}`` create and delete, ``GET /healthz`` answers ok.

What it leaves out on purpose: leases and the DELETE ordering, hooks, base path,
validation, 470 details, ``Lp-Trickle-Latest``/``-Closed``, zero-byte rules, idle sweep,
resets, keepalives, limits. It is the floor: "what does hypercorn + trio cost for the
bytes alone". Run: ``python -m bench.baseline_relay --port 8080``.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

WINDOW = 5


class Segment:
    __slots__ = ("changed", "chunks", "closed")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.changed = trio.Event()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def append(self, data: bytes) -> None:
        if data and not self.closed:
            self.chunks.append(data)
            self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()


class Channel:
    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}
        self.next_write = 0

    def segment(self, seq: int) -> tuple[int, Segment | None]:
        """Segment ``seq`` (created if new; None if it left the window), seq resolved."""
        if seq == -1:
            seq = self.next_write
        elif seq == -2:
            seq = max(self.next_write - 1, 0)
        found = self.segments.get(seq)
        if found is None:
            if self.segments and seq <= max(self.segments) - WINDOW:
                return seq, None
            found = self.segments[seq] = Segment()
            for old in [s for s in self.segments if s <= seq - WINDOW]:
                self.segments.pop(old).close()
        return seq, found


channels: dict[str, Channel] = {}


async def respond(send: Any, status: int, body: bytes = b"", headers: Any = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = scope["path"].strip("/").split("/")
    method = scope["method"]
    if parts == ["healthz"]:
        await respond(send, 200, b"ok\n")
    elif len(parts) == 1 and method in ("POST", "DELETE"):
        if method == "POST":
            channels.setdefault(parts[0], Channel())
        elif (gone := channels.pop(parts[0], None)) is not None:
            for old in gone.segments.values():
                old.close()
        await respond(send, 200)
    elif len(parts) == 2 and method in ("GET", "POST") and parts[1].lstrip("-").isdigit():
        channel = channels.setdefault(parts[0], Channel())
        seq, segment = channel.segment(int(parts[1]))
        seq_header = [(b"lp-trickle-seq", b"%d" % seq)]
        if segment is None:
            await respond(send, 470, b"Entry not found")
        elif method == "POST":
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                if message.get("body") and not segment.chunks:
                    channel.next_write = seq + 1
                segment.append(message.get("body", b""))
                more = message.get("more_body", False)
            segment.close()
            await respond(send, 200, headers=seq_header)
        else:
            index = 0
            while index < len(segment.chunks) or not segment.closed:
                if index == len(segment.chunks):
                    await segment.changed.wait()
                    continue
                if index == 0:
                    start = {"type": "http.response.start", "status": 200, "headers": seq_header}
                    await send(start)
                data = b"".join(segment.chunks[index:])
                index = len(segment.chunks)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if index == 0:
                await respond(send, 200, headers=seq_header)
            else:
                await send({"type": "http.response.body", "body": b""})
    else:
        await respond(send, 404, b"Stream not found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2940)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.read_timeout = None
    config.accesslog = None
    config.include_server_header = False
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
