"""A live channel's chunks: the stamp every chunk starts with (``STAMP``), the pacing
asked for (``Pacing``), what a publisher sends (``Pace``), what it tells its
subscribers (``ChannelState``), and the subscriber's side that cuts the stream back
into chunks, checks each stamp and records its latency (``ChunkSink``). Used by the
live engine and by ``join``.

Rules: nothing here does I/O or awaits; a ``ChunkSink`` is fed by one connection at a
time, and the views it is given are valid only during the call.

Imports: stdlib only.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, fields
from typing import Any

#: magic, channel, seq, chunk index, write time (monotonic ns).
STAMP = struct.Struct("<4sIIIq")
MAGIC = b"TRKL"


@dataclass
class ChannelState:
    """What a channel's publisher tells its subscribers (same process)."""

    index: int
    name: str
    written: int = 0
    done: bool = False


class ChunkSink:
    """Cuts one subscriber's stream back into chunks; records each chunk's latency.

    Chunks have a fixed size, so a chunk ends every ``size`` bytes of a segment; the
    stamp at its start says where it came from and when it was written.
    """

    __slots__ = (
        "buf",
        "channel",
        "corrupt",
        "count",
        "cut",
        "latencies",
        "seq",
        "since_ns",
        "size",
    )

    def __init__(self, channel: int, size: int, latencies: list[float]) -> None:
        self.channel = channel
        self.size = size
        self.latencies = latencies
        #: Chunks written before this (monotonic ns) count, but their latency is not kept.
        self.since_ns = 0
        self.buf = bytearray()
        self.seq = 0
        self.count = 0
        #: Chunks whose stamp is wrong (bytes from elsewhere: a server bug).
        self.corrupt = 0
        #: Segments that ended inside a chunk: a publish cut short (its POST broke), which
        #: the protocol keeps as written. Not corruption; counted apart.
        self.cut = 0

    def start_segment(self, seq: int) -> None:
        if self.buf:
            self.cut += 1  # the previous segment ended inside a chunk
            self.buf.clear()
        self.seq = seq

    def __call__(self, view: memoryview) -> None:
        size = self.size
        buf = self.buf
        if not buf and len(view) == size:
            self._chunk(view, time.monotonic_ns())
            return
        buf += view
        if len(buf) < size:
            return
        now = time.monotonic_ns()
        while len(buf) >= size:
            self._chunk(buf, now)
            del buf[:size]

    def _chunk(self, data: memoryview | bytearray, now: int) -> None:
        magic, channel, seq, _index, t_ns = STAMP.unpack_from(data)
        if magic != MAGIC or channel != self.channel or seq != self.seq:
            self.corrupt += 1
            return
        self.count += 1
        if t_ns >= self.since_ns:
            self.latencies.append((now - t_ns) / 1e6)


@dataclass(frozen=True, kw_only=True)
class Pacing:
    """A paced live stream as given on the command line: ``live``'s channels and
    ``join``'s busy channel."""

    bitrate: float = 2e6
    segment_s: float = 1.0
    interval: float = 0.02
    duration: float = 10.0

    def pacing(self) -> dict[str, Any]:
        """These fields by name (to make another configuration with the same pacing)."""
        return {f.name: getattr(self, f.name) for f in fields(Pacing)}

    def validate_pacing(self) -> None:
        if self.interval <= 0 or self.duration <= 0 or self.segment_s <= 0:
            raise ValueError("interval, duration and segment length must be > 0")


@dataclass(frozen=True)
class Pace:
    """What every publisher of an engine sends."""

    chunk_bytes: int
    chunks_per_segment: int
    interval: float
    mime: str
