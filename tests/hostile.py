"""The hostile-client harness: attacks over real loopback sockets, measured.

Each attack runs against a real server (in this process, so that its trio tasks, open
descriptors and memory can be read) while a *witness* channel is published and read
with known bytes. :func:`run_attack` then checks what every attack must leave behind:

- no crash and no 5xx: no response seen by a client is 5xx, no error was logged
  (hypercorn logs an app's exception as "Error in ASGI Framework"), ``/healthz`` answers;
- no hang: the whole attack is bounded (``fail_after``), and so is the recovery;
- no leak: once the attack's clients are gone and its channels deleted, the number of
  trio tasks and open descriptors comes back to the baseline; RSS stays under a bound;
- the witness channel's bytes are intact, segment by segment.

The figures of every run (requests tried, connections held at once, peak memory above
the baseline, recovery time) are kept in :data:`FIGURES` and printed at the end of the
test session. ``TRICKLE_HOSTILE=large`` runs every attack at its large size (the CI
runs the small one). Every loop here is bounded in count and time; every address is
127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trickle_trio.server import RunningServer

from .sockets import call, connect, until

LARGE = os.environ.get("TRICKLE_HOSTILE", "small") == "large"
#: Bound of one attack, and of the recovery after it.
ATTACK_LIMIT = 600 if LARGE else 60
RECOVERY_LIMIT = 60 if LARGE else 30
#: RSS may grow at most this much above the baseline during an attack (the server's
#: documented bounds are far lower for the sizes used here; this catches a runaway).
RSS_BOUND = (1024 if LARGE else 256) * 1024 * 1024

#: One row per attack run: printed by tests/conftest.py at the end of the session.
FIGURES: list[dict[str, Any]] = []


def size(small: int, large: int) -> int:
    """The count an attack uses at the size this run has."""
    return large if LARGE else small


@dataclass
class Sample:
    tasks: int
    fds: int
    rss: int  # bytes

    @classmethod
    def now(cls) -> Sample:
        with open("/proc/self/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return cls(
            trio.lowlevel.current_statistics().tasks_living,
            len(os.listdir("/proc/self/fd")),
            rss * 1024,
        )


@dataclass
class Tally:
    """What an attack's clients saw; the attack fills it in."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    held: int = 0  # connections held open at once, at the peak
    figures: dict[str, Any] = field(default_factory=dict)

    def saw(self, status: int) -> None:
        self.requests += 1
        self.statuses[status] += 1


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Lines(logging.Handler):
    """Every log line, formatted, to look for secrets in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(record.getMessage())


WITNESS = "witness"


def witness_bytes(seq: int) -> bytes:
    return b"".join(b"<w%d.%d>" % (seq, index) for index in range(200))


@dataclass
class Witness:
    """A publisher and a subscriber on their own channel, segment after segment."""

    server: RunningServer
    headers: list[tuple[str, str]]
    segments: int = 0
    wrong: list[int] = field(default_factory=list)

    async def one_segment(self, seq: int) -> None:
        data = witness_bytes(seq)
        publisher = await connect(self.server.url)
        try:
            subscriber = await connect(self.server.url)
        except BaseException:
            with trio.CancelScope(shield=True):
                await publisher.aclose()
            raise
        try:
            await publisher.start("POST", f"/{WITNESS}/{seq}", self.headers)
            await publisher.send(data[: len(data) // 2])
            await until(lambda: _in_window(self.server, seq))
            await subscriber.start("GET", f"/{WITNESS}/{seq}", self.headers)
            await subscriber.end()
            await publisher.send(data[len(data) // 2 :])
            await publisher.end()
            assert (await publisher.response()).status == 200
            reply = await subscriber.response()
            if reply.status != 200 or reply.body != data:
                self.wrong.append(seq)
            self.segments += 1
        finally:
            with trio.CancelScope(shield=True):  # aclose checkpoints: close both regardless
                await publisher.aclose()
                await subscriber.aclose()

    async def run(self, stop: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        await self.one_segment(self.segments)
        task_status.started()
        while not stop.is_set():
            await self.one_segment(self.segments)
            with trio.move_on_after(0.05):
                await stop.wait()


def _in_window(server: RunningServer, seq: int) -> bool:
    channel = server.registry.get(WITNESS)
    return channel is not None and channel.window.get(seq) is not None


@asynccontextmanager
async def _watching_logs() -> AsyncIterator[tuple[_Errors, _Lines]]:
    errors, lines = _Errors(), _Lines()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(errors)
    root.addHandler(lines)
    try:
        yield errors, lines
    finally:
        root.removeHandler(errors)
        root.removeHandler(lines)
        root.setLevel(level)


def _back_to(baseline: Sample, server: RunningServer) -> bool:
    now = Sample.now()
    registry = server.registry
    return (
        now.tasks <= baseline.tasks
        and now.fds <= baseline.fds
        and not registry.channels()
        and not registry.retired()
    )


async def run_attack(
    name: str,
    server: RunningServer,
    attack: Callable[[RunningServer, Tally], Awaitable[None]],
    *,
    token: str | None = None,
    secrets: tuple[str, ...] = (),
    allowed_5xx: frozenset[int] = frozenset(),
) -> Tally:
    """Run ``attack`` with a witness beside it; check and record what it left."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    tally = Tally()
    witness = Witness(server, headers)
    async with _watching_logs() as (errors, lines):
        stop = trio.Event()
        with trio.fail_after(ATTACK_LIMIT):
            async with trio.open_nursery() as warm_up:  # the reactor and pools start once
                warm_up.start_soon(witness.one_segment, 0)
            witness.segments = 1
            await server.registry.close_all()
            await until(lambda: not server.registry.retired())
            baseline = Sample.now()
            peak = baseline.rss
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                await nursery.start(witness.run, stop)

                async def sample_memory() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, Sample.now().rss)
                        await trio.sleep(0.1)

                nursery.start_soon(sample_memory)
                await attack(server, tally)
                elapsed = trio.current_time() - started
                stop.set()
                health = await call(server.url, "GET", "/healthz")
                assert health.status == 200, "the server stopped answering"
                nursery.cancel_scope.cancel()
        ended = trio.current_time()
        with trio.fail_after(RECOVERY_LIMIT):
            await server.registry.close_all()
            await until(lambda: _back_to(baseline, server))
        recovered = trio.current_time() - ended
        after = Sample.now()
    fives = {
        status: count
        for status, count in tally.statuses.items()
        if status >= 500 and status not in allowed_5xx
    }
    assert not fives, f"{name}: 5xx answers {fives}"
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert witness.wrong == [], f"{name}: witness segments with wrong bytes {witness.wrong}"
    assert peak - baseline.rss < RSS_BOUND, f"{name}: RSS grew {peak - baseline.rss} bytes"
    for secret in secrets:
        assert not any(secret in line for line in lines.text), f"{name}: a token was logged"
    FIGURES.append(
        {
            "attack": name,
            "size": "large" if LARGE else "small",
            "requests": tally.requests,
            "held": tally.held,
            "statuses": dict(sorted(tally.statuses.items())),
            "witness_segments": witness.segments,
            "seconds": round(elapsed, 2),
            "peak_rss_mib": round((peak - baseline.rss) / 2**20, 1),
            "recovery_s": round(recovered, 2),
            "tasks": f"{baseline.tasks}->{after.tasks}",
            "fds": f"{baseline.fds}->{after.fds}",
            **tally.figures,
        }
    )
    return tally


# -- raw connections -----------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def statuses_in(data: bytes) -> list[int]:
    """The status of every response in ``data`` (1xx included)."""
    return [int(match.group(1)) for match in _STATUS.finditer(data)]


def port_of(server: RunningServer) -> int:
    return int(server.urls[0].rsplit(":", 1)[1])


async def open_raw(server: RunningServer) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port_of(server))


async def read_until_closed(stream: trio.SocketStream, limit: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``limit`` passes (False)."""
    data = b""
    with trio.move_on_after(limit):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return data, True
            if not chunk:
                return data, True
            data += chunk
    return data, False


def abort(stream: trio.SocketStream) -> None:
    """Close with a reset (SO_LINGER 0): the way a crashed client goes."""
    import socket
    import struct

    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
