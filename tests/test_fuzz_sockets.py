"""Socket-level fuzz of both HTTP servers: random request sequences on one keep-alive
connection.

tests/test_fuzz_http.py drives the app in-process, so the HTTP server (trickle_trio/h1,
which parses requests and frames and writes responses itself, or hypercorn) is not in
that loop. Here every Hypothesis example opens one connection to a real server and
sends a random sequence of publishes (any size from 0 B to 200 KiB, chunked in random
pieces or with Content-Length), subscribes to what was published (complete segments, so
nothing waits), ``DELETE``s of segments, ``/next``, health probes, ``HEAD`` and bad seqs,
one after the other on the same connection. Checked: every response parses with h11, no
status is 5xx, a GET returns exactly the bytes last published at that seq (or 470 once
the window moved on), and the connection stays usable after every kind of answer. The
same examples run with ``fast_path`` on and off (hypercorn as shipped): both must agree
with the model. 40 derandomized examples each in CI; ``TRICKLE_FUZZ_EXAMPLES=N`` for a
long run with fresh inputs.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trickle_trio.config import Settings
from trickle_trio.server import RunningServer, open_server

from .sockets import connect

LIMIT = 30
_names = itertools.count()


@dataclass(frozen=True)
class Ask:
    method: str
    target: str  # after /{ch}
    body: bytes = b""
    pieces: tuple[int, ...] | None = None  # chunk sizes; None = Content-Length


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    kind = draw(st.sampled_from(["post", "post", "post", "get", "get", "delete", "other"]))
    if kind == "post":
        seq = draw(st.integers(0, 7))
        size = draw(st.sampled_from([0, 1, 100, 5000, 65536, 65537, 200_000]))
        body = draw(st.binary(min_size=min(size, 8), max_size=min(size, 8))) * (size // 8 or 1)
        body = body[:size]
        pieces = None
        if draw(st.booleans()):
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
            edges = [0, *cuts, len(body)]
            pieces = tuple(b - a for a, b in itertools.pairwise(edges) if b > a)
        return Ask("POST", f"/{seq}", body, pieces)
    if kind == "get":
        return Ask("GET", f"/{draw(st.integers(0, 7))}")
    if kind == "delete":
        return Ask("DELETE", f"/{draw(st.integers(0, 7))}")
    return Ask(*draw(st.sampled_from([("GET", "/next"), ("GET", "/x1"), ("HEAD", "/0")])))


@settings(
    max_examples=int(os.environ.get("TRICKLE_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize="TRICKLE_FUZZ_EXAMPLES" not in os.environ,  # CI: the same inputs every run
    suppress_health_check=[HealthCheck.too_slow],
)
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "stock"])
@given(plan=st.lists(asks(), min_size=1, max_size=8))
async def test_random_requests_on_one_connection(fast_path: bool, plan: list[Ask]) -> None:
    settings_ = Settings(host="127.0.0.1", port=0, autocreate=True, fast_path=fast_path)
    async with open_server(settings_) as server:
        await _play(server, plan)


async def _play(server: RunningServer, plan: list[Ask]) -> None:
    channel = f"/fz{next(_names)}"
    published: dict[int, bytes] = {}  # seq -> bytes last published there, still held
    evicted: set[int] = set()  # published, then its slot went to another seq
    with trio.fail_after(LIMIT):
        conn = await connect(server.url)
        for planned in plan:
            ask = planned
            if ask.method == "GET" and ask.target[1:].isdigit():
                seq = int(ask.target[1:])
                if seq not in published and seq not in evicted:
                    # A GET ahead of the publisher would wait: ask for a known one.
                    known = sorted(published.keys() | evicted)
                    if not known:
                        continue
                    ask = Ask("GET", f"/{known[seq % len(known)]}")
            await conn.stream.send_all(_request_bytes(conn.h11, channel, ask))
            reply = await conn.response()
            assert reply.status < 500, (ask, reply.status)
            if ask.method == "POST" and reply.status == 200:
                seq = int(ask.target[1:])
                # As the reference: a seq takes slot seq % 5, whatever was there goes.
                for old in [old for old in published if old % 5 == seq % 5 and old != seq]:
                    del published[old]
                    evicted.add(old)
                published[seq] = ask.body
                evicted.discard(seq)
            elif ask.method == "GET" and ask.target[1:].isdigit():
                seq = int(ask.target[1:])
                if seq in published:
                    assert reply.status == 200, (ask, reply.status)
                    assert reply.body == published[seq], ask
                else:
                    assert reply.status == 470, (ask, reply.status)
            elif ask.method == "DELETE" and reply.status == 200:
                seq = int(ask.target[1:])
                published.pop(seq, None)  # closed; not followed further
                evicted.discard(seq)
            if conn.h11.our_state is h11.MUST_CLOSE or conn.h11.their_state is h11.MUST_CLOSE:
                await conn.aclose()
                conn = await connect(server.url)
            else:
                conn.h11.start_next_cycle()
                del conn.reply
        await conn.aclose()


def _request_bytes(client: h11.Connection, channel: str, ask: Ask) -> bytes:
    """The whole request, framed by the client's h11 (which then expects the answer)."""
    headers = [("Host", "fuzz")]
    if ask.method == "POST":
        if ask.pieces is None:
            headers.append(("Content-Length", str(len(ask.body))))
        else:
            headers.append(("Transfer-Encoding", "chunked"))
    out = [
        client.send(h11.Request(method=ask.method, target=channel + ask.target, headers=headers))
    ]
    offset = 0
    for size in ask.pieces if ask.pieces is not None else [len(ask.body)]:
        if size:
            out.append(client.send(h11.Data(data=ask.body[offset : offset + size])))
            offset += size
    out.append(client.send(h11.EndOfMessage()))
    return b"".join(part or b"" for part in out)
