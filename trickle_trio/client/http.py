"""What every HTTP client module shares: deadlines, headers, URLs, TLS contexts, errors.

One request on one connection is :mod:`.connection`; the pool of connections is
:mod:`.transport`. Deadlines are per phase and belong to the caller (:class:`Timeouts`):
connect, first byte (counted from the *end* of the request body, so an idle preconnect
never times out), between chunks, and each write. ``None`` means no deadline.

Imports: stdlib, trio, h11 and ``trickle_trio.core``.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from ..core.errors import TrickleError

__all__ = [
    "Headers",
    "Origin",
    "Response",
    "ResponseArrived",
    "ResponseHead",
    "Timeouts",
    "TransportError",
    "TransportTimeout",
    "make_ssl_context",
    "split_url",
    "transport_errors",
]

USER_AGENT: Final = "trickle-trio"
#: What h11 accepts as a request target (visible ASCII).
_TARGET_RE: Final = re.compile(r"[\x21-\x7e]+")
#: Bodies of small answers (errors, ``/next``) are read up to this size.
MAX_SMALL_BODY: Final = 64 * 1024


class TransportError(TrickleError):
    """The connection failed: refused, reset, TLS handshake, or a malformed response."""


class TransportTimeout(TransportError):
    """A per-phase deadline of :class:`Timeouts` passed.

    Attributes:
        phase: ``"connect"``, ``"first_byte"``, ``"between_chunks"`` or ``"write"``.
        url: the request's URL.
    """

    def __init__(self, phase: str, url: str) -> None:
        super().__init__(f"{phase} timeout: {url}")
        self.phase = phase
        self.url = url


class ResponseArrived(TransportError):
    """The server answered while the request body was still open; the body is over."""

    def __init__(self, head: ResponseHead, url: str) -> None:
        super().__init__(f"{url}: answered {head.status} before the request body ended")
        self.head = head


@dataclass(frozen=True)
class Timeouts:
    """Per-phase deadlines in seconds; ``None`` = wait as long as it takes.

    Attributes:
        connect: TCP connect plus TLS handshake (and waiting for a free connection slot).
        first_byte: from the end of the request body to the response head. A preconnected
            POST whose body is still idle is never subject to it.
        between_chunks: between two chunks of a response body.
        write: for one chunk of a request body to be accepted (the server reads slowly).
    """

    connect: float | None = 10.0
    first_byte: float | None = None
    between_chunks: float | None = None
    write: float | None = None


class Headers(Mapping[str, str]):
    """Response headers, looked up case-insensitively; a repeated name keeps its last value.

    ``raw`` keeps every ``(name, value)`` pair as received.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.raw = list(items)
        self._map = {name.lower(): value for name, value in self.raw}

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


@dataclass(frozen=True)
class ResponseHead:
    """Status line and headers of a final response (1xx are skipped)."""

    status: int
    reason: str
    headers: Headers


@dataclass(frozen=True)
class Response:
    """A whole (small) response, from :meth:`.Transport.request`."""

    head: ResponseHead
    body: bytes

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> Headers:
        return self.head.headers


@dataclass(frozen=True)
class Origin:
    """Where connections go: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """``"http://h:1/a/b?q"`` -> ``(Origin("http", "h", 1), "/a/b?q")``.

    Raises:
        ValueError: not an absolute http or https URL, or characters a request target
            cannot carry (spaces, controls: percent-encode them).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not _TARGET_RE.fullmatch(target):
        raise ValueError(f"invalid characters in URL path (percent-encode them): {url!r}")
    return Origin(scheme, parts.hostname, port or (443 if scheme == "https" else 80)), target


def make_ssl_context(*, insecure: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    """A client TLS context: certificates verified unless ``insecure``; HTTP/1.1 by ALPN.

    Args:
        insecure: accept any certificate (orchestrators with self-signed certificates).
        cafile: PEM file of extra trusted CAs.
    """
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not str(exc):
        text = str(cause) or type(cause).__name__
    return text


@contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """Socket, TLS and HTTP parsing failures -> :class:`TransportError`."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError) as exc:
        raise TransportError(f"{url}: {_describe(exc)}") from exc
