"""``python -m bench.parser_cost``: CPU per response of the load generator's own HTTP
parser (``bench.client``: ``Conn.parse_head`` and ``Body.feed``) against h11, the
library a replacement would build on (httpx and trickle_trio's client use it).

Both parse the same bytes, with no socket in the way: a chunked response in reads of
64 KiB (the live engine's receive buffer), as many times as ``--repeat`` says, for two
shapes: the ``small`` scenario's 200-byte segment and a 1 MiB fan-out segment in 16 KiB
chunks. Both must hand back the whole body (checked), and only the CPU time of the
parsing is counted. Why the bench keeps its own parser: bench/README ("How the load
generator works").

Imports: stdlib, h11 and the bench's client.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import h11

from .client import Body, Conn

_READ = 64 * 1024
#: (label, body bytes, chunk bytes, responses per repeat)
SHAPES = (("200 B segment", 200, 200, 200), ("1 MiB segment, 16 KiB chunks", 2**20, 16384, 2))


def response(body: bytes, chunk: int) -> bytes:
    """A trickle GET's answer: a chunked body in ``chunk``-byte pieces."""
    parts = [b"HTTP/1.1 200 OK\r\nLp-Trickle-Seq: 7\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for i in range(0, len(body), chunk):
        piece = body[i : i + chunk]
        parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def parse_with_bench(wire: bytes, conn: Conn) -> int:
    """Body bytes of ``wire`` through the bench's parser, fed ``_READ`` bytes at a time
    into the connection's buffer the way ``Conn.recv`` leaves them."""
    got = 0

    def take(view: memoryview) -> None:
        nonlocal got
        got += len(view)

    conn.start = conn.end = 0
    body: Body | None = None
    for pos in range(0, len(wire), _READ):
        piece = wire[pos : pos + _READ]
        if conn.start == conn.end:
            conn.start = conn.end = 0
        conn.buf[conn.end : conn.end + len(piece)] = piece
        conn.end += len(piece)
        if body is None:
            head = conn.parse_head()
            if head is None:
                continue
            body = Body(head)
        if body.feed(conn, take):
            return got
    raise ValueError("the bench's parser did not finish the body")


def parse_with_h11(wire: bytes) -> int:
    """Body bytes of ``wire`` through h11, fed ``_READ`` bytes at a time."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/c/7", headers=[("Host", "bench")]))
    conn.send(h11.EndOfMessage())
    got, pos = 0, 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(wire[pos : pos + _READ])
            pos += _READ
        elif isinstance(event, h11.Data):
            got += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return got


def measure(repeat: int) -> list[tuple[str, float, float]]:
    """(shape, us per response with the bench's parser, us with h11) for each shape."""
    out = []
    a, b = socket.socketpair()  # a Conn needs a socket; nothing is sent on it
    try:
        conn = Conn(b, b"bench", _READ * 2)
        for label, size, chunk, count in SHAPES:
            wire = response(bytes(size), chunk)
            n = count * repeat
            started = time.process_time()
            for _ in range(n):
                if parse_with_bench(wire, conn) != size:
                    raise ValueError("the bench's parser lost bytes")
            ours = (time.process_time() - started) / n
            started = time.process_time()
            for _ in range(n):
                if parse_with_h11(wire) != size:
                    raise ValueError("h11 lost bytes")
            theirs = (time.process_time() - started) / n
            out.append((label, ours * 1e6, theirs * 1e6))
    finally:
        a.close()
        b.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parser_cost", description=__doc__)
    parser.add_argument("--repeat", type=int, default=100, help="scale of the run (default 100)")
    args = parser.parse_args(argv)
    print("| response | bench client us | h11 us | h11 / bench |")
    print("|---|---:|---:|---:|")
    for label, ours, theirs in measure(max(1, args.repeat)):
        print(f"| {label} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
