"""What the scenarios share: the plan a scenario hands the runner, size parsing,
channel set-up, percentiles, and the publisher's connection handling.

Imports: stdlib, trio and the bench's client.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..client import Conn, ConnPool, Head, HttpError, request_head
from ..servers import Endpoint

#: Counter slots in each worker's row, as the scenarios use them.
C_BYTES, C_UNITS, C_ERRORS, C_LOST, C_AUX = 0, 1, 2, 3, 4

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
#: Units a size may carry: SI (kB = 1000) and binary (KiB = 1024). A bare K, M or G is
#: refused as ambiguous rather than silently taken for one or the other.
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
}


def parse_size(text: str) -> int:
    """A byte count: ``"200"``, ``"64KiB"`` (65536), ``"1MB"`` (1,000,000), ``"1MiB"``.

    Raises:
        ValueError: not a number with one of :data:`SIZE_UNITS` (``"1M"`` is ambiguous).
    """
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in SIZE_UNITS:
        hint = " (ambiguous: say KiB/MiB/GiB for 1024s, kB/MB/GB for 1000s)" if m else ""
        raise ValueError(f"not a size: {text!r}{hint}")
    return round(float(m.group(1)) * SIZE_UNITS[unit])


def parse_rate(text: str) -> float:
    """Bits per second: ``"2M"``, ``"2Mbit"`` or ``"2Mbit/s"`` -> 2e6, ``"500k"`` -> 5e5
    (SI prefixes, as bit rates always are).

    Raises:
        ValueError: not a rate.
    """
    cleaned = text.strip().lower().removesuffix("/s").removesuffix("bit").removesuffix("bps")
    factor = {"k": 1e3, "m": 1e6, "g": 1e9}.get(cleaned[-1:], 1.0)
    if cleaned[-1:] in ("k", "m", "g"):
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned) * factor
    except ValueError:
        raise ValueError(f"not a bit rate: {text!r} (e.g. 2M, 500k, 2Mbit/s)") from None
    if value <= 0:
        raise ValueError(f"not a bit rate: {text!r} (must be > 0)")
    return value


def format_size(n: float) -> str:
    """``1048576`` -> ``"1MiB"``, ``1000000`` -> ``"1MB"``: exact units first."""
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "kB"):
        size = SIZE_UNITS[unit.lower()]
        if n >= size and n % size == 0:
            return f"{int(n // size)}{unit}"
    for unit in ("MiB", "KiB"):
        size = SIZE_UNITS[unit.lower()]
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values (nearest rank)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Plan:
    """What the runner needs to run one measurement of a scenario configuration."""

    #: (worker index, role, share) for every worker that takes part.
    jobs: list[tuple[int, str, Any]]
    #: Channels to create before and delete after: (name, MIME type).
    channels: list[tuple[str, str]]
    progress_slots: int = 0
    setup_timeout: float = 60.0
    run_timeout: float = 300.0


@dataclass
class Outcome:
    """A scenario's figures for one measurement."""

    #: Headline figures by name (see the scenario's ``METRICS``).
    metrics: dict[str, float]
    #: Correctness: every check's failure count (all 0 = the run was clean).
    checks: dict[str, int] = field(default_factory=dict)
    #: Raw samples (e.g. latencies in ms) for the CDF plots.
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: Extra notes (e.g. "publisher fell behind its schedule").
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(self.checks.values())


async def create_channels(
    endpoint: Endpoint, channels: list[tuple[str, str]], *, concurrency: int = 16
) -> None:
    """``POST /{ch}`` each channel (with ``Expect-Content``), a few at a time."""
    await _each(endpoint, channels, "POST", concurrency, ok=(200,))


async def delete_channels(
    endpoint: Endpoint, channels: list[tuple[str, str]], *, concurrency: int = 16
) -> None:
    """``DELETE /{ch}`` each channel; a 400/404 (already gone) is fine."""
    await _each(endpoint, channels, "DELETE", concurrency, ok=(200, 400, 404))


async def _each(
    endpoint: Endpoint,
    channels: list[tuple[str, str]],
    method: str,
    concurrency: int,
    ok: tuple[int, ...],
) -> None:
    todo = list(channels)
    failures: list[str] = []

    async def one_worker() -> None:
        conn: Conn | None = None
        try:
            while todo:
                name, mime = todo.pop()
                if conn is None or conn.closed:
                    conn = await Conn.open(endpoint.host, endpoint.port)
                await conn.request(method, endpoint.path(name), {"Expect-Content": mime})
                head = await conn.read_head()
                body = await conn.read_body_bytes(head)
                if head.status not in ok:
                    failures.append(f"{method} {name}: {head.status} {body[:80]!r}")
        finally:
            if conn is not None:
                conn.close()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, len(channels))):
                nursery.start_soon(one_worker)
    if failures:
        raise HttpError("; ".join(failures[:3]) + (" ..." if len(failures) > 3 else ""))


