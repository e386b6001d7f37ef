"""``trickle-trio``: the command line. The only place that calls ``trio.run`` and
configures logging (besides the ``asgi`` entry point for plain hypercorn).

``serve`` merges defaults < TOML file < ``TRICKLE_*`` environment < flags, logs one
start-up line (the address, the settings that matter at a glance, and every setting not
at its default with its source; ``--print-settings`` lists them all), and fails fast with
one line on a bad value. A standalone server has autocreate on and binds 127.0.0.1
unless told otherwise. The client commands are :mod:`trickle_trio.client.cli`'s;
``cluster`` is :mod:`trickle_trio.ops`'s. The server is loaded only by ``serve`` and
``cluster``: without the ``server`` extra they fail in one line saying what to install
(exit 2), and the client commands work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from .client.cli import CLIENT_COMMANDS, HelpFormatter, add_client_commands, run_client_command
from .config import Settings, SettingsError, load_settings
from .extras import ServerNotInstalledError, require_server
from .logs import configure_logging
from .ops import cluster, cluster_cli
from .ops.haproxy import ClusterError

if TYPE_CHECKING:
    from hypercorn.config import Sockets

    from .faults import FaultPlan
    from .server import RunningServer

logger = logging.getLogger("trickle_trio")


DESCRIPTION = """\
trickle-trio speaks Livepeer's trickle protocol: segmented, real-time publish/subscribe
over plain HTTP (live video, audio, JSON events). Run a server (serve, or cluster for
several behind HAProxy), publish and subscribe from a shell (publish, subscribe, next,
delete), and look into a running server (status).
"""

EPILOG = """\
examples:
  trickle-trio serve                                   # http://127.0.0.1:2939/, autocreate on
  ffmpeg -re -i in.mp4 -c copy -f mpegts - | trickle-trio publish http://127.0.0.1:2939/cam
  trickle-trio subscribe http://127.0.0.1:2939/cam | ffplay -
  trickle-trio status http://127.0.0.1:2939

