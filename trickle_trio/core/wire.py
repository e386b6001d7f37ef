"""The trickle wire format: header names, status codes, bodies, seq and path parsing.

Every value here is what the reference Go server (go-livepeer ``trickle/``) puts on the
wire, so that clients written against it work unchanged. Imports only the stdlib.
"""

from __future__ import annotations

import re
from typing import Final

#: Response header: the seq a response is about.
SEQ_HEADER: Final = "Lp-Trickle-Seq"
#: Response header: the channel's next write seq (``nextWrite``).
LATEST_HEADER: Final = "Lp-Trickle-Latest"
#: Response header: present (value ``terminated``) when the channel is closed.
CLOSED_HEADER: Final = "Lp-Trickle-Closed"
CLOSED_VALUE: Final = "terminated"
#: Request header on a publish: close every older segment in the window first.
RESET_HEADER: Final = "Lp-Trickle-Reset"
#: Response header (ours): bytes already buffered when a GET response starts.
SIZE_HEADER: Final = "Lp-Trickle-Size"
#: Request header on create: the channel's MIME type.
EXPECT_CONTENT_HEADER: Final = "Expect-Content"

#: "The channel exists but this segment does not."
STATUS_SEQ_NOT_FOUND: Final = 470

#: Seq aliases understood on GET (and, for -1, on POST).
SEQ_NEXT: Final = -1
SEQ_CURRENT: Final = -2

#: Largest absolute seq accepted: 2**53 - 1 keeps every seq exact in JSON/JavaScript.
MAX_SEQ: Final = 2**53 - 1

#: The changefeed channel's name.
CHANGEFEED_CHANNEL: Final = "_changes"

#: Segments a channel keeps (slot = seq mod WINDOW).
WINDOW: Final = 5

# Bodies, exactly as the reference writes them. Go's ``http.Error`` appends a newline and
# sets ``Content-Type: text/plain; charset=utf-8`` and ``X-Content-Type-Options: nosniff``.
STREAM_NOT_FOUND: Final = "Stream not found"
INVALID_STREAM: Final = "Invalid stream"
INVALID_IDX: Final = "Invalid idx"
NONEXISTENT_SEGMENT: Final = "Nonexistent segment"
ENTRY_NOT_FOUND: Final = "Entry not found"
TEXT_PLAIN: Final = "text/plain; charset=utf-8"

_SEQ_RE: Final = re.compile(r"(?:0|-?[1-9][0-9]{0,15})")

#: Characters allowed in a channel name: RFC 3986 unreserved plus a few sub-delims that
#: real deployments use. No "/", no whitespace, no control or non-ASCII characters.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=-]+")
MAX_NAME_LENGTH: Final = 256


class InvalidSeq(ValueError):
    """A ``{seq}`` path segment that is not a plain decimal integer in range."""


class InvalidChannelName(ValueError):
    """A channel name that is empty, too long or has characters we do not route."""


def parse_seq(text: str) -> int:
    """Parse a ``{seq}`` path segment strictly.

    Accepts ``0``, a positive decimal without leading zeros, or its negation, with an
    absolute value of at most :data:`MAX_SEQ`. Rejects ``+1``, ``01``, ``-0``, spaces,
    non-ASCII digits and anything longer (Go's ``Atoi`` is laxer; we validate before
    anything is created, which is a deliberate improvement).

    Raises:
        InvalidSeq: the text is not such an integer.
    """
    if not _SEQ_RE.fullmatch(text):
        raise InvalidSeq(text)
    seq = int(text)
    if abs(seq) > MAX_SEQ:
        raise InvalidSeq(text)
    return seq


def check_channel_name(name: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return ``name`` if it is a routable channel name.

    Raises:
        InvalidChannelName: empty, longer than ``max_length`` or with other characters.
    """
    if not name or len(name) > max_length or not _NAME_RE.fullmatch(name):
        raise InvalidChannelName(name)
    return name


def normalize_base_path(base_path: str) -> str:
    """``"trickle"`` -> ``"/trickle/"``; ``""`` and ``"/"`` -> ``"/"``."""
    stripped = base_path.strip("/")
    return "/" if not stripped else f"/{stripped}/"


def resolve_read_seq(seq: int, next_write: int) -> int:
    """The absolute seq a GET (or a DELETE of a seq) for ``seq`` means.

    ``-1`` is ``next_write``; ``-2`` is ``next_write - 1`` but never below 0 (the
    reference's rule); ``-N`` (ours) is ``next_write - (N - 1)`` and may be negative,
    which simply matches no segment.
    """
    if seq >= 0:
        return seq
    if seq == SEQ_CURRENT:
        return max(next_write - 1, 0)
    return next_write + seq + 1
