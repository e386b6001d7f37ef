"""core/channel_state.py: the protocol's decisions, synchronously (no trio, no HTTP).

Plain tests of each rule, then a Hypothesis state machine that drives one ChannelState
and a separate model of PROTOCOL.md's rules (plain dicts and ints, written from the
spec) with the same random writes, first bytes, body ends, reads, drops, resets and
time steps, and compares next write, write time, window and every segment after each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from trickle_trio.core.channel_state import ChannelState
from trickle_trio.core.segment import SegmentState

WINDOW = 5


def fresh(now: float = 0.0) -> tuple[ChannelState[SegmentState], list[SegmentState]]:
    evicted: list[SegmentState] = []
    return ChannelState(SegmentState, now, on_evict=evicted.append), evicted


def test_first_byte_moves_next_write_even_backwards() -> None:
    state, _ = fresh()
    state.first_byte(7, now=1.0)
    assert (state.next_write, state.write_time) == (8, 1.0)
    state.first_byte(3, now=2.0)  # a restarted publisher wins
    assert (state.next_write, state.write_time) == (4, 2.0)


def test_an_empty_body_is_a_segment_and_advances_next_write() -> None:
    state, _ = fresh()
    segment = state.segment_for_write(-1)
    assert segment.seq == 0
    state.ended_empty(segment.seq, now=5.0)
    assert (state.next_write, state.write_time) == (1, 5.0)


def test_write_reuses_an_open_seq_and_starts_a_closed_one_afresh() -> None:
    state, _ = fresh()
    first = state.segment_for_write(2)
    assert state.segment_for_write(2) is first
    first.close()
    again = state.segment_for_write(2)
    assert again is not first
    assert not again.closed


def test_seq_plus_window_evicts_and_closes_seq() -> None:
    state, evicted = fresh()
    old = state.segment_for_write(1)
    new = state.segment_for_write(1 + WINDOW)
    assert old.closed
    assert old.evicted
    assert evicted == [old]
    assert state.segment_in_window(1) is None
    assert state.segment_in_window(1 + WINDOW) is new


def test_reset_closes_older_segments_only() -> None:
    state, _ = fresh()
    older, newer = state.segment_for_write(1), state.segment_for_write(4)
    state.segment_for_write(3, reset=True)
    assert (older.closed, newer.closed) == (True, False)


def test_a_release_moves_forwards_only_and_never_for_an_eviction() -> None:
    state, _ = fresh()
    state.first_byte(5, now=1.0)  # next_write 6
    behind = state.segment_for_write(2)
    behind.close()
    state.released(behind, now=2.0)
    assert state.next_write == 6  # never backwards
    ahead = state.segment_for_write(6)
    ahead.close()
    state.released(ahead, now=3.0)
    assert (state.next_write, state.write_time) == (7, 3.0)
    far = state.segment_for_write(7)
    state.segment_for_write(12)  # evicts 7
    state.released(far, now=4.0)
    assert state.next_write == 7


def test_dropping_an_empty_segment_at_the_edge_moves_past_it_first() -> None:
    state, _ = fresh()
    edge = state.segment_for_read(-1).segment
    assert edge is not None
    assert edge.seq == 0
    state.drop(edge, now=9.0)
    assert edge.closed
    assert (state.next_write, state.write_time) == (1, 9.0)
    written = state.segment_for_write(1)
    written.append(b"x")
    state.drop(written, now=10.0)
    assert state.next_write == 1  # it held bytes: not an empty segment


def test_reads_resolve_and_precreate_just_ahead_of_the_writer() -> None:
    state, _ = fresh()
    assert state.segment_for_read(1).precreated  # nothing written yet: seq 1 too
    state.first_byte(3, now=0.0)  # next_write 4
    assert state.segment_for_read(-1).seq == 4
    assert state.segment_for_read(-1).precreated is False  # found now
    missing = state.segment_for_read(9)
    assert (missing.seq, missing.latest, missing.segment) == (9, 4, None)
    assert state.segment_for_read(-2).seq == 3
    assert state.segment_for_read(-3).seq == 2


def test_a_far_ahead_write_that_would_evict_parks() -> None:
    state, _ = fresh()
    state.segment_for_write(0)
    assert not state.parks(1)  # the preconnect's seq
    assert not state.parks(3)  # its slot is empty
    assert state.parks(5)  # would push seq 0 out
    state.first_byte(4, now=0.0)
    assert not state.parks(5)  # now it is next


def test_a_closed_channel_makes_and_changes_nothing() -> None:
    state, _ = fresh()
    kept = state.segment_for_write(0)
    assert state.close() == [kept]
    assert state.segment_for_read(1).segment is None  # open: it would be precreated
    with pytest.raises(ValueError, match="closed"):
        state.segment_for_write(1)
    state.first_byte(3, now=1.0)
    state.ended_empty(3, now=1.0)
    assert (state.next_write, state.write_time) == (0, 0.0)


# -- the model ---------------------------------------------------------------------------


@dataclass(eq=False)
class MSegment:
    seq: int
    size: int = 0
    closed: bool = False
    evicted: bool = False


@dataclass(eq=False)
class Model:
    """PROTOCOL.md's channel rules, from the text, on plain data."""

    now: float = 0.0
    next_write: int = 0
    write_time: float = 0.0
    slots: dict[int, MSegment] = field(default_factory=dict)

    def get(self, seq: int) -> MSegment | None:
        held = self.slots.get(seq % WINDOW) if seq >= 0 else None
        return held if held is not None and held.seq == seq else None

    def put(self, seq: int) -> MSegment:
        old = self.slots.get(seq % WINDOW)
        if old is not None and not old.closed:
            old.closed = old.evicted = True
        self.slots[seq % WINDOW] = segment = MSegment(seq)
        return segment

    def write(self, seq: int, reset: bool) -> MSegment:
        seq = self.next_write if seq == -1 else seq
        if reset:
            for held in self.slots.values():
                if held.seq < seq:
                    held.closed = True
        held = self.get(seq)
        return held if held is not None and not held.closed else self.put(seq)

    def resolve(self, seq: int) -> int:
        if seq >= 0:
            return seq
        if seq == -2:
            return max(self.next_write - 1, 0)
        return self.next_write - (-seq - 1)

    def read(self, seq: int) -> MSegment | None:
        seq = self.resolve(seq)
        held = self.get(seq)
        if held is None and (seq == self.next_write or (self.next_write == 0 and seq == 1)):
            held = self.put(seq)
        return held

    def advance(self, seq: int) -> None:
        self.next_write = seq + 1
        self.write_time = self.now


