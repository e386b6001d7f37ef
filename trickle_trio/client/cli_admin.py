"""``trickle-trio next | delete | status``: one request each, the answer on stdout.

``status`` shows a server's channels as a table (``GET /_status``, JSON; with a
publish token if the server has one). Registered by :mod:`.cli`.

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import json
from typing import IO, Any, Final

import trio

from ..core import wire
from ..core.errors import ChannelClosedError, ChannelNotFoundError, HTTPError
from ._util import answer_error
from .cli_common import CommandError, StdIO, add_command, seq_arg
from .cli_subscribe import output
from .transport import Transport

__all__ = ["COMMANDS", "add_parsers", "render"]

_COLUMNS: Final = (
    ("channel", "CHANNEL"),
    ("next_seq", "NEXT"),
    ("subscribers", "SUBS"),
    ("publishers", "PUBS"),
    ("bytes", "BYTES"),
    ("age_s", "AGE_S"),
    ("idle_s", "IDLE_S"),
    ("mime_type", "MIME"),
)


def add_parsers(sub: Any) -> dict[str, argparse.ArgumentParser]:
    next_seq = add_command(
        sub,
        "next",
        summary="print a channel's next write seq",
        description="Print the seq the channel's publisher writes next (GET /{channel}/next):"
        " where a subscriber starting at -1 begins. A closed channel prints its last value.",
    )
    next_seq.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    delete = add_command(
        sub,
        "delete",
        summary="delete a channel, or close one segment",
        description="Delete a channel (DELETE /{channel}): its subscribers reach the end of "
        "the stream and its publishers are let go. With --seq, close only that segment "
        "(DELETE /{channel}/{seq}), as a publisher dropping it does.",
    )
    delete.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    delete.add_argument("--seq", type=seq_arg, help="close only this segment (it must be in "
                        "the window of the last 5)")  # fmt: skip
    status = add_command(
        sub,
        "status",
        summary="list a server's channels",
        description="List a server's channels with their next seq, subscribers, publishers, "
        "bytes held, age and idle time (GET /_status). Needs the publish token when the "
        "server has one.",
    )
    status.add_argument(
        "url", help="the server's base URL, e.g. http://127.0.0.1:2939 (with its base path)"
    )
    status.add_argument("--json", action="store_true", help="print the server's JSON as is")
    return {"next": next_seq, "delete": delete, "status": status}


async def _output(out: IO[bytes], data: bytes) -> None:

    await output(out, data)


async def _next(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    url = args.url.rstrip("/")
    response = await transport.request("GET", f"{url}/next")
    error = answer_error(url, response.status, response.headers, response.body)
    if error is not None and not isinstance(error, ChannelClosedError):
        raise error
    latest = response.headers.get(wire.LATEST_HEADER) or response.body.decode().strip()
    await _output(io.stdout, f"{latest}\n".encode())
    return 0


async def _delete(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    url = args.url.rstrip("/")
    target = url if args.seq is None else f"{url}/{args.seq}"
    response = await transport.request("DELETE", target)
    body = response.body.decode("utf-8", "replace").strip()
    if response.status == 404 or (args.seq is None and body == wire.INVALID_STREAM):
        raise ChannelNotFoundError(url)
    if response.status == 400 and body == wire.NONEXISTENT_SEGMENT:
        raise CommandError(f"segment {args.seq} is not in the window of {url}")
    error = answer_error(url, response.status, response.headers, response.body)
    if error is not None:
        raise error
    return 0


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


async def _status(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    url = args.url.rstrip("/") + "/_status"
    response = await transport.request("GET", url, max_body=64 * 1024 * 1024)
    if response.status != 200:
        raise HTTPError(response.status, response.body)
    try:
        status = json.loads(response.body)
        text = json.dumps(status, indent=2) if args.json else render(status)
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{url} did not answer with a trickle status ({exc})") from None
    await trio.lowlevel.checkpoint()
    await _output(io.stdout, (text + "\n").encode())
    return 0


COMMANDS: Final = {"next": _next, "delete": _delete, "status": _status}
