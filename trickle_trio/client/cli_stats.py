"""``--stats S`` of ``publish`` and ``subscribe``: a line of figures on stderr every S s.

    trickle-trio: subscribe segments=42 bytes=10.5MB bitrate=2.01Mbit/s seq=41 lag=0 reconnects=0

``bitrate`` is over the last period; ``lag`` is, for ``subscribe``, how many segments
the one just read was behind the live edge, and for ``publish`` the longest a chunk of
input waited (in seconds) before it went to the server, over the last period.

Imports: stdlib and trio.
"""

from __future__ import annotations

from typing import IO

import trio

__all__ = ["Meter", "human_bytes", "human_rate"]


def human_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return f"{int(count)}B"


def human_rate(bits_per_second: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_second >= size:
            return f"{bits_per_second / size:.2f}{unit}"
    return f"{bits_per_second:.0f}bit/s"


class Meter:
    """Counts a command's segments and bytes; :meth:`run` prints them periodically."""

    def __init__(self, command: str, stderr: IO[str]) -> None:
        self.command = command
        self.stderr = stderr
        self.segments = 0
        self.bytes = 0
        self.seq: int | None = None
        self.lag: float = 0.0
        self.reconnects = 0
        self._mark = (0.0, 0)  # (time, bytes) at the last line

    def segment_done(self, seq: int, lag: float | None = None) -> None:
        self.segments += 1
        self.seq = seq
        if lag is not None:
            self.lag = lag

    def note_lag(self, seconds: float) -> None:
        """``publish``: a chunk waited this long; the line shows the period's longest."""
        self.lag = max(self.lag, seconds)

    def line(self, now: float) -> str:
        """The figures now; starts the next period."""
        then, then_bytes = self._mark
        elapsed = now - then
        rate = (self.bytes - then_bytes) * 8 / elapsed if elapsed > 0 else 0.0
        self._mark = (now, self.bytes)
        lag = f"{self.lag:.2f}s" if self.command == "publish" else f"{self.lag:.0f}"
        if self.command == "publish":
            self.lag = 0.0
        return (
            f"trickle-trio: {self.command} segments={self.segments} "
            f"bytes={human_bytes(self.bytes)} bitrate={human_rate(rate)} "
            f"seq={'-' if self.seq is None else self.seq} lag={lag} "
            f"reconnects={self.reconnects}"
        )

    async def run(self, period: float) -> None:
        """Print a line every ``period`` seconds until cancelled.

        Cancellation: the only way it ends; a line is printed whole or not at all.
        """
        self._mark = (trio.current_time(), self.bytes)
        while True:
            await trio.sleep(period)
            print(self.line(trio.current_time()), file=self.stderr, flush=True)
