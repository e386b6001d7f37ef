"""``trickle-trio publish | subscribe | next | delete``: the clients at a shell.

    ffmpeg -re -i in.mp4 -c copy -f mpegts - | trickle-trio publish http://127.0.0.1:2939/cam
    trickle-trio subscribe http://127.0.0.1:2939/cam | ffplay -

``publish`` cuts stdin into segments: every ``--interval`` seconds (default 1; at a
multiple of ``--align`` bytes, 188 for MPEG-TS), every ``--segment-bytes`` bytes, or one
per line (``--lines``, for JSON lines). A segment starts with its first byte and each
chunk is sent as soon as it is read. If the channel does not exist, ``publish`` creates
it and deletes it at the end (end of input, Ctrl-C, SIGTERM); a channel it found is
left open, and publishing goes on at its live edge (``Lp-Trickle-Reset``).

``subscribe`` writes the segments' bytes to stdout, in order, or one file per segment
(``--out-dir``), until the channel ends. ``watch`` plays the channel's live stream
(``client/watch.py``).

Exit codes: 0 done, 1 error (one line on stderr), 2 usage, 130 SIGINT, 143 SIGTERM.
Registered by ``trickle_trio/cli.py`` (:func:`add_client_commands`), which runs
:func:`run_client_command` under ``trio.run``.

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import logging
import math
import mimetypes
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

import trio

from ..core import wire
from ..core.errors import (
    ChannelClosedError,
    ChannelNotFoundError,
    HTTPError,
    SegmentNotFoundError,
    TrickleError,
)
from ._util import answer_error, single_error
from .http import Timeouts, make_ssl_context, split_url
from .publisher import Publisher, open_publisher
from .subscriber import OnGap, open_subscriber
from .transport import Transport
from .watch import add_watch_command, watch

__all__ = ["CLIENT_COMMANDS", "Cutter", "add_client_commands", "run_client_command"]

logger = logging.getLogger(__name__)

CLIENT_COMMANDS: Final = frozenset({"publish", "subscribe", "next", "delete", "watch"})
_READ_SIZE: Final = 65536
#: How often ``subscribe --wait`` asks whether the channel exists yet.
_WAIT_POLL: Final = 0.25
#: MPEG-TS packets are 188 bytes: cutting on a multiple keeps every segment decodable.
_TS_PACKET: Final = 188
_TS_TYPES: Final = frozenset({"video/mp2t", "video/mpegts"})


_Command = Callable[[argparse.Namespace, Transport, IO[bytes], IO[bytes], IO[str]], Awaitable[int]]


class CommandError(Exception):
    """A one-line failure of a client command (exit 1)."""


# -- the parser ------------------------------------------------------------------------------


def _seq(text: str) -> int:
    try:
        return wire.parse_seq(text)
    except wire.InvalidSeq:
        raise argparse.ArgumentTypeError(f"not a seq: {text!r}") from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return convert


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    parser.add_argument("--insecure", action="store_true", help="accept any TLS certificate")
    parser.add_argument("--cacert", metavar="FILE", help="extra CA certificates (PEM)")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token (or the TRICKLE_TOKEN environment variable)",
    )
    parser.add_argument(
        "--connect-timeout", type=_positive(float), default=10.0, help="seconds (default 10)"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="what to log on stderr (default warning)",
    )


def add_client_commands(sub: Any) -> None:
    """Add ``publish``, ``subscribe``, ``next``, ``delete`` and ``watch`` to ``trickle-trio``."""
    publish = sub.add_parser(
        "publish",
        help="publish stdin to a channel, cut into segments",
        description="Publish stdin to a channel, cut into segments.",
    )
    _add_common(publish)
    publish.add_argument(
        "--mime-type", default=None, help="the channel's MIME type (default video/mp2t)"
    )
    cut = publish.add_mutually_exclusive_group()
    cut.add_argument(
        "--interval",
        type=_positive(float),
        metavar="S",
        help="a new segment every S seconds of wall clock (the default: 1)",
    )
    cut.add_argument(
        "--segment-bytes", type=_positive(int), metavar="N", help="a new segment every N bytes"
    )
    cut.add_argument("--lines", action="store_true", help="one segment per line (JSON lines)")
    publish.add_argument(
        "--align",
        type=_positive(int),
        metavar="N",
        help="cut intervals at a multiple of N bytes (default 188 for MPEG-TS, else 1)",
    )
    publish.add_argument(
        "--start",
        type=_seq,
        help="first seq: N, or -1 for the live edge with a reset (default: 0 for a new "
        "channel, -1 for one that exists)",
    )
    publish.add_argument(
        "--create",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the channel if it does not exist (default on)",
    )
    publish.add_argument(
        "--delete",
        choices=["auto", "always", "never"],
        default="auto",
        help="delete the channel at the end: auto = only if this command created it",
    )
    subscribe = sub.add_parser(
        "subscribe",
        help="write a channel's segments to stdout (or files)",
        description="Write a channel's segments to stdout, or one file per segment.",
    )
    _add_common(subscribe)
    subscribe.add_argument(
        "--start", type=_seq, default=-1, help="-1 next (default), -2 current, or a seq"
    )
    subscribe.add_argument("--out-dir", metavar="DIR", help="one file per segment, named by seq")
    subscribe.add_argument(
        "--wait", action="store_true", help="wait for the channel to exist (else: exit 1)"
    )
    subscribe.add_argument(
        "--count", type=_positive(int), metavar="N", help="stop after N segments"
    )
    subscribe.add_argument(
        "--on-gap",
        choices=["jump", "fail"],
        default="jump",
        help="when the reader fell out of the window: jump to the live edge (default) or fail",
    )
    next_seq = sub.add_parser("next", help="print the channel's next write seq")
    _add_common(next_seq)
    delete = sub.add_parser("delete", help="delete a channel (or one segment)")
    _add_common(delete)
    delete.add_argument("--seq", type=_seq, help="close only this segment")
    add_watch_command(sub, _add_common)


# -- running ---------------------------------------------------------------------------------


def _transport(args: argparse.Namespace) -> Transport:
    token = os.environ.get("TRICKLE_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CommandError(
                f"cannot read token file {args.token_file}: {exc.strerror}"
            ) from None
    headers = [("Authorization", f"Bearer {token}")] if token else []
    context = None
    if args.cacert or args.insecure:
        context = make_ssl_context(insecure=args.insecure, cafile=args.cacert)
    return Transport(
        timeouts=Timeouts(connect=args.connect_timeout), ssl_context=context, headers=headers
    )


def _message(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        body = exc.body.decode("utf-8", "replace").strip()
        return f"HTTP {exc.status}" + (f": {body}" if body else "")
    if isinstance(exc, SegmentNotFoundError):
        return f"{exc} (use --on-gap jump to follow the live edge)"
    return str(exc) or type(exc).__name__


async def run_client_command(
    args: argparse.Namespace,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[str] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run a client command; return its exit code.

    Args:
        args: parsed by the ``trickle-trio`` parser.
        stdin, stdout, stderr: default to the process's.
        handle_signals: stop politely on SIGINT/SIGTERM (exit 130/143); main thread only.
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    logging.basicConfig(
        level=str(args.log_level).upper(), stream=stderr, format="%(levelname)s %(message)s"
    )
    commands: dict[str, _Command] = {
        "publish": _publish,
        "subscribe": _subscribe,
        "next": _next,
        "delete": _delete,
        "watch": watch,
    }
    command = commands[args.command]
    try:
        split_url(args.url.rstrip("/"))
    except ValueError as exc:
        print(f"trickle-trio: {exc}", file=stderr)
        return 2
    status = 0
    signalled: list[int] = []
    try:
        async with _transport(args) as transport, trio.open_nursery() as nursery:
            if handle_signals:
                signalled = await nursery.start(_watch_signals, nursery.cancel_scope)
            status = await command(args, transport, stdin, stdout, stderr)
            nursery.cancel_scope.cancel()
        if signalled:
            return 128 + signalled[0]
    except BaseExceptionGroup as group:
        error = single_error(group)
        if not isinstance(error, TrickleError | CommandError | OSError):
            raise
        print(f"trickle-trio: {_message(error)}", file=stderr)
        return 1
    except (TrickleError, CommandError, OSError) as exc:
        print(f"trickle-trio: {_message(exc)}", file=stderr)
        return 1
    return status


async def _watch_signals(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[list[int]]
) -> None:
    """Cancel ``scope`` on SIGINT or SIGTERM and note which (the list it started with)."""
    signalled: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started(signalled)
        async for signum in signals:
            signalled.append(signum)
            scope.cancel()
            return


# -- publish ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cutter:
    """Where ``publish`` cuts the input into segments.

    Exactly one of ``interval`` (seconds per segment, cut at a multiple of ``align``
    bytes), ``segment_bytes`` or ``lines`` applies.
    """

    interval: float | None = None
    segment_bytes: int | None = None
    lines: bool = False
    align: int = 1

    def take(self, data: bytes, size: int, *, time_up: bool) -> tuple[int, bool]:
        """How many bytes of ``data`` go to a segment that has ``size`` bytes, and
        whether it ends after them."""
        if self.segment_bytes is not None:
            count = min(len(data), self.segment_bytes - size)
            return count, size + count == self.segment_bytes
        if self.lines:
            end = data.find(b"\n")
            return (len(data), False) if end < 0 else (end + 1, True)
        if not time_up:
            return len(data), False
        count = min(len(data), -size % self.align)
        return count, (size + count) % self.align == 0


def _cutter(args: argparse.Namespace, mime_type: str) -> Cutter:
    if args.segment_bytes is not None:
        return Cutter(segment_bytes=args.segment_bytes)
    if args.lines:
        return Cutter(lines=True)
    align = args.align or (_TS_PACKET if mime_type.lower() in _TS_TYPES else 1)
    return Cutter(interval=args.interval or 1.0, align=align)


async def _read_input(stdin: IO[bytes], send_chan: trio.MemorySendChannel[bytes]) -> None:
    """Read stdin in a thread, chunk by chunk, as soon as bytes are there.

    A real file descriptor is read with ``os.read``: a thread abandoned in it (Ctrl-C
    while stdin is idle) holds no lock of the ``io`` module, which would abort the
    interpreter at exit.
    """
    read: Callable[[int], bytes]
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):  # io.BytesIO and friends
        read = getattr(stdin, "read1", stdin.read)
    else:
        read = partial(os.read, fd)
    async with send_chan:
        while data := await trio.to_thread.run_sync(read, _READ_SIZE, abandon_on_cancel=True):
            await send_chan.send(data)


async def _ensure_channel(transport: Transport, url: str, mime_type: str, create: bool) -> bool:
    """True if this command created the channel."""
    response = await transport.request("GET", f"{url}/next")
    if response.status != 404:
        error = answer_error(url, response.status, response.headers, response.body)
        if error is not None:
            raise error
        return False
    if not create:
        return False  # a server with autocreate makes it on the first POST
    response = await transport.request(
        "POST", url, [(wire.EXPECT_CONTENT_HEADER, mime_type), ("Content-Type", mime_type)]
    )
    error = answer_error(url, response.status, response.headers, response.body)
    if error is not None:
        raise error
    return True


async def _publish(
    args: argparse.Namespace,
    transport: Transport,
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[str],
) -> int:
    url = args.url.rstrip("/")
    mime_type = args.mime_type or ("application/jsonl" if args.lines else "video/mp2t")
    cutter = _cutter(args, mime_type)
    created = await _ensure_channel(transport, url, mime_type, args.create)
    start = args.start if args.start is not None else (0 if created else -1)
    delete = args.delete == "always" or (args.delete == "auto" and created)
    send_chan, recv_chan = trio.open_memory_channel[bytes](4)
    async with (
        open_publisher(
            url, mime_type, start=start, delete_on_close=delete, transport=transport
        ) as pub,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_read_input, stdin, send_chan)
        await _cut_into_segments(pub, recv_chan, cutter)
        nursery.cancel_scope.cancel()
    stats = pub.stats()
    logger.info(
        "published url=%s segments=%d bytes=%d",
        url,
        stats.segments_completed,
        stats.bytes_submitted_to_transport,
    )
    return 0


async def _cut_into_segments(
    pub: Publisher, recv_chan: trio.MemoryReceiveChannel[bytes], cutter: Cutter
) -> None:
    """Publish what ``recv_chan`` brings, cut by ``cutter``, until it ends."""
    pending = b""
    while True:
        if not pending:
            try:
                pending = await recv_chan.receive()  # meanwhile the preconnect stays idle
            except trio.EndOfChannel:
                return
        ended = False
        async with pub.segment() as seg:
            size = 0
            deadline = (
                math.inf if cutter.interval is None else trio.current_time() + cutter.interval
            )
            while True:
                time_up = trio.current_time() >= deadline
                count, done = cutter.take(pending, size, time_up=time_up)
                if count:
                    await seg.send(pending[:count])
                    size += count
                    pending = pending[count:]
                if done:
                    break
                if pending:
                    continue
                # Wait for more input, until the interval is up (after that, only for
                # the bytes that complete the last packet).
                with trio.move_on_at(math.inf if time_up else deadline):
                    try:
                        pending = await recv_chan.receive()
                    except trio.EndOfChannel:
                        ended = True
                        break
        if ended:
            return


# -- subscribe -------------------------------------------------------------------------------


def _extension(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _TS_TYPES:
        return ".ts"
    if base in ("application/jsonl", "application/x-ndjson", "application/json"):
        return ".json" if base == "application/json" else ".jsonl"
    return mimetypes.guess_extension(base) or ".bin"


def _write(out: IO[bytes], data: bytes) -> None:
    """Write all of ``data``: with ``os.write`` to a real file descriptor (no ``io``
    lock held if the thread is abandoned at Ctrl-C), else through ``out``."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        out.write(data)
        out.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _output(out: IO[bytes], data: bytes) -> None:
    await trio.to_thread.run_sync(_write, out, data, abandon_on_cancel=True)