'trickle-trio COMMAND --help' tells more about each command.
"""

SERVE_DESCRIPTION = """\
Run a trickle server in this process. Settings come from, lowest precedence first: the
built-in defaults, a TOML file (--config or TRICKLE_CONFIG), TRICKLE_<NAME> environment
variables, these flags. The start-up log line shows the address and every setting that
is not at its default, with its source; --print-settings lists them all and exits.
SIGTERM or SIGINT drains first: every channel is deleted (subscribers end cleanly, idle
preconnects are released), then the server stops.
"""


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run a trickle server",
        description=SERVE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    serve.add_argument(
        "-c", "--config", metavar="FILE", help="TOML settings file (default: TRICKLE_CONFIG)"
    )
    serve.add_argument(
        "--print-settings",
        action="store_true",
        help="print every setting with its value and source, then exit",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 2939; 0 = any)")
    serve.add_argument("--base-path", help="path prefix of every route (default /)")
    serve.add_argument(
        "--autocreate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="create channels on first publish (default on for a standalone server)",
    )
    serve.add_argument(
        "--changefeed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="publish channel additions/removals to the _changes channel (default off)",
    )
    serve.add_argument(
        "--watch-page",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the watch page, a browser view of the channels, at /_/watch/ (default on)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="delete channels without a write for S seconds (default 300)",
    )
    serve.add_argument(
        "--sweep-interval", type=float, metavar="S", help="seconds between idle sweeps (default 60)"
    )
    serve.add_argument("--certfile", metavar="FILE", help="TLS certificate (PEM; default: no TLS)")
    serve.add_argument("--keyfile", metavar="FILE", help="TLS private key (PEM; default: no TLS)")
    serve.add_argument(
        "--access-log", metavar="TARGET", help="access log file, '-' = stderr (default off)"
    )
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the server's log level (default info; per-segment lines are debug)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text: 'event key=value' lines; json: one object per line (default text)",
    )
    limits = serve.add_argument_group("limits (each answered with a 4xx and a log line)")
    for name, convert, help_text in _LIMIT_FLAGS:
        limits.add_argument(f"--{name.replace('_', '-')}", type=convert, help=help_text)
    serve.add_argument(
        "--url-file",
        metavar="FILE",
        help="once answering, write the server's URL to FILE (with --port 0: the port picked)",
    )
    faults = serve.add_argument_group("fault injection (test servers: see trickle_trio.faults)")
    faults.add_argument(
        "--faults", metavar="PLAN", help="TOML fault plan ([[rule]] tables) to apply"
    )
    faults.add_argument(
        "--faults-control",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the fault control route /_/faults (default off; loopback only "
        "without --faults-token-file)",
    )
    faults.add_argument(
        "--faults-token-file",
        metavar="FILE",
        help="file holding the fault control route's bearer token (default: "
        "TRICKLE_FAULTS_TOKEN, else loopback only)",
    )
    auth = serve.add_argument_group("access control (bearer tokens; default: open)")
    for role in ("publish", "subscribe"):
        auth.add_argument(
            f"--{role}-token-file",
            metavar="FILE",
            help=f"file holding the {role} token (default: TRICKLE_{role.upper()}_TOKEN, "
            "else open)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trickle-trio",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trickle-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    cluster_cli.add_parser(sub)
    add_client_commands(sub)
    return parser


_LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_segment_bytes", int, "bytes per segment (413 beyond; default 64 MiB)"),
    ("max_channels", int, "channels at once (429 beyond; default 10000)"),
    ("max_subscribers_per_channel", int, "subscribers per channel (429; default 1000)"),
    ("max_publishers_per_channel", int, "POSTs attached per channel (429; default 64)"),
    ("max_requests", int, "requests in flight (429 beyond; default 20000)"),
    ("max_requests_per_client", int, "requests in flight per client address (429; 0 = off)"),
    ("max_name_length", int, "longest channel name (400 beyond; default 256)"),
    ("max_url_length", int, "longest request path (414 beyond; default 2048)"),
    ("max_header_bytes", int, "request line + headers (431 beyond; default 16384)"),
    ("preconnect_timeout", float, "release idle preconnects after S seconds (default 0 = never)"),
    ("max_pinned_bytes", int, "bytes slow readers may pin past the window (cut; 0 = off)"),
    ("max_connections", int, "connections open at once (503 + close; 0 = off)"),
    ("max_connections_per_client", int, "connections per client address (429; 0 = off)"),
)

_FLAGS = (
    "host",
    "port",
    "base_path",
    "autocreate",
    "changefeed",
    "watch_page",
    "idle_timeout",
    "sweep_interval",
    "certfile",
    "keyfile",
    "access_log",
    "log_level",
    "log_format",
    "faults",
    "faults_control",
)


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    """Defaults < file < environment < flags; a standalone server autocreates by default."""
    flags = {name: getattr(args, name) for name in _FLAGS}
    flags.update({name: getattr(args, name) for name, _, _ in _LIMIT_FLAGS})
    for kind in ("publish", "subscribe", "faults"):
        path = getattr(args, f"{kind}_token_file")
        if path is not None:
            flags[f"{kind}_token"] = _read_token(path)
    settings, sources = load_settings(flags=flags, config_file=args.config)
    if "autocreate" not in sources:
        settings = settings.replace(autocreate=True)
        sources["autocreate"] = "serve default"
    return settings, sources


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read token file {path}: {exc.strerror}") from None


def _serve(args: argparse.Namespace) -> int:
    require_server("trickle-trio serve")
    from .faults import FaultPlanError
    from .server import BindError, bind_sockets, plan_of

    settings, sources = settings_from_args(args)
    if args.print_settings:
        print("\n".join(settings.describe(sources)))
        return 0
    configure_logging(settings)
    try:
        faults = plan_of(settings)
    except FaultPlanError as exc:
        print(f"trickle-trio: {exc}", file=sys.stderr)
        return 2
    try:
        sockets = bind_sockets(settings)  # before saying "serving"
    except BindError as exc:
        print(f"trickle-trio: {exc}", file=sys.stderr)
        return 2
    loopback = settings.host in ("127.0.0.1", "localhost", "::1")
    page = ""
    if settings.watch_page:
        scheme = "https" if settings.certfile else "http"
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        page = f" watch_page={scheme}://{host}:{settings.port}/_/watch/"
    logger.info(
        "trickle-trio %s serving %s%s%s",
        __version__,
        settings.summary(sources),
        page,
        " (loopback only: --host 0.0.0.0 serves other machines)" if loopback else "",
    )
    trio.run(partial(_run_serve, settings, sockets, faults, args.url_file))
    return 0


async def _run_serve(
    settings: Settings, sockets: Sockets, faults: FaultPlan | None, url_file: str | None
) -> None:
    from .server import run_server

    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            partial(run_server, settings, sockets=sockets, faults=faults)
        )
        if url_file is not None:
            _write_url_file(url_file, server.url)


def _write_url_file(path: str, url: str) -> None:
    """Write ``url`` to ``path`` whole or not at all (a reader polling for the file
    never sees half of it)."""
    partial_path = f"{path}.{os.getpid()}.tmp"
    with open(partial_path, "w", encoding="utf-8") as file:
        file.write(url + "\n")
    os.replace(partial_path, path)


def _cluster(args: argparse.Namespace) -> int:
    configure_logging(Settings(log_level=args.log_level))
    try:
        options = cluster_cli.options_from_args(args)
        if args.print_config:
            sys.stdout.write(cluster_cli.config_for_backends(options))
            return 0
        require_server("trickle-trio cluster")  # its backends are `trickle-trio serve`
        return trio.run(cluster.run_cluster, options)
    except ClusterError as exc:
        print(f"trickle-trio cluster: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "cluster":
            return _cluster(args)
        if args.command in CLIENT_COMMANDS:
            return trio.run(run_client_command, args)
    except (SettingsError, ServerNotInstalledError) as exc:
        print(f"trickle-trio: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
