"""Request heads and bodies of one HTTP/1.1 connection, parsed by httptools (llhttp).

llhttp is the C parser of Node.js: it decodes chunked bodies, refuses what RFC 9112
says a server must refuse (``Content-Length`` with ``Transfer-Encoding``, two different
``Content-Length``, bad chunk sizes, bare LF in a head) and is fast where h11, in
Python, was the largest per-request cost. This module adds what llhttp leaves to its
user: a bound on the size of a head (every byte of the request line and header
fields, however many reads it came in), and the events of a connection as plain calls.

Rules:
1. Bytes are fed in order; each call reports what they completed, synchronously, on
   the :class:`Events` given at construction: a head, body bytes, the end of a body.
2. Several requests may arrive in one read (pipelining): their events come in order;
   the connection serves the requests one after another.
3. Any error ends the connection's parsing for good (:class:`BadRequest`, with the
   status to answer when no response has started yet).

Sans-IO: no trio; imports httptools and the stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httptools

__all__ = ["BadRequest", "Events", "RequestHead", "RequestParser"]


class BadRequest(Exception):
    """The bytes on the connection are not a request we serve; answer ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RequestHead:
    """A request line and its headers (names lower-case, in arrival order)."""

    method: str
    target: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    #: The connection may carry another request after this one's answer.
    keep_alive: bool
    #: The request has a body (``Content-Length`` > 0 or chunked).
    has_body: bool
    #: The client waits for ``100 Continue`` before it sends the body.
    expect_continue: bool


class Events(Protocol):
    """What a parsed request is made of, as the parser completes it."""

    def on_head(self, head: RequestHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...


class RequestParser:
    """Feeds a connection's bytes to llhttp and reports :class:`Events`."""

    __slots__ = (
        "_chunked",
        "_content_length",
        "_events",
        "_expect",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_head",
        "_parser",
        "_target",
        "failed",
    )

    def __init__(self, events: Events, *, max_head_bytes: int) -> None:
        self._events = events
        self._max_head = max_head_bytes
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._target = b""
        self._head_bytes = 0
        self._in_head = False
        self._chunked = False
        self._content_length = b""
        self._expect = False
        #: Set once a feed failed: nothing is parsed after that.
        self.failed: BadRequest | None = None

    def close(self) -> None:
        """Parse nothing more and let go of the events' receiver (the parser, llhttp's
        object and the connection would otherwise hold each other in a cycle)."""
        self.failed = self.failed or BadRequest(400, "Connection closed")
        self._parser = None
        self._events = _NoEvents()

    @property
    def in_head(self) -> bool:
        """True while a request head has begun but not ended (a partial head)."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; the events it completes are reported before this returns.

        Raises:
            BadRequest: malformed, too large, or a protocol we don't speak. Raised again
                by every later call.
        """
        if self.failed is not None:
            raise self.failed
        parser = self._parser
        assert parser is not None  # closed parsers have failed
        while data:
            try:
                parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # An Upgrade (h2c, WebSocket) we don't take: served as plain HTTP/1.1,
                # as the reference (Go's net/http without a hijacking handler) does.
                # llhttp stopped after the head; what follows is the next request.
                offset = upgrade.args[0] if upgrade.args else len(data)
                data = data[offset:]
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                self.failed = cause if isinstance(cause, BadRequest) else _bad(exc)
                raise self.failed from None
            except httptools.HttpParserError as exc:
                self.failed = _bad(exc)
                raise self.failed from None

    # -- llhttp's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._chunked = False
        self._content_length = b""
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._target = url if not self._head_bytes else self._target + url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        name = name.lower()
        self._headers.append((name, value))
        if name == b"transfer-encoding":
            if self._chunked or value.strip().lower() != b"chunked":
                # Only chunked is implemented (as in Go's net/http and h11): any other
                # coding, or a list of them, is RFC 9112 §6.1's 501.
                raise BadRequest(501, "Unsupported transfer encoding")
            self._chunked = True
        elif name == b"content-length":
            self._content_length = value
        elif name == b"expect":
            self._expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        assert parser is not None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise BadRequest(505, "HTTP Version Not Supported")
        has_body = self._chunked or self._content_length.strip() not in (b"", b"0")
        head = RequestHead(
            method=parser.get_method().decode("ascii"),
            target=self._target,
            http_version=version,
            headers=self._headers,
            keep_alive=parser.should_keep_alive(),
            has_body=has_body,
            expect_continue=self._expect and has_body,
        )
        self._events.on_head(head)

    def on_body(self, body: bytes) -> None:
        self._events.on_body(body)

    def on_message_complete(self) -> None:
        self._events.on_end()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head:
            raise BadRequest(431, "Request Header Fields Too Large")


#: llhttp's words for what it refused -> the status and reason we answer with.
_REASONS = (
    ("content-length", "transfer-encoding", 400, "Content-Length with Transfer-Encoding"),
    ("duplicate content-length", "", 400, "Duplicate Content-Length"),
    ("content-length", "", 400, "Invalid Content-Length"),
    ("chunk", "", 400, "Invalid chunked body"),
    ("transfer-encoding", "", 400, "Invalid Transfer-Encoding"),
    ("version", "", 505, "HTTP Version Not Supported"),
    ("method", "", 400, "Invalid method"),
    ("header", "", 400, "Invalid header"),
)


class _NoEvents:
    """The receiver of a closed parser."""

    def on_head(self, head: RequestHead) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        pass

    def on_end(self) -> None:
        pass


def _bad(exc: Exception) -> BadRequest:
    text = str(exc)
    if "PRI" in text:  # the HTTP/2 connection preface (prior knowledge): as Go's 400
        return BadRequest(400, "Bad Request: no HTTP/2 here")
    lowered = text.lower()
    for first, second, status, reason in _REASONS:
        if first in lowered and second in lowered:
            return BadRequest(status, reason)
    return BadRequest(400, "Bad Request")
