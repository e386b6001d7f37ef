"""core.segment and core.window: append-only segments, the ring of five (sync tests)."""

from __future__ import annotations

import pytest

from trickle_trio.core.errors import RequestError
from trickle_trio.core.segment import SegmentState
from trickle_trio.core.window import Window


def test_segment_appends_until_closed_then_never_changes() -> None:
    segment = SegmentState(3)
    assert segment.append(b"ab")
    assert segment.append(b"c")
    assert (segment.chunks, segment.size) == ([b"ab", b"c"], 3)
    assert segment.close()
    assert not segment.close()
    assert not segment.append(b"late")
    assert (segment.chunks, segment.size, segment.closed) == ([b"ab", b"c"], 3, True)


def test_window_keeps_one_segment_per_slot() -> None:
    window: Window[SegmentState] = Window(5)
    first = SegmentState(2)
    assert window.put(first) is None
    assert window.get(2) is first
    assert window.get(7) is None  # same slot, other seq
    assert window.get(-3) is None
    later = SegmentState(7)
    assert window.put(later) is first  # evicted: the caller closes it
    assert window.get(2) is None
    assert window.get(7) is later
    assert list(window) == [later]
    assert window.clear() == [later]
    assert list(window) == []


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window size"):
        Window(0)


def test_request_error_is_4xx_only() -> None:
    assert RequestError(403, "no").status == 403
    with pytest.raises(ValueError, match="4xx"):
        RequestError(500, "no")


def test_view_from_shares_one_join_between_readers_at_the_same_index() -> None:
    segment = SegmentState(0)
    assert segment.view_from(0) == b""
    first = b"a" * 10
    segment.append(first)
    assert segment.view_from(0) is first  # a single chunk is handed out as it is
    segment.append(b"b")
    segment.append(b"c")
    joined = segment.view_from(0)
    assert joined == first + b"bc"
    assert segment.view_from(0) is joined  # the next reader at 0 shares the join
    assert segment.view_from(1) == b"bc"
    segment.append(b"d")  # a new chunk: the old join no longer covers everything
    assert segment.view_from(1) == b"bcd"
    assert segment.view_from(4) == b""


def test_an_empty_append_adds_no_chunk() -> None:
    segment = SegmentState(0)
    assert segment.append(b"") is True
    assert segment.append(b"a") is True
    assert segment.append(b"") is True
    assert (segment.chunks, segment.size) == ([b"a"], 1)
    segment.close()
    assert segment.append(b"") is False
