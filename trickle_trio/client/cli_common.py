"""What every client command shares: connection options, exit codes, errors, running one.

Every command takes the same connection options (:func:`add_connection_options`): a
bearer token from ``--token-file`` or ``TRICKLE_TOKEN``, ``--insecure``, ``--cacert``,
``--connect-timeout``, ``--log-level``. Every failure is one line on stderr that says
why (the status and body of a refusal, the TLS or socket error, with a hint when there
is an obvious fix), and the exit code says what kind of end it was (:data:`EXIT_CODES`).

The commands live in :mod:`.cli_publish`, :mod:`.cli_subscribe`, :mod:`.cli_admin` and
:mod:`.cli_watch`, which import this module; :mod:`.cli` registers them. This module runs
one (:func:`run_client_command`, under ``trio.run``).

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import trio

from ..core import wire
from ..core.errors import HTTPError, SegmentNotFoundError, TrickleError
from ._util import open_client_nursery
from .http import Timeouts, TransportError, make_ssl_context, split_url
from .transport import Transport

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_SERVER_GONE",
    "EXIT_USAGE",
    "CommandError",
    "HelpFormatter",
    "ServerGone",
    "run_client_command",
]

logger = logging.getLogger(__name__)

#: Done: the input ended (publish), the channel ended (subscribe), the answer was printed.
EXIT_OK: Final = 0
#: An error: a refusal (401, 404, 4xx), a bad token file, a segment out of the window.
EXIT_ERROR: Final = 1
#: The command line was wrong.
EXIT_USAGE: Final = 2
#: The server went away: unreachable, the connection lost, the server shutting down
#: (draining), or a 5xx from a proxy whose backend is gone; after ``--reconnect``
#: gave up, where the command has it.
EXIT_SERVER_GONE: Final = 3
EXIT_CODES: Final = {
    EXIT_OK: "done (end of input, end of the channel, or the answer printed)",
    EXIT_ERROR: "error (one line on stderr says why)",
    EXIT_USAGE: "bad command line",
    EXIT_SERVER_GONE: "the server went away (unreachable, connection lost, shutting down)",
    130: "interrupted (SIGINT, Ctrl-C)",
    143: "terminated (SIGTERM)",
}
EXIT_CODES_HELP: Final = "exit codes:\n" + "\n".join(
    f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()
)


@dataclass(frozen=True)
class StdIO:
    """A command's standard streams (the process's, or a test's)."""

    stdin: IO[bytes]
    stdout: IO[bytes]
    stderr: IO[str]


_Command = Callable[[argparse.Namespace, Transport, StdIO], Awaitable[int]]


class CommandError(Exception):
    """A one-line failure of a client command (exit 1)."""


class ServerGone(Exception):
    """The server went away (exit 3); the message says how."""


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions keep their paragraphs (filled to the width; a paragraph with an
    indented line, such as examples, is kept as written); every option with a default
    says which."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines) or paragraph.rstrip().endswith(":"):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)
        ):
            shown = "on" if default is True else "%(default)s"
            text += f" (default: {shown})"
        return text


# -- the parser ------------------------------------------------------------------------------


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


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


positive_float = _positive(float)
positive_int = _positive(int)
non_negative_float = _non_negative


def seq_arg(text: str) -> int:
    """A seq option's value: a seq, ``-1`` next, ``-2`` current, or ``-N``."""
    try:
        return wire.parse_seq(text)
    except wire.InvalidSeq:
        raise argparse.ArgumentTypeError(f"not a seq: {text!r}") from None


