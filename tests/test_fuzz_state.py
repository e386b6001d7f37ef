"""Hypothesis stateful test: channels.py against a pure-Python model of PROTOCOL.md.

How it runs under trio: the test (an ordinary pytest-trio test) hands the whole
``RuleBasedStateMachine`` run to a worker thread (``trio.to_thread.run_sync``). Each rule
calls back into trio with ``trio.from_thread.run``, which runs the step *in the test's
own task*, then waits with ``wait_all_tasks_blocked`` until every publisher and reader
task it touched has parked again. One step is thus atomic: the model applies its rules,
and the invariants compare model and server while nothing in trio moves. The clock is
pytest-trio's ``mock_clock`` (rate 0): time only moves when a rule jumps it, so the idle
sweep is exact and the test deterministic.

Each example gets a fresh ``ChannelRegistry`` in its own nursery; the teardown cancels
it and checks that the number of living trio tasks is back where it started.

The model (``Model``) knows nothing of trio or of trickle_trio: bytearrays, dicts, ints.
Rules it encodes (PROTOCOL.md, "Publish", "Subscribe", "Deliberate improvements"):
- write ``-1`` = next write; reuse the open segment with that seq, else put a fresh one
  in its slot, closing what was there; reset closes every smaller seq in the window;
- first byte of a POST: ``next_write = seq + 1`` even backwards, write time = now;
- body ends empty: ``next_write = seq + 1`` (PR #3824), the segment is closed;
- an idle POST whose segment is closed from elsewhere is released; that moves
  ``next_write`` to ``seq + 1`` only forwards, and not at all for an eviction (a flood
  of far-ahead preconnects must not move the live edge);
- a broken publisher closes its segment with the bytes written; nothing else changes;
- reads resolve -1/-2/-N; not in the window -> precreate at ``next_write`` (or seq 1
  before the first write) on an open channel, else 470;
- a closed segment never changes: bytes for it are discarded;
- DELETE of the channel: every segment closes (its readers end with what was written),
  then every open POST, idle or not, ends as channel-closed;
- the sweep deletes channels idle for more than the timeout, except ``_`` names.

Checked after every step: the channels, each ``next_write`` and write time; the window
holds at most 5 segments, exactly the model's (same objects: a reused segment is the
same one, a new one is new); every segment the test has seen holds exactly the model's
bytes and is closed exactly when the model says (so nothing outside the window is
open, and a closed segment never changed); every reader got exactly its segment's
bytes and ended exactly when it closed; every publisher's outcome; the leases held;
a read answered 470 (no segment) exactly when the model says so; a segment that left
the window with nobody attached is referenced by nothing in the server; and a DELETE
of a channel ends every subscriber before it lets any publisher go.

Budget: 200 examples of 40 steps in CI, derandomized; ``TRICKLE_FUZZ_EXAMPLES=N`` for a
long random run of N examples of 60 steps (``-s`` prints how many steps ran).
"""

from __future__ import annotations

import gc
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from trickle_trio.channels import Channel
from trickle_trio.core.errors import ChannelClosedError, ChannelNotFoundError
from trickle_trio.publishing import PublisherGone, PublishOutcome, SegmentWriter
from trickle_trio.registry import ChannelRegistry
from trickle_trio.segment import Segment

WINDOW = 5
IDLE_TIMEOUT = 10.0
#: "_k" is never swept (a leading underscore), like the changefeed.
NAMES = ("a", "b", "_k")

#: CI budget; TRICKLE_FUZZ_EXAMPLES=5000 for a long local run (then random, not derandomized).
EXAMPLES = int(os.environ.get("TRICKLE_FUZZ_EXAMPLES", "0")) or None
#: What was tried, printed at the end of a long run (pytest -s).
TRIED: Counter[str] = Counter()


# -- the model ---------------------------------------------------------------------------


@dataclass(eq=False)
class MSegment:
    seq: int
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False
    #: Closed because a later seq took its slot (while it was still open).
    evicted: bool = False
    #: The server's segment, once seen. The model holds the only reference the test
    #: keeps, so that the memory check can count the server's own references.
    real: Segment | None = None


