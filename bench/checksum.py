"""The per-segment checksum: xxh3-64 when the ``xxhash`` package is installed (the
``bench`` extra; ~10x faster than CRC-32, which matters when one core checks more than
a gigabyte a second), CRC-32 from zlib otherwise. Every process of a run imports the
same environment, so publisher and subscribers always agree on the algorithm.

Imports: stdlib (xxhash if present).
"""

from __future__ import annotations

import zlib
from typing import Protocol


class Checksum(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def intdigest(self) -> int: ...


class _Crc32:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def intdigest(self) -> int:
        return self.value


try:
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    NAME = "crc32"

    def new() -> Checksum:
        """A fresh checksum (CRC-32: install the ``bench`` extra for xxh3)."""
        return _Crc32()

else:
    NAME = "xxh3_64"

    def new() -> Checksum:
        """A fresh xxh3-64 checksum."""
        h: Checksum = xxhash.xxh3_64()
        return h
