"""Where ``trickle-trio publish`` cuts its input into segments: pure logic, no I/O.

A cutter is fed the input as it is read, with the time it was read, and answers with
*actions*: ``bytes`` to append to the segment under way, or :data:`CUT` (end the
segment; the next bytes start a new one). It never drops or reorders a byte; the MPEG-TS
cutter only adds copies of the stream's PAT and PMT at the start of a segment.

- :class:`ByteCutter`: a segment every N bytes.
- :class:`LineCutter`: a segment per line (JSON lines).
- :class:`IntervalCutter`: a segment every S seconds of wall clock, cut at a multiple of
  ``align`` bytes.
- :class:`TSCutter`: MPEG-TS cut at random-access points, so that every segment starts
  with a keyframe and decodes on its own (a trickle segment is a GOP). It reads the PAT
  and PMT to find the video stream, and takes a packet of it as a random-access point
  when its adaptation field's ``random_access_indicator`` is set or, failing that, when
  the PES that starts there begins an IDR (H.264), an IRAP picture (HEVC) or a sequence
  header (MPEG-1/2 video). A segment ends at the first such point once it holds
  ``interval`` seconds of media (by the PES timestamps; wall clock without them), and
  starts with copies of the latest PAT and PMT, so a player that opens it alone knows
  its streams. Streams without random-access points fall back to the time-based cut at
  packet boundaries: no PMT or no video stream (an audio-only program cuts where an
  audio PES starts), input that is not MPEG-TS, and a video stream that has gone
  ``gop_limit`` seconds without one.

Time is whatever clock the caller passes (``trio.current_time()`` in the CLI), so the
rules are tested without one. Imports: stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

__all__ = [
    "CUT",
    "Action",
    "ByteCutter",
    "Cutter",
    "IntervalCutter",
    "LineCutter",
    "TSCutter",
]

#: In a list of actions: end the segment under way here.
CUT: Final = None
Action = bytes | None

TS_PACKET: Final = 188
_SYNC: Final = 0x47
_PTS_HZ: Final = 90_000
_PTS_WRAP: Final = 1 << 33
#: A GOP that is a hair shorter than the interval (rounded timestamps) still ends it.
_PTS_SLACK: Final = _PTS_HZ // 100

#: PMT stream types of video the cutter knows (ISO/IEC 13818-1 table 2-34 and successors).
_MPEG_VIDEO: Final = frozenset({0x01, 0x02})
_H264: Final = frozenset({0x1B})
_HEVC: Final = frozenset({0x24})
VIDEO_STREAM_TYPES: Final = _MPEG_VIDEO | _H264 | _HEVC | frozenset({0x10, 0x33, 0x42, 0xD1, 0xEA})


class Cutter:
    """The common shape; subclasses decide where segments end.

    ``feed`` and ``poll`` return actions in order. ``wake_at`` is when ``poll`` might
    next cut without new input (``math.inf``: only input can). ``finish`` returns what
    is held back at the end of the input (never a cut).
    """

    def feed(self, data: bytes, now: float) -> list[Action]:
        raise NotImplementedError

    def poll(self, now: float) -> list[Action]:
        return []

    def wake_at(self) -> float:
        return math.inf

    def finish(self) -> list[Action]:
        return []


class ByteCutter(Cutter):
    """A segment every ``size`` bytes."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._filled = 0

    def feed(self, data: bytes, now: float) -> list[Action]:
        out: list[Action] = []
        while data:
            count = min(len(data), self.size - self._filled)
            out.append(data[:count])
            data = data[count:]
            self._filled += count
            if self._filled == self.size:
                out.append(CUT)
                self._filled = 0
        return out


class LineCutter(Cutter):
    """A segment per line: each ends after its ``\\n``."""

    def feed(self, data: bytes, now: float) -> list[Action]:
        out: list[Action] = []
        while data:
            end = data.find(b"\n")
            if end < 0:
                out.append(data)
                break
            out += [data[: end + 1], CUT]
            data = data[end + 1 :]
        return out


class IntervalCutter(Cutter):
    """A segment every ``interval`` seconds from its first byte, ended at a multiple of
    ``align`` bytes: once the time is up, the bytes that complete the last ``align``
    unit go to the old segment, the rest to a new one. A segment that is on a boundary
    when its time is up ends then, without waiting for input."""

    def __init__(self, interval: float, align: int = 1) -> None:
        if interval <= 0 or align < 1:
            raise ValueError("interval must be > 0 and align >= 1")
        self.interval = interval
        self.align = align
        self._size = 0
        self._started: float | None = None

    def feed(self, data: bytes, now: float) -> list[Action]:
        out = self.poll(now)
        while data:
            if self._started is None:
                self._started = now
            if now < self._started + self.interval:
                out.append(data)
                self._size += len(data)
                break
            count = min(len(data), -self._size % self.align)
            if count:
                out.append(data[:count])
                self._size += count
                data = data[count:]
            if self._size % self.align == 0:
                out.append(CUT)
                self._size, self._started = 0, None
        return out

    def poll(self, now: float) -> list[Action]:
        started = self._started
        if started is not None and now >= started + self.interval and self._size % self.align == 0:
            self._size, self._started = 0, None
            return [CUT]
        return []

    def wake_at(self) -> float:
        if self._started is None or self._size % self.align:
            return math.inf
        return self._started + self.interval