@dataclass(eq=False)
class MChannel:
    name: str
    write_time: float
    next_write: int = 0
    closed: bool = False
    window: dict[int, MSegment] = field(default_factory=dict)  # slot -> segment

    def get(self, seq: int) -> MSegment | None:
        if seq < 0:
            return None
        held = self.window.get(seq % WINDOW)
        return held if held is not None and held.seq == seq else None

    def put(self, segment: MSegment) -> None:
        slot = segment.seq % WINDOW
        old = self.window.get(slot)
        if old is not None and old is not segment and not old.closed:
            old.closed = old.evicted = True
        self.window[slot] = segment


@dataclass(eq=False)
class MPublisher:
    channel: MChannel
    segment: MSegment | None  # None: refused (channel closed)
    written: int = 0
    outcome: PublishOutcome | None = None


@dataclass(eq=False)
class MReader:
    channel: MChannel
    segment: MSegment


class Model:
    """The protocol's state rules, with no trio and no trickle_trio in sight."""

    def __init__(self) -> None:
        self.now = 0.0
        self.channels: dict[str, MChannel] = {}
        self.publishers: list[MPublisher] = []
        self.readers: list[MReader] = []
        self.segments: list[MSegment] = []  # every segment ever made

    @staticmethod
    def resolve(seq: int, next_write: int) -> int:
        if seq >= 0:
            return seq
        if seq == -1:
            return next_write
        if seq == -2:
            return max(next_write - 1, 0)
        return next_write - (-seq - 1)

    def new_segment(self, seq: int) -> MSegment:
        segment = MSegment(seq)
        self.segments.append(segment)
        return segment

    def create(self, name: str) -> MChannel:
        if name not in self.channels:
            self.channels[name] = MChannel(name, write_time=self.now)
        return self.channels[name]

    def settle(self) -> None:
        """Idle publishers whose segment closed are released: a release moves the next
        write to ``seq + 1`` only forwards, and never for an eviction."""
        for pub in self.publishers:
            segment = pub.segment
            if pub.outcome is None and segment is not None and segment.closed and not pub.written:
                pub.outcome = PublishOutcome.RELEASED
                channel = pub.channel
                if not channel.closed and segment.seq >= channel.next_write and not segment.evicted:
                    channel.next_write = segment.seq + 1
                    channel.write_time = self.now

    def open_publisher(self, name: str, seq: int, reset: bool) -> MPublisher:
        channel = self.create(name)
        if seq == -1:
            seq = channel.next_write
        if reset:
            for held in channel.window.values():
                if held.seq < seq:
                    held.closed = True
        segment = channel.get(seq)
        if segment is None or segment.closed:
            segment = self.new_segment(seq)
            channel.put(segment)
        pub = MPublisher(channel, segment)
        self.publishers.append(pub)
        self.settle()
        return pub

    def chunk(self, pub: MPublisher, data: bytes) -> None:
        segment = pub.segment
        if pub.outcome is not None or segment is None or not data:
            return
        if not pub.written and not segment.closed:
            pub.channel.next_write = segment.seq + 1
            pub.channel.write_time = self.now
        pub.written += len(data)
        if not segment.closed:
            segment.data += data

    def end(self, pub: MPublisher) -> None:
        segment = pub.segment
        if pub.outcome is not None or segment is None:
            return
        if pub.written:
            pub.outcome = PublishOutcome.COMPLETE
        else:
            pub.outcome = PublishOutcome.EMPTY
            pub.channel.next_write = segment.seq + 1
            pub.channel.write_time = self.now
        segment.closed = True
        self.settle()

    def abort(self, pub: MPublisher) -> None:
        if pub.outcome is not None or pub.segment is None:
            return
        pub.outcome = PublishOutcome.ABORTED
        pub.segment.closed = True
        self.settle()

    def read(self, name: str, seq: int) -> tuple[int, int, MSegment | None]:
        channel = self.channels[name]
        latest = channel.next_write
        seq = self.resolve(seq, latest)
        segment = channel.get(seq)
        if segment is None and (seq == latest or (latest == 0 and seq == 1)):
            segment = self.new_segment(seq)
            channel.put(segment)
            self.settle()
        if segment is not None:
            self.readers.append(MReader(channel, segment))
        return seq, latest, segment

    def delete_seq(self, name: str, seq: int) -> MSegment | None:
        channel = self.channels[name]
        segment = channel.get(self.resolve(seq, channel.next_write))
        if segment is not None:
            segment.closed = True
            self.settle()
        return segment

    def delete(self, name: str) -> None:
        channel = self.channels.pop(name)
        channel.closed = True
        # Every segment closes for its readers (they end cleanly with what was written),
        # then every open POST, idle or not, ends as channel-closed.
        for pub in self.publishers:
            if pub.channel is channel and pub.outcome is None and pub.segment is not None:
                pub.outcome = PublishOutcome.CHANNEL_CLOSED
        for segment in channel.window.values():
            segment.closed = True
        channel.window.clear()

    def sweep(self) -> list[str]:
        idle = [
            name
            for name, channel in self.channels.items()
            if not name.startswith("_") and self.now - channel.write_time > IDLE_TIMEOUT
        ]
        for name in idle:
            self.delete(name)
        return idle


