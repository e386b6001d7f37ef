"""The live engine: paced publishers and following subscribers for many channels, driven
by two trio tasks per process (a reactor and a pacer) instead of tasks per connection.

Why: with a task per publisher and per subscriber, trio's scheduling (a wake-up, an
epoll re-arm and a task switch per chunk, each way) cost more than the socket calls
themselves. Here the pacer calls every due publisher's ``fire()`` synchronously, and
the reactor waits on one level-triggered epoll set of all subscriber and answer
sockets (itself a single fd to trio) and hands each readable socket to its owner's
parser. Socket I/O is non-blocking and synchronous; only new TCP connections are
made in (rare) helper tasks.

Rules:
- Everything here runs in the worker's one trio thread; callbacks never await.
- A ``Conn`` is read by exactly one owner at a time: a subscriber's current GET or
  a publisher's answer reader. Preconnected requests are not watched until they become
  current, so level-triggered epoll never spins on bytes nobody reads yet.
- A failing connection fails only its channel (recorded in ``errors``).

Imports: stdlib, trio, the bench's client and ``reactor``, ``chunks``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

import trio

from ..client import LAST_CHUNK, Body, Conn, HttpError, chunk_prefix, put_idle, request_head
from ..client import take_idle as _take_idle
from ..reactor import Reactor
from .chunks import MAGIC, STAMP, ChannelState, ChunkSink, Pace
from .common import C_AUX, C_LOST, C_UNITS

_CONNECT_CONCURRENCY = 32
#: Idle keep-alive connections older than this are not reused (hypercorn closes at 5 s).
_MAX_IDLE = 4.0
#: The receive buffer of each connection (there are many per process).
_RECV_SIZE = 64 * 1024


def take_idle(pool: list[Conn]) -> Conn | None:
    return _take_idle(pool, _MAX_IDLE)


def _discard(_: memoryview) -> None:
    pass


class LivePublisher:
    """One channel's paced publisher, fired by the engine's pacer."""

    def __init__(
        self, engine: Engine, state: ChannelState, start: float, first_chunks: int | None = None
    ) -> None:
        self.engine = engine
        self.state = state
        self.start = start
        #: Chunks in segment 0 (later segments have ``pace.chunks_per_segment``).
        self.first_chunks = first_chunks or engine.pace.chunks_per_segment
        self.due = start
        self.seq = 0
        self.index = 0
        self.conn: Conn | None = None
        self.next: Conn | None = None
        self.idle: list[Conn] = []
        self.finished = False
        pace = engine.pace
        prefix = chunk_prefix(pace.chunk_bytes)
        self.template = bytearray(prefix + bytes(pace.chunk_bytes) + b"\r\n")
        self.stamp_at = len(prefix)

    def _head(self, conn: Conn, seq: int) -> bytes:
        path = self.engine.path(self.state.name, seq)
        headers = {"Content-Type": self.engine.pace.mime}
        return request_head(conn.host, "POST", path, headers, body_length=None)

    async def set_up(self) -> None:
        """Connect, and preconnect ``POST /{ch}/0``."""
        self.conn = await self.engine.connect()
        self.conn.write(self._head(self.conn, 0), self.engine.reactor)

    async def add_spare(self) -> None:
        """One more connection for the next preconnect (opened last: servers close
        connections that stay idle, hypercorn after 5 s)."""
        put_idle(self.idle, await self.engine.connect())

    def fire(self) -> float | None:
        """Send the chunk that is due; the next due time, or None when finished."""
        engine, state = self.engine, self.state
        conn = self.conn
        if conn is None:  # the next segment's connection is still being made
            engine.stalls += 1
            return time.monotonic() + 0.001
        now = time.monotonic_ns()
        engine.lags.append(now / 1e6 - self.due * 1e3)
        STAMP.pack_into(self.template, self.stamp_at, MAGIC, state.index, self.seq, self.index, now)
        conn.write(self.template, engine.reactor)
        state.written += 1
        engine.counters[C_AUX] += 1
        self.index += 1
        if self.index == 1:
            self._preconnect(self.seq + 1)
        self.due = self.start + state.written * engine.pace.interval
        last = self.due >= engine.end
        per_segment = self.first_chunks if self.seq == 0 else engine.pace.chunks_per_segment
        if self.index == per_segment or last:
            conn.write(LAST_CHUNK, engine.reactor)
            self._read_answer(conn, self.seq)
            self.conn, self.next = self.next, None
            self.seq += 1
            self.index = 0
        if last:
            self._finish()
            return None
        return self.due

    def _finish(self) -> None:
        self.finished = True
        self.state.done = True
        if self.conn is not None:
            # Release the idle preconnect (an empty segment), as a stopping publisher does.
            self.conn.write(LAST_CHUNK, self.engine.reactor)
            self._read_answer(self.conn, self.seq)
            self.conn = None
        self.engine.publisher_done()

    def _preconnect(self, seq: int) -> None:
        conn = take_idle(self.idle)
        if conn is None:
            self.engine.spawn(self._connect_and_preconnect, seq)
            return
        conn.write(self._head(conn, seq), self.engine.reactor)
        self.next = conn

    async def _connect_and_preconnect(self, seq: int) -> None:
        conn = await self.engine.connect()
        if self.finished:
            conn.close()
            return
        conn.write(self._head(conn, seq), self.engine.reactor)
        if self.seq == seq and self.conn is None:
            self.conn = conn  # the segment already switched over and waits for it
        else:
            self.next = conn

    def _read_answer(self, conn: Conn, seq: int) -> None:
        """Watch ``conn`` for the answer to ``seq``'s POST; then back to the idle pool."""
        reactor = self.engine.reactor
        body: Body | None = None
        keep = True

        def read() -> None:
            nonlocal body, keep
            if conn.recv() == 0:
                raise HttpError(f"POST {self.state.name}/{seq}: closed before the answer")
            if body is None:
                head = conn.parse_head()
                if head is None:
                    return
                if head.status != 200:
                    self.engine.errors.append(f"POST {self.state.name}/{seq}: {head.status}")
                body, keep = Body(head), head.keep_alive
            if body.feed(conn, _discard):
                reactor.forget(conn)
                if keep and not self.finished:
                    put_idle(self.idle, conn)
                else:
                    conn.close()

        reactor.watch(conn, read)


