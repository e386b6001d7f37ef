"""``trickle-trio watch URL``: look at a channel, in a player or from a shell.

    trickle-trio watch http://127.0.0.1:2939/cam          # opens ffplay on /cam/live
    trickle-trio watch --player none http://127.0.0.1:2939/events

The channel's live route (``GET {url}/live``, one endless response of its segments) is
opened first: that checks the channel (404: not found) and tells its Content-Type.
Video and audio open in the player (``--player``: ffplay when on PATH, or mpv or VLC),
which gets the live URL and ends when the channel does. Anything else, or no player,
prints the live URL, the commands that play or read it and the watch page's address.

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any, Final
from urllib.parse import quote, urlsplit

import trio

from ._util import answer_error
from .cli_common import EXIT_OK, StdIO, add_command
from .transport import Transport

__all__ = ["COMMANDS", "add_parsers", "live_url", "page_url", "player_argv"]

_PLAYERS: Final = ("ffplay", "mpv", "vlc")
_MEDIA_PREFIXES: Final = ("video/", "audio/")


def add_parsers(sub: Any) -> dict[str, argparse.ArgumentParser]:
    parser = add_command(
        sub,
        "watch",
        summary="play a channel's live stream (ffplay), or print how to",
        description="Open a channel's live stream (GET /{channel}/live: every segment, back "
        "to back, in one endless response) in a player: ffplay when it is installed, for "
        "video and audio channels; it ends when the channel does. Otherwise, or with "
        "--player none, print the live URL, the commands that play or read it and the "
        "watch page's address.",
    )
    parser.add_argument("url", help="the channel URL, e.g. http://127.0.0.1:2939/cam")
    parser.add_argument(
        "--player",
        choices=["auto", *_PLAYERS, "none"],
        default="auto",
        help="auto: ffplay if installed; none: only print the live URL",
    )
    parser.add_argument(
        "--start",
        default="next",
        help="where the stream begins: next (the next segment boundary), current (byte 0 "
        "of the segment being written), or a seq",
    )
    parser.add_argument(
        "--on-gap",
        choices=["jump", "end"],
        default="jump",
        help="when the player falls out of the window: jump to the live edge, or end",
    )
    return {"watch": parser}


def live_url(args: argparse.Namespace) -> str:
    url = str(args.url).rstrip("/") + "/live"
    query = []
    if args.start != "next":
        query.append(f"start={quote(str(args.start))}")
    if args.on_gap != "jump":
        query.append(f"on_gap={args.on_gap}")
    return url + ("?" + "&".join(query) if query else "")


def page_url(channel_url: str) -> str:
    """The watch page of the server at ``channel_url``, opened on that channel."""
    parts = urlsplit(channel_url.rstrip("/"))
    name = parts.path.rsplit("/", 1)[-1]
    return f"{parts.scheme}://{parts.netloc}/_/watch/#{name}"


def player_argv(player: str, url: str, title: str, token: str | None) -> list[str]:
    """The command line that plays ``url`` live in ``player``."""
    if player == "ffplay":
        argv = ["ffplay", "-hide_banner", "-loglevel", "warning", "-autoexit"]
        argv += ["-fflags", "nobuffer", "-flags", "low_delay", "-framedrop"]
        argv += ["-window_title", title]
        if token:
            argv += ["-headers", f"Authorization: Bearer {token}\r\n"]
        return [*argv, url]
    if player == "mpv":
        argv = ["mpv", "--profile=low-latency", f"--title={title}"]
        if token:
            argv.append(f"--http-header-fields=Authorization: Bearer {token}")
        return [*argv, url]
    return ["vlc", "--network-caching=300", "--meta-title", title, url]


async def watch(args: argparse.Namespace, transport: Transport, io: StdIO) -> int:
    """Run ``watch``: the player's exit code, or 0 after printing.

    Cancellation (Ctrl-C): the player is stopped (``trio.run_process`` kills it) and the
    probe's connection closed.
    """
    url = live_url(args)
    exchange = await transport.open("GET", url)
    try:
        head = await exchange.read_head()
    finally:
        await exchange.aclose()  # the player opens its own
    error = answer_error(str(args.url).rstrip("/"), head.status, head.headers, b"")
    if error is not None:
        raise error
    content_type = head.headers.get("content-type", "")
    token = _token(transport)
    player = _choose(args.player, content_type)
    if player is None:
        io.stdout.write(_instructions(url, str(args.url), content_type, token).encode())
        io.stdout.flush()
        return EXIT_OK
    name = urlsplit(str(args.url).rstrip("/")).path.rsplit("/", 1)[-1]
    if player == "vlc" and token:
        print("trickle-trio: VLC cannot send the token; use ffplay or mpv", file=io.stderr)
        return 1
    argv = player_argv(player, url, f"{name} · trickle-trio", token)
    # The player owns the terminal until it ends (the channel ends, or the user quits);
    # Ctrl-C cancels this task, which stops the player too.
    result = await trio.run_process(argv, check=False, stdin=None)
    return int(result.returncode) if result.returncode >= 0 else 128 - result.returncode


def _choose(requested: str, content_type: str) -> str | None:
    if requested == "none":
        return None
    if requested != "auto":
        return requested
    if not content_type.lower().startswith(_MEDIA_PREFIXES):
        return None  # not something a video player shows
    return "ffplay" if shutil.which("ffplay") else None


def _token(transport: Transport) -> str | None:
    for name, value in transport.headers:
        if name.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def _instructions(url: str, channel_url: str, content_type: str, token: str | None) -> str:
    media = content_type.lower().startswith(_MEDIA_PREFIXES)
    auth = ' -H "Authorization: Bearer $TRICKLE_TOKEN"' if token else ""
    lines = [f"live stream: {url}  ({content_type or 'no content type'})"]
    if media:
        headers = " -headers \"Authorization: Bearer $TRICKLE_TOKEN\"$'\\r\\n'" if token else ""
        lines += [
            "play it with one of:",
            f"  ffplay -fflags nobuffer{headers} '{url}'",
            f"  mpv --profile=low-latency '{url}'",
            f"  vlc '{url}'",
            f"  curl -sN{auth} '{url}' | ffmpeg -i - ...",
        ]
        if shutil.which("ffplay") is None:
            lines.append("(ffplay is part of ffmpeg: apt-get install ffmpeg)")
    else:
        lines += ["read it with:", f"  curl -sN{auth} '{url}'"]
        lines.append(f"  trickle-trio subscribe {channel_url.rstrip('/')}  (one segment at a time)")
    lines.append(f"watch page: {page_url(channel_url)}")
    return "\n".join(lines) + "\n"


COMMANDS: Final = {"watch": watch}