# -- the server side: one task per POST and per GET --------------------------------------

_ABORT = object()


class RealPublisher:
    """A POST on the channel layer: lease, segment_for_write, pump (as http/streams.py)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.send_chan, self.recv_chan = trio.open_memory_channel[Any](math.inf)
        self.segment: Segment | None = None  # taken by the machine once linked
        self.outcome: PublishOutcome | None = None
        self.refused = False
        self.done = False

    async def read_chunk(self) -> bytes | None:
        item = await self.recv_chan.receive()
        if item is _ABORT:
            raise PublisherGone
        return item  # type: ignore[no-any-return]

    async def run(self, channel: Channel, seq: int, reset: bool) -> None:
        try:
            with channel.publishers.lease() as scope:
                writer = SegmentWriter(channel, channel.segment_for_write(seq, reset=reset))
                self.segment = writer.segment
                self.outcome = PublishOutcome.CHANNEL_CLOSED  # if the lease is cancelled
                with scope:
                    self.outcome = await writer.pump(self.read_chunk)
        except ChannelClosedError:
            self.refused = True
        finally:
            self.done = True
            self.log.append("publisher")
            self.recv_chan.close()

    def feed(self, item: object) -> None:
        if not self.done:
            self.send_chan.send_nowait(item)


class RealReader:
    """A GET on the channel layer: lease, then every chunk until the segment ends."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.data = bytearray()
        self.ended = False
        self.done = False

    async def run(self, channel: Channel, segment: Segment) -> None:
        try:
            with channel.subscribers.lease() as scope, scope:
                index = 0
                while chunks := await segment.wait_chunks(index):
                    index += len(chunks)
                    self.data += b"".join(chunks)
                self.ended = True
        finally:
            self.done = True
            self.log.append("subscriber")


# -- the machine ---------------------------------------------------------------------------

write_seqs = st.one_of(
    st.just(-1),
    st.integers(0, 14),
    st.tuples(st.just("rel"), st.integers(-6, 6)),
)
read_seqs = st.one_of(
    st.sampled_from([-1, -2]),
    st.integers(-8, -3),
    st.integers(0, 14),
    st.tuples(st.just("rel"), st.integers(-6, 6)),
    st.just(10**12),
)
chunks = st.binary(min_size=0, max_size=6)
names = st.sampled_from(NAMES)
picks = st.integers(0, 63)