class LiveSubscriber:
    """Follows one channel from seq 0, preconnecting ``GET seq+1`` at each segment's head."""

    def __init__(self, engine: Engine, state: ChannelState, sink: ChunkSink) -> None:
        self.engine = engine
        self.state = state
        self.sink = sink
        self.seq = 0
        self.cur: Conn | None = None
        self.next: Conn | None = None
        self.idle: list[Conn] = []
        self.body: Body | None = None
        self.ok = False
        self.keep = True
        self.finished = False

    def _get(self, conn: Conn, seq: int) -> None:
        path = self.engine.path(self.state.name, seq)
        conn.write(request_head(conn.host, "GET", path), self.engine.reactor)

    async def set_up(self) -> None:
        """Connect and send ``GET /{ch}/0`` (it waits for the first byte)."""
        self.cur = await self.engine.connect()
        self._get(self.cur, 0)

    async def add_spare(self) -> None:
        """One more connection for the next preconnect (see LivePublisher.add_spare)."""
        put_idle(self.idle, await self.engine.connect())

    def begin(self) -> None:
        assert self.cur is not None
        self.engine.reactor.watch(self.cur, self.on_readable)

    def on_readable(self) -> None:
        conn = self.cur
        assert conn is not None
        n = conn.recv()
        if n == 0:
            raise HttpError(f"GET {self.state.name}/{self.seq}: connection closed")
        sink = self.sink
        while True:
            if self.body is None:
                head = conn.parse_head()
                if head is None:
                    return
                if head.headers.get("lp-trickle-closed"):
                    self._finish()
                    return
                self._request_next()
                self.ok = head.status == 200 and head.headers.get("lp-trickle-seq") == str(self.seq)
                if self.ok:
                    sink.start_segment(self.seq)
                else:
                    self.engine.errors.append(f"GET {self.state.name}/{self.seq}: {head.status}")
                    self.engine.counters[C_LOST] += 1
                self.keep = head.keep_alive
                self.body = Body(head)
            before = sink.count
            done = self.body.feed(conn, sink if self.ok else _discard)
            self.engine.counters[C_UNITS] += sink.count - before
            if not done:
                return
            self._next_segment(conn)
            return

    def _next_segment(self, conn: Conn) -> None:
        reactor = self.engine.reactor
        self.body = None
        reactor.forget(conn)
        if self.keep:
            put_idle(self.idle, conn)
        else:
            conn.close()
        self.seq += 1
        self.cur, self.next = self.next, None
        if self.state.done and self.sink.count >= self.state.written:
            self._finish()
        elif self.cur is not None:
            reactor.watch(self.cur, self.on_readable)

    def _request_next(self) -> None:
        conn = take_idle(self.idle)
        if conn is None:
            self.engine.spawn(self._connect_and_request, self.seq + 1)
            return
        self._get(conn, self.seq + 1)
        self.next = conn

    async def _connect_and_request(self, seq: int) -> None:
        conn = await self.engine.connect()
        if self.finished:
            conn.close()
            return
        self._get(conn, seq)
        if self.seq == seq and self.cur is None:
            self.cur = conn
            self.engine.reactor.watch(conn, self.on_readable)
        else:
            self.next = conn

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.subscriber_done()


