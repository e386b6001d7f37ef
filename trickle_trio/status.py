"""``trickle-trio status URL``: a server's channels as a table in the terminal.

Reads the server's ``GET /_status`` (JSON) with the stdlib's urllib in a worker thread:
one request, no need for a streaming client here.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

import trio

_COLUMNS = (
    ("channel", "CHANNEL"),
    ("next_seq", "NEXT"),
    ("subscribers", "SUBS"),
    ("publishers", "PUBS"),
    ("bytes", "BYTES"),
    ("age_s", "AGE_S"),
    ("idle_s", "IDLE_S"),
    ("mime_type", "MIME"),
)


def fetch_status(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET ``{url}/_status`` (blocking)."""
    with urllib.request.urlopen(url.rstrip("/") + "/_status", timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def render(status: dict[str, Any]) -> str:
    """The status as an aligned text table, totals first."""
    head = (
        f"channels={status['channels_open']} subscribers={status['subscribers_attached']} "
        f"publishers={status['publishers_attached']} idle_preconnects={status['preconnects_idle']}"
        f"{' draining' if status.get('draining') else ''}"
    )
    rows = [[title for _, title in _COLUMNS]]
    for channel in sorted(status["channels"], key=lambda c: c["channel"]):
        rows.append([str(channel[key]) for key, _ in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [head, ""]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


async def show_status(url: str, as_json: bool = False) -> int:
    """Print the status of the server at ``url``; 0 on success, 1 on failure."""
    try:
        status = await trio.to_thread.run_sync(fetch_status, url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"trickle-trio status: cannot read {url}/_status: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0
