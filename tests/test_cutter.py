"""The cutters of ``trickle-trio publish`` (``trickle_trio.client.cutter``): plain sync
tests, bytes and times in, actions out. Real ffmpeg output is cut in test_client_cli.py.
"""

from __future__ import annotations

import random

import pytest

from trickle_trio.client.cutter import (
    CUT,
    Action,
    ByteCutter,
    Cutter,
    IntervalCutter,
    LineCutter,
    TSCutter,
)

PACKET = 188
VIDEO, AUDIO, PMT_PID = 0x100, 0x101, 0x1000


def segments(actions: list[Action]) -> list[bytes]:
    """The segments a list of actions makes (a trailing open segment included)."""
    out: list[bytes] = [b""]
    for action in actions:
        if action is CUT:
            out.append(b"")
        else:
            out[-1] += action
    return [s for s in out if s] if out[-1] == b"" else out


def run(cutter: Cutter, pieces: list[tuple[bytes, float]]) -> list[Action]:
    actions: list[Action] = []
    for data, now in pieces:
        actions += cutter.feed(data, now)
    return actions + cutter.finish()


# -- MPEG-TS packets, made here -------------------------------------------------------------


def packet(pid: int, payload: bytes = b"", *, start: bool = False, rai: bool = False) -> bytes:
    head = bytes([0x47, (0x40 if start else 0) | pid >> 8, pid & 0xFF])
    if rai:
        stuffing = PACKET - 4 - 2 - len(payload)
        field = bytes([1 + stuffing, 0x40]) + b"\xff" * stuffing
        return head + b"\x30" + field + payload
    body = payload.ljust(PACKET - 4, b"\xff")
    return head + b"\x10" + body


def section(table_id: int, body: bytes) -> bytes:
    length = 5 + len(body) + 4  # the fixed header after the length, the body, the CRC
    head = bytes([table_id, 0xB0 | length >> 8, length & 0xFF, 0, 1, 0xC1, 0, 0])
    return b"\x00" + head + body + b"\0\0\0\0"  # pointer field first; CRC not checked


def pat() -> bytes:
    return packet(0, section(0x00, bytes([0, 1, 0xE0 | PMT_PID >> 8, PMT_PID & 0xFF])), start=True)


def pmt(*streams: tuple[int, int]) -> bytes:
    body = bytes([0xE0 | VIDEO >> 8, VIDEO & 0xFF, 0xF0, 0])  # PCR PID, no program info
    for stream_type, pid in streams:
        body += bytes([stream_type, 0xE0 | pid >> 8, pid & 0xFF, 0xF0, 0])
    return packet(PMT_PID, section(0x02, body), start=True)


def pes(pid: int, pts: float | None, es: bytes = b"", *, rai: bool = False) -> bytes:
    """The first packet of a PES with a PTS (seconds) and ``es`` as its first bytes."""
    if pts is None:
        header = b"\x00\x00\x01\xe0\x00\x00\x80\x00\x00"
    else:
        ticks = round(pts * 90_000) % (1 << 33)
        stamp = bytes(
            [
                0x21 | (ticks >> 29) & 0x0E,
                (ticks >> 22) & 0xFF,
                0x01 | (ticks >> 14) & 0xFE,
                (ticks >> 7) & 0xFF,
                0x01 | (ticks << 1) & 0xFE,
            ]
        )
        header = b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05" + stamp
    return packet(pid, header + es, start=True, rai=rai)


def video_stream(keyframes: list[float], *, rai: bool = True, frames_per_gop: int = 3) -> bytes:
    """PAT, PMT (H.264 video + audio), then GOPs: a keyframe PES at each time, inter
    frames and audio (whose PES starts carry the random-access flag too) between."""
    out = pat() + pmt((0x1B, VIDEO), (0x0F, AUDIO))
    for t in keyframes:
        out += pes(VIDEO, t, b"\x00\x00\x01\x09\xf0\x00\x00\x01\x67", rai=rai)  # AUD, SPS
        out += packet(VIDEO, b"\x55" * 50)
        out += pes(AUDIO, t, rai=True)
        for i in range(1, frames_per_gop):
            out += pes(VIDEO, t + i * 0.1, b"\x00\x00\x01\x09\xf0\x00\x00\x01\x41")  # P slice
        out += pat() + pmt((0x1B, VIDEO), (0x0F, AUDIO))  # tables repeat mid-GOP
    return out


def packets_of(data: bytes) -> list[bytes]:
    assert len(data) % PACKET == 0
    return [data[i : i + PACKET] for i in range(0, len(data), PACKET)]


def without_tables(data: bytes) -> bytes:
    return b"".join(p for p in packets_of(data) if (p[1] & 0x1F) << 8 | p[2] not in (0, PMT_PID))


# -- bytes, lines, time ---------------------------------------------------------------------


def test_byte_and_line_cutters() -> None:
    assert segments(run(ByteCutter(10), [(b"x" * 25, 0)])) == [b"x" * 10, b"x" * 10, b"x" * 5]
    assert segments(run(LineCutter(), [(b'{"a":1}\n{"b"', 0), (b":2}\n", 1)])) == [
        b'{"a":1}\n',
        b'{"b":2}\n',
    ]


def test_interval_cutter_ends_on_time_at_a_multiple_of_align() -> None:
    cutter = IntervalCutter(1.0, align=PACKET)
    assert cutter.feed(b"x" * 200, 0.0) == [b"x" * 200]
    assert cutter.wake_at() == float("inf")  # 200 is not a multiple: only input can end it
    assert cutter.feed(b"y" * 300, 1.5) == [b"y" * 176, CUT, b"y" * 124]  # to the packet
    assert cutter.feed(b"z" * 64, 2.4) == [b"z" * 64]  # 188 now: on a boundary
    assert cutter.wake_at() == pytest.approx(2.5)
    assert cutter.poll(2.4) == []
    assert cutter.poll(2.6) == [CUT]  # time is up and it is on a boundary: no input needed
    assert cutter.feed(b"w" * 10, 3.0) == [b"w" * 10]  # a new segment, its own clock
    assert cutter.feed(b"w" * 10, 4.0) == [b"w" * 10]  # up, but 20 bytes: wait for 168


