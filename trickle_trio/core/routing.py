"""Which route a request is for, decided once, from one normalised form of its target.

Every layer that needs to know what a request is for (the access guard, the segment
layer, the Quart views, and any other front end, ASGI or not) asks :func:`decide` and
uses its answer; none of them reads the path again. A target that can be read in more
than one way is refused (400) rather than guessed at:

Rule 1: the target is origin-form (``/a/b``) or absolute-form with an ``http``/``https``
    scheme and an authority (``http://host/a/b``, routed as ``/a/b``). Everything else
    (``http:/a``, ``x:/a``, ``*``, ``host:443``, a path without its leading ``/``, as
    HTTP/2 allows a client to send) is refused.
Rule 2: the path is split on its literal ``/`` first, then each segment is
    percent-decoded. A segment that is empty (``//``, a trailing ``/``), ``.`` or ``..``,
    or that decodes to one holding ``/``, ``\\``, a control character or bytes that are
    not UTF-8, is refused: such a path means different things to different readers.
Rule 3: the query string plays no part in routing.

``/healthz``, ``/readyz``, ``/metrics`` and ``/_status`` are the server's own routes,
at the root and under the base path (where channels live), and so are its pages under
``/_/`` (the only paths that may end with ``/``: a page's folder). The changefeed channel
(``_changes``) belongs to the server: clients may read it, never write or delete it
(403).

Imports only the stdlib and :mod:`.wire`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from . import wire

#: What a method may do to a trickle route: GET and HEAD read, every other method writes.
READ_METHODS: Final = frozenset({"GET", "HEAD"})

_ABSOLUTE_RE: Final = re.compile(rb"(?i)https?://([^/?#@]+)(/[^?#]*)?")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


class Kind(enum.Enum):
    """The kinds of route; each is served by one handler."""

    #: ``/healthz``, ``/readyz``: no token, no request slot.
    PROBE = "probe"
    #: ``/metrics``: no token (holds no channel names).
    METRICS = "metrics"
    #: ``/_status``: the publish token.
    STATUS = "status"
    #: ``/{ch}``: create (POST) or delete (DELETE) a channel.
    CHANNEL = "channel"
    #: ``GET``/``HEAD /{ch}/next``.
    NEXT = "next"
    #: ``GET``/``POST /{ch}/{seq}``: the segment layer streams these.
    SEGMENT = "segment"
    #: ``/{ch}/{seq}`` with any other method (``DELETE`` closes a segment).
    SEQ = "seq"
    #: ``/_/...`` (at the root and under the base path): the server's own pages (the
    #: watch page). Open: a page holds no channel names; what it reads is guarded.
    PAGE = "page"
    #: A well-formed path that is no route: the app answers 404 or 405.
    UNKNOWN = "unknown"


class Access(enum.Enum):
    """What a request needs to be let through."""

    OPEN = "open"  # nothing
    READ = "read"  # the subscribe or the publish token, when either is configured
    WRITE = "write"  # the publish token, when configured


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one request.

    Attributes:
        kind: which handler serves it.
        access: which token it needs.
        path: the normalised path (percent-decoded; ``scope["path"]`` is replaced by it).
        channel: the channel name, unvalidated (its handler answers a bad one with its
            own 4xx), for the kinds that have one.
        seq: the seq text, unvalidated, for SEGMENT, SEQ and NEXT (``"next"``).
    """

    kind: Kind
    access: Access
    path: str
    channel: str | None = None
    seq: str | None = None

    @property
    def raw_path(self) -> bytes:
        """The normalised path percent-encoded again (``scope["raw_path"]``)."""
        return quote(self.path, safe="/!$&'()*+,;=:@-._~").encode("ascii")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before any handler: answer ``status`` with ``message``."""

    status: int
    message: str


BAD_TARGET: Final = Refusal(400, "Bad request target")
CHANGEFEED_IS_THE_SERVERS: Final = Refusal(
    403, "The changefeed is written by the server only: clients may read it"
)

#: The first path segment of the server's own pages (a reserved channel name).
PAGE_NAME: Final = "_"

_ROOT_ROUTES: Final = {
    "healthz": (Kind.PROBE, Access.OPEN),
    "readyz": (Kind.PROBE, Access.OPEN),
    "metrics": (Kind.METRICS, Access.OPEN),
    "_status": (Kind.STATUS, Access.WRITE),
}


def decide(method: str, target: bytes, base_path: str = "/") -> Route | Refusal:
    """The route of a ``method`` request for ``target`` (the raw request target, query
    string included or not), under ``base_path`` (as :func:`wire.normalize_base_path`
    gives it, or unnormalised).

    Pure and cheap: call it once per request and hand the result on.
    """
    decoded = _segments(target)
    if decoded is None:
        return BAD_TARGET
    segments, trailing = decoded
    path = "/" + "/".join(segments)
    base = _base_segments(base_path)
    rest = segments[len(base) :] if segments[: len(base)] == base else None
    if segments[0] == PAGE_NAME or (rest and rest[0] == PAGE_NAME):
        return Route(Kind.PAGE, Access.OPEN, path + "/" if trailing else path)
    if trailing:
        return BAD_TARGET  # Rule 2: a trailing "/" only ever names a page's folder
    if len(segments) == 1 and segments[0] in _ROOT_ROUTES:
        kind, access = _ROOT_ROUTES[segments[0]]
        return Route(kind, access, path)
    access = Access.READ if method in READ_METHODS else Access.WRITE
    if not rest or not rest[0] or len(rest) > 2:
        return Route(Kind.UNKNOWN, access, path)
    channel = rest[0]
    if len(rest) == 1 and channel in _ROOT_ROUTES:  # the server's own, under the base too
        kind, access = _ROOT_ROUTES[channel]
        return Route(kind, access, path)
    if channel == wire.CHANGEFEED_CHANNEL and access is Access.WRITE:
        return CHANGEFEED_IS_THE_SERVERS
    if len(rest) == 1:
        return Route(Kind.CHANNEL, access, path, channel)
    seq = rest[1]
    if seq == "next" and access is Access.READ:
        kind = Kind.NEXT
    elif method in ("GET", "POST"):
        kind = Kind.SEGMENT
    else:
        kind = Kind.SEQ
    return Route(kind, access, path, channel, seq)


def _base_segments(base_path: str) -> list[str]:
    stripped = base_path.strip("/")
    return stripped.split("/") if stripped else []


def _segments(target: bytes) -> tuple[list[str], bool] | None:
    """The decoded path segments of ``target`` (``[""]`` for ``/``) and whether the path
    ended with a ``/`` after them, or None if the target is refused (Rules 1 and 2)."""
    if b"#" in target:  # a fragment is never part of a request target
        return None
    raw = target.partition(b"?")[0]
    if not raw.startswith(b"/"):
        absolute = _ABSOLUTE_RE.fullmatch(raw)
        if absolute is None:
            return None
        raw = absolute.group(2) or b"/"
    if raw == b"/":
        return [""], False
    trailing = raw.endswith(b"/")
    segments = []
    for piece in raw[1 : -1 if trailing else None].split(b"/"):
        segment = _decode_segment(piece)
        if segment is None:
            return None
        segments.append(segment)
    return segments, trailing


def _decode_segment(piece: bytes) -> str | None:
    if not piece or any(byte <= 0x20 or byte >= 0x7F for byte in piece):
        return None
    if b"%" in piece:
        decoded = bytearray()
        index = 0
        while index < len(piece):
            byte = piece[index]
            if byte == 0x25:  # "%"
                escape = piece[index + 1 : index + 3]
                if len(escape) != 2 or not _HEX.issuperset(escape):
                    return None
                decoded.append(int(escape, 16))
                index += 3
            else:
                decoded.append(byte)
                index += 1
        piece = bytes(decoded)
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text in (".", "..") or "/" in text or "\\" in text or not text.isprintable():
        return None
    return text