class Engine:
    """Many channels' publishers and subscribers in one process (see the module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        base_path: str,
        pace: Pace,
        counters: memoryview,
    ) -> None:
        self.host = host
        self.port = port
        self.base_path = base_path
        self.pace = pace
        self.counters = counters
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors: list[str] = []
        self.reactor = Reactor(self._conn_failed)
        self.publishers: list[LivePublisher] = []
        self.subscribers: list[LiveSubscriber] = []
        self.sinks: list[ChunkSink] = []
        self.end = 0.0
        #: Connections opened, and publisher waits for one (diagnostics).
        self.connects = 0
        self.stalls = 0
        self.setup_s = 0.0
        self._open: list[Conn] = []
        self._limiter = trio.CapacityLimiter(_CONNECT_CONCURRENCY)
        self._nursery: trio.Nursery | None = None
        self._pending = 0
        self._all_done = trio.Event()

    def path(self, channel: str, seq: int) -> str:
        return f"{self.base_path}{channel}/{seq}"

    async def connect(self) -> Conn:
        self.connects += 1
        async with self._limiter:
            conn = await Conn.open(self.host, self.port, _RECV_SIZE)
        self._open.append(conn)
        return conn

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await fn(*args)
        except (OSError, HttpError) as exc:
            self.errors.append(f"connect: {exc}")

    def add_channel(
        self, state: ChannelState, subscribers: int, start: float, first_chunks: int | None = None
    ) -> None:
        self.publishers.append(LivePublisher(self, state, start, first_chunks))
        for _ in range(subscribers):
            sink = ChunkSink(state.index, self.pace.chunk_bytes, self.latencies)
            self.sinks.append(sink)
            self.subscribers.append(LiveSubscriber(self, state, sink))

    async def set_up(self) -> None:
        """Open every connection and send the first requests (before "go")."""
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            for sub in self.subscribers:
                nursery.start_soon(sub.set_up)
            for pub in self.publishers:
                nursery.start_soon(pub.set_up)
        # Spares last, so that they are as fresh as possible at "go".
        async with trio.open_nursery() as nursery:
            for owner in self._owners():
                nursery.start_soon(owner.add_spare)
        self._pending = len(self.publishers) + len(self.subscribers)
        self.setup_s = time.monotonic() - began

    def _owners(self) -> list[LivePublisher | LiveSubscriber]:
        return [*self.subscribers, *self.publishers]

    def publisher_done(self) -> None:
        self._done_one()

    def subscriber_done(self) -> None:
        self._done_one()

    def _done_one(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._all_done.set()

    def _conn_failed(self, conn: Conn, exc: Exception) -> None:
        self.errors.append(str(exc))
        self.reactor.forget(conn)
        conn.close()
        for sub in self.subscribers:
            if sub.cur is conn:
                sub._finish()

    async def run(self, start: float, end: float, grace: float, warmup: float = 0.0) -> None:
        """Publish from the publishers' start times until ``end``; return when every
        subscriber has everything, or at ``end + grace``. Latencies of chunks written in
        the first ``warmup`` seconds are not kept."""
        self.end = end
        since_ns = int((start + warmup) * 1e9)
        for sink in self.sinks:
            sink.since_ns = since_ns
        offset = trio.current_time() - time.monotonic()
        try:
            with trio.move_on_at(end + grace + offset):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for sub in self.subscribers:
                        sub.begin()
                    for owner in self._owners():
                        # A spare that went stale while other workers set up: replace it
                        # now, long before the first segment ends and needs it.
                        spare = take_idle(owner.idle)
                        if spare is None:
                            self.spawn(owner.add_spare)
                        else:
                            put_idle(owner.idle, spare)
                    nursery.start_soon(self.reactor.run)
                    nursery.start_soon(self._pace, offset)
                    await self._all_done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for conn in self._open:
                conn.close()
            self.reactor.close()

    async def _pace(self, offset: float, resolution: float = 0.001) -> None:
        """Fire every publisher when it is due (one timer for all of them)."""
        counter = itertools.count()
        heap = [(pub.due, next(counter), pub) for pub in self.publishers]
        heapq.heapify(heap)
        while heap:
            due = heap[0][0]
            if due > time.monotonic():
                await trio.sleep_until(due + offset)
                continue
            limit = time.monotonic() + resolution
            while heap and heap[0][0] <= limit:
                pub = heapq.heappop(heap)[2]
                try:
                    following = pub.fire()
                except HttpError as exc:
                    self.errors.append(f"POST {pub.state.name}/{pub.seq}: {exc}")
                    pub.finished = True
                    pub.state.done = True
                    self.publisher_done()
                    continue
                if following is not None:
                    heapq.heappush(heap, (following, next(counter), pub))
            await trio.lowlevel.checkpoint()

    def results(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies,
            "lags_ms": self.lags,
            "written": sum(p.state.written for p in self.publishers),
            "received": sum(s.count for s in self.sinks),
            "corrupt": sum(s.corrupt for s in self.sinks),
            "cut": sum(s.cut for s in self.sinks),
            "errors": self.errors[:20],
            "connects": self.connects,
            "stalls": self.stalls,
            "setup_s": self.setup_s,
        }