async def _subscribe(
    args: argparse.Namespace,
    transport: Transport,
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[str],
) -> int:
    url = args.url.rstrip("/")
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    on_gap: OnGap = "jump" if args.on_gap == "jump" else "raise"
    if args.wait:
        # ruff: ignore[async-busy-wait] - the state is another process's
        while (await transport.request("GET", f"{url}/next")).status == 404:
            await trio.sleep(_WAIT_POLL)
    count = 0
    async with open_subscriber(url, args.start, on_gap=on_gap, transport=transport) as sub:
        gaps = 0
        async for segment in sub:
            if sub.stats().seq_gap_events > gaps:
                gaps = sub.stats().seq_gap_events
                print(f"trickle-trio: gap: continuing at seq {segment.seq}", file=stderr)
            try:
                if out_dir is None:
                    async for chunk in segment:
                        await _output(stdout, chunk)
                else:
                    await _save(segment, out_dir)
            except BrokenPipeError:
                return 0  # the reader went away (`| head`, a closed player)
            count += 1
            if args.count is not None and count >= args.count:
                break
    return 0


async def _save(segment: Any, out_dir: Path) -> None:
    """``{seq}.{ext}`` in ``out_dir``, written as ``.part`` and renamed when complete."""
    name = f"{segment.seq:010d}{_extension(segment.content_type)}"
    part = out_dir / (name + ".part")
    file = await trio.open_file(part, "wb")
    try:
        async for chunk in segment:
            await file.write(chunk)
    finally:
        await file.aclose()
    await trio.Path(part).rename(out_dir / name)


# -- next, delete ------------------------------------------------------------------------------


async def _next(
    args: argparse.Namespace,
    transport: Transport,
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[str],
) -> int:
    url = args.url.rstrip("/")
    response = await transport.request("GET", f"{url}/next")
    error = answer_error(url, response.status, response.headers, response.body)
    if error is not None and not isinstance(error, ChannelClosedError):
        raise error
    latest = response.headers.get(wire.LATEST_HEADER) or response.body.decode().strip()
    await _output(stdout, f"{latest}\n".encode())
    return 0


async def _delete(
    args: argparse.Namespace,
    transport: Transport,
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[str],
) -> int:
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
