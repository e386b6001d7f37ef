"""Log set-up for the entry points (``cli.py`` and ``asgi.py``); the library only logs.

Every lifecycle line is ``event key=value key=value`` (channel created/deleted/swept,
segment complete/empty/aborted/evicted with bytes and duration, shutdown, drain), with
the Go server's slog keys where they exist. ``log_format = "json"`` turns each line into
one JSON object: ``{"ts", "level", "logger", "event", ...the key=value fields}``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from .config import Settings

_FIELD = re.compile(r"(\w+)=(\S+)")


class JSONFormatter(logging.Formatter):
    """One JSON object per record; ``key=value`` pairs of the message become fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        first = _FIELD.search(message)
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": (message[: first.start()] if first else message).strip(),
        }
        for key, value in _FIELD.findall(message[first.start() :] if first else ""):
            fields.setdefault(key, _number(value))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, separators=(",", ":"))


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def configure_logging(settings: Settings) -> None:
    """Route the package's and hypercorn's log lines to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
