"""ChunkedBody: a request body in HTTP/1.1 chunked coding, decoded as it arrives.

Used by the server's fast path (``trickle_trio.http.fastpath``) for a segment POST
whose body the app handed to the connection's reader: each payload piece goes to a
callback as soon as its bytes are in, without an event object or a queue per chunk.
Framing is checked as h11 checks it (the same chunk-size line grammar, the CRLF after
each payload, the same line-length limit). Decoding stops at the last-chunk line
(size 0): that line and every byte after it are returned, for h11 to parse the trailer
and the end of the message, so h11 still decides where the request ends and what
follows on the connection.

Sans-IO: no I/O, no trio.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["BadChunk", "ChunkedBody"]

# h11's grammar (h11/_abnf.py): 1-20 hex digits, an optional extension (anything after
# a ";" on the line), optional trailing whitespace, CRLF.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_CRLF = b"\r\n"


class BadChunk(Exception):
    """The body's chunked framing is malformed (the request is a 400)."""


class ChunkedBody:
    """Decoder for one chunked body, from a chunk boundary on.

    :meth:`feed` takes the bytes as they come off the socket, in pieces of any size.
    """

    __slots__ = ("_footer", "_line", "_max_line", "_remaining")

    def __init__(self, max_line: int = 16 * 1024) -> None:
        self._max_line = max_line
        self._line = b""  # an incomplete chunk-size line
        self._remaining = 0  # payload bytes of the current chunk still to come
        self._footer = b""  # what is left of the CRLF after the current payload

    def feed(self, data: bytes, deliver: Callable[[bytes], None]) -> bytes | None:
        """Decode ``data``; hand each payload piece to ``deliver`` as it is found.

        Returns None when all of ``data`` was consumed and the body goes on, or the
        bytes from the start of the last-chunk line on (for h11). A piece that is all
        of ``data`` is passed as it is, never copied. Raises :class:`BadChunk` on
        malformed framing; pieces before the fault have been delivered.
        """
        pos = 0
        end = len(data)
        while pos < end:
            remaining = self._remaining
            if remaining:
                take = end - pos if end - pos < remaining else remaining
                deliver(data if take == end else data[pos : pos + take])
                pos += take
                self._remaining = remaining - take
                if take == remaining:
                    self._footer = _CRLF
                continue
            footer = self._footer
            if footer:
                piece = data[pos : pos + len(footer)]
                if not footer.startswith(piece):
                    raise BadChunk(f"malformed chunk footer: {piece!r}")
                pos += len(piece)
                self._footer = footer[len(piece) :]
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                line = self._line + data[pos:]
                if len(line) > self._max_line:
                    raise BadChunk("chunk-size line too long")
                self._line = line
                return None
            line = self._line + data[pos : newline + 1]
            match = _SIZE_LINE.fullmatch(line)
            if match is None or len(line) > self._max_line:
                raise BadChunk(f"illegal chunk header: {line[:64]!r}")
            size = int(match[1], 16)
            if size == 0:
                rest = self._line + data[pos:]
                self._line = b""
                return rest
            self._line = b""
            self._remaining = size
            pos = newline + 1
        return None