class ChannelMachine(RuleBasedStateMachine):
    """Registry + channels driven rule by rule; the model says what must be true."""

    def __init__(self, host: trio.Nursery, clock: trio.testing.MockClock) -> None:
        super().__init__()
        self.host = host
        self.clock = clock
        self.model = Model()
        self.pubs: list[tuple[MPublisher, RealPublisher]] = []
        self.readers: list[tuple[MReader, RealReader]] = []
        self.stale: Channel | None = None
        #: Which kind of task finished, in order (for the DELETE ordering guarantee).
        self.log: list[str] = []
        self.baseline, self.cancel, self.finished, self.nursery, self.registry = (
            trio.from_thread.run(self._open_example)
        )
        self.model.now = self.clock.current_time()
        TRIED["examples"] += 1

    # -- plumbing -------------------------------------------------------------------------

    async def _open_example(self) -> Any:
        baseline = trio.lowlevel.current_statistics().tasks_living
        finished = trio.Event()

        async def example(*, task_status: trio.TaskStatus[Any]) -> None:
            try:
                with trio.CancelScope() as cancel:
                    async with trio.open_nursery() as nursery:
                        registry = ChannelRegistry(nursery, teardown_grace=1.0)
                        task_status.started((cancel, nursery, registry))
                        await trio.sleep_forever()
            finally:
                finished.set()

        cancel, nursery, registry = await self.host.start(example)
        return baseline, cancel, finished, nursery, registry

    def step(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` in trio (awaiting it if async), then let every task settle."""

        TRIED["steps"] += 1

        async def run() -> Any:
            result = fn(*args)
            if hasattr(result, "__await__"):
                result = await result
            await trio.testing.wait_all_tasks_blocked()
            return result

        return trio.from_thread.run(run)

    def teardown(self) -> None:
        async def close() -> int:
            self.cancel.cancel()
            await self.finished.wait()
            await trio.testing.wait_all_tasks_blocked()
            return trio.lowlevel.current_statistics().tasks_living

        living = trio.from_thread.run(close)
        assert living == self.baseline, f"leaked {living - self.baseline} task(s)"

    def seq_of(self, name: str, choice: Any) -> int:
        if isinstance(choice, tuple):
            channel = self.model.channels.get(name)
            return max(0, (channel.next_write if channel else 0) + choice[1])
        return int(choice)

    def live_pubs(self) -> list[tuple[MPublisher, RealPublisher]]:
        return [(m, r) for m, r in self.pubs if m.outcome is None]

    def link(self, model: MSegment, real: Segment | None) -> None:
        """``real`` is the server's segment for ``model``: the same object every time."""
        assert real is not None
        assert real.seq == model.seq
        if model.real is None:
            seen = {id(s.real) for s in self.model.segments if s.real is not None}
            assert id(real) not in seen, "the server reused a segment the model says is new"
            model.real = real
        else:
            assert model.real is real, f"seq {model.seq}: server made a new segment"

    # -- rules -----------------------------------------------------------------------------

    def create(self, name: str) -> None:
        self.step(self.registry.create, name, "video/mp2t")
        self.model.create(name)

    @rule(name=names, where=write_seqs, reset=st.booleans())
    def open_publisher(self, name: str, where: Any, reset: bool) -> None:
        seq = self.seq_of(name, where)
        real = RealPublisher(self.log)

        def start() -> None:
            channel = self.registry.create(name, "video/mp2t")  # autocreate
            self.nursery.start_soon(real.run, channel, seq, reset)

        self.step(start)
        model = self.model.open_publisher(name, seq, reset)
        assert not real.refused
        assert model.segment is not None
        self.link(model.segment, real.segment)
        real.segment = None
        self.pubs.append((model, real))

    @precondition(lambda self: self.live_pubs())
    @rule(pick=picks, data=chunks)
    def chunk(self, pick: int, data: bytes) -> None:
        model, real = self.live_pubs()[pick % len(self.live_pubs())]
        self.step(real.feed, data)
        self.model.chunk(model, data)

    @precondition(lambda self: self.live_pubs())
    @rule(pick=picks)
    def end_body(self, pick: int) -> None:
        model, real = self.live_pubs()[pick % len(self.live_pubs())]
        self.step(real.feed, None)
        self.model.end(model)

    @precondition(lambda self: self.live_pubs())
    @rule(pick=picks)
    def publisher_aborts(self, pick: int) -> None:
        model, real = self.live_pubs()[pick % len(self.live_pubs())]
        self.step(real.feed, _ABORT)
        self.model.abort(model)

    @precondition(lambda self: self.model.channels)
    @rule(pick=picks, where=read_seqs)
    def read(self, pick: int, where: Any) -> None:
        name = sorted(self.model.channels)[pick % len(self.model.channels)]
        seq = self.seq_of(name, where)
        channel = self.registry.get(name)
        assert channel is not None
        found: list[Any] = []

        def start() -> None:
            result = channel.segment_for_read(seq)
            found.append(result)
            if result.segment is not None:
                reader = RealReader(self.log)
                found.append(reader)
                self.nursery.start_soon(reader.run, channel, result.segment)

        self.step(start)
        resolved, latest, model = self.model.read(name, seq)
        result = found.pop(0)
        assert (result.seq, result.latest) == (resolved, latest)
        if model is None:
            assert result.segment is None, f"seq {resolved} latest {latest}: expected 470"
            return
        assert result.segment is not None, f"seq {resolved} latest {latest}: unexpected 470"
        self.link(model, result.segment)
        self.readers.append((self.model.readers[-1], found.pop(0)))

    @precondition(lambda self: self.model.channels)
    @rule(pick=picks, where=read_seqs)
    def delete_seq(self, pick: int, where: Any) -> None:
        name = sorted(self.model.channels)[pick % len(self.model.channels)]
        seq = self.seq_of(name, where)
        channel = self.registry.get(name)
        assert channel is not None

        def close() -> Segment | None:
            segment = channel.segment_in_window(seq)
            if segment is not None:
                segment.close()  # what DELETE /{ch}/{seq} does
            return segment

        real = self.step(close)
        model = self.model.delete_seq(name, seq)
        if model is None:
            assert real is None
        else:
            self.link(model, real)

    def delete_channel(self, pick: int) -> None:
        if not self.model.channels:
            return
        name = sorted(self.model.channels)[pick % len(self.model.channels)]
        self.stale = self.registry.get(name)
        self.log.clear()
        self.step(self.registry.delete, name)
        self.model.delete(name)
        # Ours: every subscriber has its end before any publisher is let go.
        assert self.log == sorted(self.log, reverse=True), self.log

    def delete_unknown_channel(self, name: str) -> None:
        if name in self.model.channels:
            return

        async def delete() -> bool:
            try:
                await self.registry.delete(name)
            except ChannelNotFoundError:
                return True
            return False

        assert self.step(delete)

    def time_passes(self, seconds: int) -> None:
        self.step(self.clock.jump, seconds)
        self.model.now += seconds

    def idle_sweep(self) -> None:
        swept = self.step(self.registry.sweep, IDLE_TIMEOUT)
        assert sorted(swept) == sorted(self.model.sweep())

    def use_a_deleted_channel(self, where: Any) -> None:
        """A handler holding a channel object across its deletion gets nothing from it."""
        channel = self.stale
        if channel is None:
            return
        seq = self.seq_of("", where)

        def poke() -> None:
            assert channel.closed
            assert channel.segment_for_read(seq).segment is None  # no precreation
            assert channel.segment_in_window(seq) is None
            with pytest.raises(ChannelClosedError):
                channel.segment_for_write(max(seq, -1))
            with pytest.raises(ChannelClosedError):
                channel.subscribers.lease()
            with pytest.raises(ChannelClosedError):
                channel.publishers.lease()

        self.step(poke)

    @rule(
        action=st.sampled_from(
            ["create", "delete", "delete_unknown", "time", "sweep", "time", "sweep", "stale"]
        ),
        name=names,
        pick=picks,
        seconds=st.sampled_from([1, 2, 5, 10, 11]),  # 10: the sweep boundary
        where=read_seqs,
    )
    def housekeeping(self, action: str, name: str, pick: int, seconds: int, where: Any) -> None:
        """The rarer events share one rule, so that publishes and reads dominate."""
        if action == "create":
            self.create(name)
        elif action == "delete":
            self.delete_channel(pick)
        elif action == "delete_unknown":
            self.delete_unknown_channel(name)
        elif action == "time":
            self.time_passes(seconds)
        elif action == "sweep":
            self.idle_sweep()
        else:
            self.use_a_deleted_channel(where)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def server_matches_model(self) -> None:
        """Read straight from this thread: between steps every trio task is parked and
        the clock stands still, so nothing in trio can move while we look."""
        model = self.model
        assert sorted(c.name for c in self.registry.channels()) == sorted(model.channels)
        for name, mchannel in model.channels.items():
            channel = self.registry.get(name)
            assert channel is not None
            assert not channel.closed
            assert channel.next_write == mchannel.next_write, name
            assert channel.write_time == mchannel.write_time, name
            # The window holds at most 5 segments, and exactly the model's.
            held = list(channel.window)
            assert len(held) <= WINDOW
            assert len(held) == len(mchannel.window)
            for segment in held:
                expected = mchannel.window[segment.seq % WINDOW]
                assert expected.real is segment
            live_readers = sum(1 for m, r in self.readers if m.channel is mchannel and not r.done)
            assert len(channel.subscribers) == live_readers
            live_publishers = sum(
                1 for m, _ in self.pubs if m.channel is mchannel and not m.outcome
            )
            assert len(channel.publishers) == live_publishers

        in_window = {id(s) for c in model.channels.values() for s in c.window.values()}
        for msegment in model.segments:
            if id(msegment) not in in_window:
                assert msegment.closed, "a segment outside the window is still open"
            real = msegment.real
            if real is None:
                continue
            # Every byte written before the close, and none after: a closed segment never
            # changes (the model stops appending at the close).
            assert b"".join(real.chunks) == msegment.data, msegment.seq
            assert real.size == len(msegment.data)
            assert real.closed == msegment.closed

        for mreader, reader in self.readers:
            assert reader.data == mreader.segment.data, "a reader saw other bytes"
            assert reader.ended == mreader.segment.closed
            assert reader.done == mreader.segment.closed

        for mpub, pub in self.pubs:
            assert pub.outcome == (mpub.outcome or PublishOutcome.CHANNEL_CLOSED)
            assert pub.done == (mpub.outcome is not None)

    @invariant()
    def nothing_outside_the_window_is_kept_alive(self) -> None:
        """Memory is bounded: a segment that left the window and has no reader or
        publisher left is referenced by nothing but the model (the server let it go)."""
        in_window = {id(s) for c in self.model.channels.values() for s in c.window.values()}
        attached = {id(m.segment) for m, r in self.readers if not r.done}
        attached |= {id(m.segment) for m, _ in self.pubs if m.outcome is None}
        suspects = [
            s
            for s in self.model.segments
            if id(s) not in in_window | attached and other_references(s) > 0
        ]
        if suspects:
            gc.collect()  # only pay for a full collection when refcounting was not enough
            kept = [s.seq for s in suspects if other_references(s) > 0]
            assert not kept, f"segments {kept} left the window but are still referenced"


def other_references(msegment: MSegment) -> int:
    """References to the server's segment besides the model's own."""
    if msegment.real is None:
        return 0
    return sys.getrefcount(msegment.real) - 2  # the model's attribute, the argument


# -- the test ------------------------------------------------------------------------------


def machine_settings() -> settings:
    if EXAMPLES:  # a long local run: fresh random examples, saved failures
        return settings(
            max_examples=EXAMPLES,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
    return settings(  # CI: the same examples every run
        max_examples=200,
        stateful_step_count=40,
        deadline=None,
        derandomize=True,
        report_multiple_bugs=False,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.mark.timeout(0 if EXAMPLES else 600)  # a failure is shrunk: that can take minutes
async def test_channel_state_machine(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    def run() -> None:
        run_state_machine_as_test(
            lambda: ChannelMachine(nursery, mock_clock), settings=machine_settings()
        )

    await trio.to_thread.run_sync(run)


def teardown_module() -> None:
    if EXAMPLES:
        print(f"\nstate machine tried: {dict(TRIED)}")