class TSCutter(Cutter):
    """MPEG-TS cut at random-access points (see the module docstring).

    Args:
        interval: seconds of media a segment holds at least before it may end.
        gop_limit: seconds of wall clock a video stream may go without a random-access
            point before the segment is cut at a packet boundary anyway.
    """

    def __init__(self, interval: float, gop_limit: float | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self.gop_limit = gop_limit if gop_limit is not None else max(10.0, 10 * interval)
        self._partial = b""
        self._opaque: IntervalCutter | None = None  # the input is not MPEG-TS
        self._pmt_pids: set[int] = set()
        self._pat: bytes | None = None
        self._pmts: dict[int, bytes] = {}  # PMT PID -> its latest packet
        self._video: tuple[int, int, int] | None = None  # (PID, stream type, PMT PID)
        self._first_es: tuple[int, int] | None = None  # (PID, PMT PID) without video
        # The segment under way.
        self._size = 0
        self._started: float | None = None  # wall clock of its first byte
        self._started_pts: int | None = None
        self._last_rap: float | None = None
        #: Random-access points seen and cuts made by the time fallback (statistics).
        self.random_access_points = 0
        self.time_cuts = 0

    @property
    def mode(self) -> str:
        """``"video"`` (cut at keyframes), ``"audio"`` (at PES starts), ``"time"``."""
        if self._opaque is None and self._video is not None:
            return "video"
        if self._opaque is None and self._first_es is not None:
            return "audio"
        return "time"

    def feed(self, data: bytes, now: float) -> list[Action]:
        if self._opaque is not None:
            return self._opaque.feed(data, now)
        if self._partial:
            data = self._partial + data
        whole = len(data) - len(data) % TS_PACKET
        self._partial = data[whole:]
        out: list[Action] = []
        run_start = 0  # packets data[run_start:pos] go out together
        for pos in range(0, whole, TS_PACKET):
            packet = data[pos : pos + TS_PACKET]
            if packet[0] != _SYNC:
                return self._lose_sync(out, data, run_start, now)
            if self._starts_segment(packet, now) and (self._size or pos > run_start):
                if pos > run_start:
                    out.append(data[run_start:pos])
                out.append(CUT)
                self._begin_segment(packet, out, now)
                run_start = pos
            elif self._started is None:
                self._begin_segment(packet, out, now)
            self._size += TS_PACKET
        if whole > run_start:
            out.append(data[run_start:whole])
        return out

    def poll(self, now: float) -> list[Action]:
        if self._opaque is not None:
            return self._opaque.poll(now)
        if self._started is not None and now >= self.wake_at():
            self.time_cuts += 1
            self._size, self._started, self._started_pts = 0, None, None
            return [CUT]
        return []

    def wake_at(self) -> float:
        if self._opaque is not None:
            return self._opaque.wake_at()
        if self._started is None or self._partial:
            return math.inf
        if self.mode == "time":
            return self._started + self.interval
        if self.mode == "video":
            since = self._last_rap if self._last_rap is not None else self._started
            return max(since, self._started) + self.gop_limit
        return math.inf

    def finish(self) -> list[Action]:
        if self._opaque is not None:
            return self._opaque.finish()
        rest, self._partial = self._partial, b""
        return [rest] if rest else []

    # -- internals --------------------------------------------------------------------

    def _lose_sync(
        self, out: list[Action], data: bytes, run_start: int, now: float
    ) -> list[Action]:
        """Not MPEG-TS after all: from here on, the time-based cut on 188-byte units."""
        self._opaque = IntervalCutter(self.interval, TS_PACKET)
        self._opaque._size = self._size
        self._opaque._started = self._started
        self._partial = b""
        out += self._opaque.feed(data[run_start:], now)
        return out

    def _begin_segment(self, first: bytes, out: list[Action], now: float) -> None:
        """A segment starts with ``first``: repeat the tables before it, if known."""
        self._size, self._started = 0, now
        self._started_pts = self._pts(first) if self.mode == "video" else None
        pid = _pid(first)
        program = self._video[2] if self._video else self._first_es[1] if self._first_es else None
        if pid == 0 or program is None or self._pat is None or program not in self._pmts:
            return
        tables = self._pat + self._pmts[program]
        out.append(tables)
        self._size += len(tables)

    def _starts_segment(self, packet: bytes, now: float) -> bool:
        """Read the tables in ``packet``; True if the segment under way ends before it."""
        pid = _pid(packet)
        start = bool(packet[1] & 0x40)
        if pid == 0:
            if start:
                self._read_pat(packet)
            return False
        if pid in self._pmt_pids:
            if start:
                self._read_pmt(pid, packet)
            return False
        if self._video is not None:
            if pid != self._video[0] or not start or not self._random_access(packet):
                return False
            self.random_access_points += 1
            self._last_rap = now
            if self._started is None:
                return False
            pts, begun = self._pts(packet), self._started_pts
            if pts is not None and begun is None:
                self._started_pts = pts  # the segment's first keyframe: its media clock
                return False
            if pts is not None and begun is not None:
                elapsed = (pts - begun) % _PTS_WRAP
                return elapsed >= self.interval * _PTS_HZ - _PTS_SLACK
            return now >= self._started + self.interval
        if self._first_es is not None:
            if pid != self._first_es[0] or not start or self._started is None:
                return False
            return now >= self._started + self.interval
        return self._started is not None and now >= self._started + self.interval

    def _read_pat(self, packet: bytes) -> None:
        section = _section(packet, 0x00)
        if section is None:
            return
        self._pat = packet
        self._pmt_pids = {
            ((section[i + 2] & 0x1F) << 8) | section[i + 3]
            for i in range(8, len(section) - 4 - 3, 4)
            if (section[i] << 8 | section[i + 1]) != 0  # program 0: the network PID
        }

    def _read_pmt(self, pmt_pid: int, packet: bytes) -> None:
        section = _section(packet, 0x02)
        if section is None:
            return
        self._pmts[pmt_pid] = packet
        i = 12 + (((section[10] & 0x0F) << 8) | section[11])
        end = len(section) - 4
        while i + 5 <= end:
            stream_type = section[i]
            es_pid = ((section[i + 1] & 0x1F) << 8) | section[i + 2]
            i += 5 + (((section[i + 3] & 0x0F) << 8) | section[i + 4])
            if stream_type in VIDEO_STREAM_TYPES:
                if self._video is None or self._video[0] == es_pid:
                    self._video = (es_pid, stream_type, pmt_pid)
            elif self._first_es is None:
                self._first_es = (es_pid, pmt_pid)

    def _random_access(self, packet: bytes) -> bool:
        """The packet starts a PES that a decoder can start from."""
        control = (packet[3] >> 4) & 0x03
        if control in (2, 3) and packet[4] > 0 and packet[5] & 0x40:
            return True
        es = _es_payload(packet)
        if not es or self._video is None:
            return False
        return _starts_random_access(es, self._video[1])

    def _pts(self, packet: bytes) -> int | None:
        pes = _payload(packet)
        if len(pes) < 14 or pes[:3] != b"\x00\x00\x01" or not pes[7] & 0x80:
            return None
        p = pes[9:14]
        return ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1


def _pid(packet: bytes) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def _payload(packet: bytes) -> bytes:
    """The packet's payload (after the adaptation field); b"" if it has none."""
    control = (packet[3] >> 4) & 0x03
    if control == 1:
        return packet[4:]
    if control == 3:
        return packet[5 + packet[4] :]
    return b""


def _section(packet: bytes, table_id: int) -> bytes | None:
    """The PSI section starting in ``packet`` (whole, in this packet), or None."""
    payload = _payload(packet)
    if not payload:
        return None
    start = 1 + payload[0]  # pointer_field
    section = payload[start:]
    if len(section) < 12 or section[0] != table_id:
        return None
    length = 3 + (((section[1] & 0x0F) << 8) | section[2])
    if length > len(section):
        return None  # spans packets: not read (the cutter then keeps the time rule)
    return section[:length]


def _es_payload(packet: bytes) -> bytes:
    """The elementary-stream bytes in a packet that starts a PES (after its header)."""
    pes = _payload(packet)
    if len(pes) < 9 or pes[:3] != b"\x00\x00\x01":
        return b""
    return pes[9 + pes[8] :]


def _starts_random_access(es: bytes, stream_type: int) -> bool:
    """A start code in ``es`` that only a random-access point carries."""
    for unit in _start_codes(es):
        if stream_type in _H264:
            if unit & 0x1F in (5, 7):  # IDR slice, sequence parameter set
                return True
        elif stream_type in _HEVC:
            kind = (unit >> 1) & 0x3F
            if 16 <= kind <= 21 or kind == 32:  # IRAP picture, video parameter set
                return True
        elif stream_type in _MPEG_VIDEO and unit in (0xB3, 0xB8):  # sequence, GOP header
            return True
    return False


def _start_codes(es: bytes) -> Sequence[int]:
    """The byte after each ``00 00 01`` in ``es``."""
    codes = []
    i = es.find(b"\x00\x00\x01")
    while 0 <= i < len(es) - 3:
        codes.append(es[i + 3])
        i = es.find(b"\x00\x00\x01", i + 3)
    return codes
