"""Response heads: status lines and the Date header, built once and reused.

Imports: the stdlib only.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = [
    "CONTINUE",
    "CRLF",
    "LAST_CHUNK",
    "date_header",
    "error_answer",
    "has_close",
    "status_line",
]

_REASONS = {
    100: b"Continue",
    200: b"OK",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    470: b"",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_STATUS_LINES: dict[int, bytes] = {}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>``: HTTP/1.1 whatever the request's version, as Go's
    net/http and h11 answer (RFC 9110 §6.2: the highest version the server speaks)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        _STATUS_LINES[status] = line
    return line


_date: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """``Date: ...\\r\\n``, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        _date = (now, b"date: " + stamp.encode() + CRLF)
    return _date[1]


def error_answer(status: int, reason: str) -> list[bytes]:
    """A whole plain-text answer that closes the connection: head and body."""
    body = reason.encode() + b"\n"
    return [
        status_line(status),
        date_header(),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]


def has_close(headers: Any) -> bool:
    """Whether ASGI ``headers`` hold ``Connection: close``."""
    return any(
        bytes(name).lower() == b"connection" and b"close" in bytes(value).lower()
        for name, value in headers
    )