class Publisher:
    """One channel's publisher: preconnected POSTs on a pool of keep-alive connections.

    ``preconnect(seq)`` takes a connection and sends the head of a chunked
    ``POST /{ch}/{seq}``, which the server then holds idle; the caller streams the body
    and ends it, then ``read_answer(conn, seq)`` reads the answer. Connections go back
    to the pool when the server keeps them alive.
    """

    def __init__(self, endpoint: Endpoint, channel: str, mime: str) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.mime = mime
        self.pool = ConnPool(endpoint.host, endpoint.port)
        self.errors: list[str] = []

    async def preconnect(self, seq: int) -> Conn:
        conn = await self.pool.get()
        head = request_head(
            conn.host,
            "POST",
            self.endpoint.path(self.channel, seq),
            {"Content-Type": self.mime},
            body_length=None,
        )
        await conn.send(head)
        return conn

    async def read_answer(self, conn: Conn, seq: int) -> Head | None:
        """Read the answer to ``seq``'s POST (its body already ended); None on failure.

        Failures are recorded in ``errors``.
        """
        try:
            head = await conn.read_head()
            await conn.read_body_bytes(head)
        except HttpError as exc:
            self.errors.append(f"POST {self.channel}/{seq}: {exc}")
            conn.close()
            self.pool.put(conn)
            return None
        if head.status != 200:
            self.errors.append(f"POST {self.channel}/{seq}: status {head.status}")
        self.pool.put(conn)
        return head

    def close(self) -> None:
        self.pool.close()


class Subscriber:
    """One subscriber's connections: ``request(seq)`` sends ``GET /{ch}/{seq}`` on a
    pooled keep-alive connection; ``release(conn)`` hands it back after the body."""

    def __init__(self, endpoint: Endpoint, channel: str) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.pool = ConnPool(endpoint.host, endpoint.port)

    async def request(self, seq: int) -> Conn:
        conn = await self.pool.get()
        await conn.request("GET", self.endpoint.path(self.channel, seq))
        return conn

    def release(self, conn: Conn) -> None:
        self.pool.put(conn)

    def close(self) -> None:
        self.pool.close()


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``parts`` lists (some may be empty)."""
    out: list[list[Any]] = [[] for _ in range(parts)]
    for i, item in enumerate(items):
        out[i % parts].append(item)
    return out


class _Credit:
    """What both sides of the credit flow control share: the progress slots and a
    non-blocking UNIX datagram socket."""

    def __init__(self, address: str, progress: memoryview, subscribers: int) -> None:
        self.address = address
        self.progress = progress
        self.n = subscribers
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()


class CreditGate(_Credit):
    """Cross-process flow control: a publisher waits until its slowest subscriber has
    finished enough segments; subscribers wake it through an abstract UNIX datagram
    socket, only when it is waiting.

    ``progress[0:n]`` holds each subscriber's finished-segment count; ``progress[n]``
    is 1 while the publisher waits. The re-check after a short timeout covers the
    (rare) case of a wake-up lost to store/load reordering between processes.
    """

    def __init__(self, address: str, progress: memoryview, subscribers: int) -> None:
        super().__init__(address, progress, subscribers)
        self.sock.bind(address)
        self.waits = 0

    def slowest(self) -> int:
        return min(self.progress[: self.n]) if self.n else 1 << 62

    async def wait_for(self, done: int) -> None:
        """Return once every subscriber has finished at least ``done`` segments."""
        if self.slowest() >= done:
            return
        self.waits += 1
        self.progress[self.n] = 1
        try:
            while self.slowest() < done:
                with trio.move_on_after(0.005):
                    await trio.lowlevel.wait_readable(self.sock)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        self.sock.recv(64)
        finally:
            self.progress[self.n] = 0


class CreditSignal(_Credit):
    """A subscriber's side of :class:`CreditGate`."""

    def finished(self, index: int, count: int) -> None:
        """Subscriber ``index`` has finished ``count`` segments (sync on purpose)."""
        self.progress[index] = count
        if self.progress[self.n]:
            with contextlib.suppress(OSError):
                self.sock.sendto(b"!", self.address)


def describe(exc: BaseException) -> str:
    """A one-line account of ``exc``, with the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions[:3])
    return f"{type(exc).__name__}: {exc}"