# -- MPEG-TS ---------------------------------------------------------------------------------


def test_ts_segments_start_at_keyframes_with_the_tables() -> None:
    stream = video_stream([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])  # a GOP every 0.5 s
    cutter = TSCutter(interval=1.0)
    out = segments(run(cutter, [(stream, 0.0)]))  # a burst: only media time counts
    assert cutter.mode == "video"
    assert len(out) == 3  # two GOPs per segment
    for seg in out:
        first = packets_of(seg)[:3]
        assert first[0] == pat()
        assert first[1] == pmt((0x1B, VIDEO), (0x0F, AUDIO))
        assert first[2][:3] == bytes([0x47, 0x40 | VIDEO >> 8, VIDEO & 0xFF])  # the keyframe
    # Nothing dropped or reordered: only the tables were repeated.
    assert without_tables(b"".join(out)) == without_tables(stream)
    assert cutter.random_access_points == 6
    assert cutter.time_cuts == 0


def test_ts_cuts_do_not_depend_on_how_the_input_is_split() -> None:
    stream = video_stream([0.0, 1.0, 2.0, 3.0])
    whole = segments(run(TSCutter(1.0), [(stream, 0.0)]))
    rng = random.Random(7)
    for _ in range(20):
        pieces, pos = [], 0
        while pos < len(stream):
            size = rng.choice([1, 7, 187, 188, 189, 1000, 5000])
            pieces.append((stream[pos : pos + size], 0.0))
            pos += size
        assert segments(run(TSCutter(1.0), pieces)) == whole
    assert len(whole) == 4


def test_ts_random_access_flag_of_audio_is_not_a_keyframe() -> None:
    # Video keyframes only every 2 s; audio PES starts (flagged random access) between.
    stream = video_stream([0.0, 2.0, 4.0], frames_per_gop=10)
    out = segments(run(TSCutter(0.5), [(stream, 0.0)]))
    assert len(out) == 3


def test_ts_keyframes_found_without_the_flag() -> None:
    # No random_access_indicator: the IDR/SPS NAL units at the PES start say it.
    stream = video_stream([0.0, 1.0, 2.0], rai=False)
    assert len(segments(run(TSCutter(1.0), [(stream, 0.0)]))) == 3
    # And an inter frame alone is never one.
    assert not TSCutter(1.0)._random_access(pes(VIDEO, 0.0, b"\x00\x00\x01\x41"))


def test_ts_media_clock_wraps() -> None:
    wrap = (1 << 33) / 90_000
    stream = video_stream([wrap - 1.0, wrap - 0.5, 0.0, 0.5, 1.0])
    assert len(segments(run(TSCutter(1.0), [(stream, 0.0)]))) == 3


def test_ts_without_tables_is_cut_on_time_at_packets() -> None:
    stream = b"".join(packet(0x44, bytes([i]) * 10) for i in range(30))
    cutter = TSCutter(1.0)
    actions = cutter.feed(stream[:2000], 0.0)  # 10 packets and a part
    assert cutter.mode == "time"
    assert actions == [stream[: 10 * PACKET]]
    assert cutter.poll(5.0) == []  # a partial packet is held: wait for its end
    actions = cutter.feed(stream[2000:], 5.0)
    assert actions == [CUT, stream[10 * PACKET :]]  # at the packet boundary
    assert cutter.wake_at() == pytest.approx(6.0)
    assert cutter.poll(6.0) == [CUT]


def test_ts_audio_only_program_cuts_at_pes_starts() -> None:
    stream = pat() + pmt((0x0F, AUDIO))
    for i in range(6):
        stream += pes(AUDIO, i * 0.5) + packet(AUDIO, b"a" * 20)
    cutter = TSCutter(1.0)
    times = [0.0] * 2 + [i * 0.5 for i in range(6) for _ in range(2)]
    out = segments(run(cutter, list(zip(packets_of(stream), times, strict=True))))
    assert cutter.mode == "audio"
    assert len(out) == 3
    for seg in out[1:]:
        assert packets_of(seg)[2][1] & 0x40  # after the tables: a PES start


def test_ts_video_without_keyframes_for_gop_limit_is_cut_on_time() -> None:
    stream = video_stream([0.0], frames_per_gop=2)
    cutter = TSCutter(1.0, gop_limit=5.0)
    cutter.feed(stream, 0.0)
    assert cutter.wake_at() == pytest.approx(5.0)
    cutter.feed(pes(VIDEO, 0.3, b"\x00\x00\x01\x41"), 4.0)
    assert cutter.poll(4.9) == []
    assert cutter.poll(5.0) == [CUT]
    assert cutter.time_cuts == 1


def test_input_that_is_not_ts_falls_back_to_time_cuts() -> None:
    cutter = TSCutter(1.0)
    good = pat()
    assert cutter.feed(good + b"not a ts packet".ljust(PACKET, b"."), 0.0) == [
        good + b"not a ts packet".ljust(PACKET, b".")
    ]
    assert cutter.mode == "time"
    assert cutter.feed(b"z" * 100, 0.5) == [b"z" * 100]  # 476 bytes: not on a packet
    assert cutter.feed(b"z" * 100, 2.0)[:2] == [b"z" * 88, CUT]  # time up: to 564