def add_command(sub: Any, name: str, *, summary: str, description: str) -> Any:
    """A client command's parser: ``summary`` in the command list, ``description`` in
    its own ``--help``."""
    return sub.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options every client command takes, in their own help group."""
    group = parser.add_argument_group("connection options (every client command)")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help="send the bearer token in FILE (default: the TRICKLE_TOKEN environment "
        "variable, if set)",
    )
    group.add_argument(
        "--cacert",
        metavar="FILE",
        help="also trust the CA certificates in FILE (PEM), e.g. your own CA",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="accept any TLS certificate (self-signed servers; no protection)",
    )
    group.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to connect (TCP and TLS)",
    )
    group.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="what the client logs on stderr",
    )


# -- running ---------------------------------------------------------------------------------


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``, else ``TRICKLE_TOKEN``, else None."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CommandError(
                f"cannot read token file {args.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise CommandError(f"token file {args.token_file} is empty")
        return token
    return os.environ.get("TRICKLE_TOKEN") or None


def make_transport(args: argparse.Namespace) -> Transport:
    """A transport with the connection options of ``args``."""
    token = read_token(args)
    headers = [("Authorization", f"Bearer {token}")] if token else []
    context = None
    if args.cacert or args.insecure:
        try:
            context = make_ssl_context(insecure=args.insecure, cafile=args.cacert)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise CommandError(f"cannot use --cacert {args.cacert}: {exc}") from None
    return Transport(
        timeouts=Timeouts(connect=args.connect_timeout), ssl_context=context, headers=headers
    )


def describe_error(exc: BaseException, url: str) -> str:
    """One line that says why, with a hint when there is an obvious fix."""
    if isinstance(exc, HTTPError):
        body = exc.body.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        text = f"{url}: HTTP {exc.status}" + (f": {body}" if body else "")
        if exc.status == 401:
            text += " (give a token with --token-file FILE or TRICKLE_TOKEN)"
        elif exc.status == 403:
            text += " (the token is not allowed to do this)"
        return text
    if isinstance(exc, SegmentNotFoundError):
        return f"{exc} (use --on-gap jump to follow the live edge)"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TransportError) and "CERTIFICATE_VERIFY_FAILED" in text:
        text += " (trust its CA with --cacert FILE, or accept any certificate with --insecure)"
    return text


def server_gone(exc: BaseException) -> bool:
    """The failure means the server went away rather than refused."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return False  # a certificate (or TLS set-up) problem: it is there, and refused
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, ServerGone | TransportError):
        return True
    return isinstance(exc, HTTPError) and exc.status in (502, 503, 504)


async def server_draining(transport: Transport, url: str) -> str | None:
    """Why the server behind ``url`` is going away, or None if it is up and ready.

    Asks ``GET /readyz`` once: unreachable, or 503 (trickle-trio while it drains), means
    going away; any other answer (200, or a server without the route) means it is up.

    Cancellation: the probe is abandoned (its connection closed).
    """
    origin = split_url(url)[0]
    probe = f"{origin.scheme}://{origin.host_header}/readyz"
    try:
        with trio.fail_after(5):
            # Connection: close, so that no idle connection holds up its shutdown.
            response = await transport.request("GET", probe, [("Connection", "close")])
    except (TransportError, trio.TooSlowError) as exc:
        return f"server unreachable ({exc or 'no answer'})"
    if response.status == 503:
        return "server shutting down"
    return None


async def run_client_command(
    args: argparse.Namespace,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[str] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run a client command; return its exit code (:data:`EXIT_CODES`).

    Args:
        args: parsed by the ``trickle-trio`` parser.
        stdin, stdout, stderr: default to the process's.
        handle_signals: stop politely on SIGINT/SIGTERM (exit 130/143); main thread only.

    Cancellation: the command's clients close as their ``open_*`` blocks do (a segment
    being published is ended whole or cut visibly, never cut silently); the transport is
    closed, and Cancelled propagates.
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    logging.basicConfig(
        level=str(args.log_level).upper(), stream=stderr, format="%(levelname)s %(message)s"
    )
    command: _Command = args.client_command
    url = args.url.rstrip("/")
    try:
        split_url(url)
    except ValueError as exc:
        print(f"trickle-trio: {exc}", file=stderr)
        return EXIT_USAGE
    status = EXIT_OK
    signalled: list[int] = []
    error: BaseException | None = None
    try:
        async with make_transport(args) as transport, open_client_nursery() as nursery:
            if handle_signals:
                signalled = await nursery.start(_watch_signals, nursery.cancel_scope)
            status = await command(args, transport, StdIO(stdin, stdout, stderr))
            nursery.cancel_scope.cancel()
        if signalled:
            return 128 + signalled[0]
    except (TrickleError, CommandError, ServerGone, OSError) as exc:
        error = exc
    if error is None:
        return status
    print(f"trickle-trio: {describe_error(error, url)}", file=stderr)
    return EXIT_SERVER_GONE if server_gone(error) else EXIT_ERROR


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