@dataclass(eq=False)
class Pub:
    """A publish in progress: the model's segment and the real one, bytes written."""

    model: MSegment
    real: SegmentState
    written: int = 0
    done: bool = False


seqs = st.integers(min_value=-1, max_value=14)
read_seqs = st.integers(min_value=-6, max_value=14)


class ChannelStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.state, _ = fresh()
        self.pubs: list[Pub] = []
        self.pairs: list[tuple[MSegment, SegmentState]] = []

    def pair(self, model: MSegment | None, real: SegmentState | None) -> None:
        assert (model is None) == (real is None)
        if model is not None and real is not None:
            assert model.seq == real.seq
            self.pairs.append((model, real))

    def settle(self) -> None:
        """An idle publish whose segment was closed from elsewhere is released."""
        for pub in self.pubs:
            if not pub.done and not pub.written and pub.model.closed:
                pub.done = True
                if pub.model.seq >= self.model.next_write and not pub.model.evicted:
                    self.model.advance(pub.model.seq)
                assert pub.real.closed
                self.state.released(pub.real, self.model.now)

    @rule(seq=seqs, reset=st.booleans())
    def open_publish(self, seq: int, reset: bool) -> None:
        model = self.model.write(seq, reset)
        real = self.state.segment_for_write(seq, reset=reset)
        self.pair(model, real)
        self.pubs.append(Pub(model, real))
        self.settle()

    @rule(pick=st.integers(min_value=0), size=st.integers(min_value=1, max_value=4))
    def chunk(self, pick: int, size: int) -> None:
        live = [pub for pub in self.pubs if not pub.done]
        if not live:
            return
        pub = live[pick % len(live)]
        if not pub.written and not pub.model.closed:
            self.model.advance(pub.model.seq)
        if not pub.written and not pub.real.closed:
            self.state.first_byte(pub.real.seq, self.model.now)
        pub.written += size
        if not pub.model.closed:
            pub.model.size += size
        pub.real.append(b"x" * size)

    @rule(pick=st.integers(min_value=0))
    def end(self, pick: int) -> None:
        live = [pub for pub in self.pubs if not pub.done]
        if not live:
            return
        pub = live[pick % len(live)]
        pub.done = True
        if not pub.written:
            self.model.advance(pub.model.seq)
            self.state.ended_empty(pub.real.seq, self.model.now)
        pub.model.closed = True
        pub.real.close()
        self.settle()

    @rule(seq=read_seqs)
    def read(self, seq: int) -> None:
        model = self.model.read(seq)
        self.pair(model, self.state.segment_for_read(seq).segment)
        self.settle()

    @rule(seq=read_seqs)
    def drop(self, seq: int) -> None:
        model = self.model.get(self.model.resolve(seq))
        real = self.state.segment_in_window(seq)
        self.pair(model, real)
        if model is None or real is None:
            return
        if not model.closed and model.size == 0 and model.seq >= self.model.next_write:
            self.model.advance(model.seq)
        model.closed = True
        self.state.drop(real, self.model.now)
        self.settle()

    @rule(seq=st.integers(min_value=0, max_value=14))
    def parks(self, seq: int) -> None:
        held = self.model.slots.get(seq % WINDOW)
        expected = seq > self.model.next_write + 1 and held is not None and held.seq != seq
        assert self.state.parks(seq) == expected

    @rule(step=st.floats(min_value=0.5, max_value=10))
    def tick(self, step: float) -> None:
        self.model.now += step

    @invariant()
    def same_state(self) -> None:
        assert self.state.next_write == self.model.next_write
        assert self.state.write_time == self.model.write_time
        real = {segment.seq % WINDOW: segment for segment in self.state.window}
        assert sorted(real) == sorted(self.model.slots)
        for slot, model in self.model.slots.items():
            assert real[slot].seq == model.seq
        for model, segment in self.pairs:
            assert (segment.closed, segment.evicted, segment.size) == (
                model.closed,
                model.evicted,
                model.size,
            )


def test_channel_state_follows_the_model() -> None:
    run_state_machine_as_test(
        ChannelStateMachine,
        settings=settings(max_examples=300, stateful_step_count=40, derandomize=True),
    )
