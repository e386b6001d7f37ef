"""``trickle-trio``: the command line. The only place that calls ``trio.run`` and
configures logging (besides the ``asgi`` entry point for plain hypercorn).

    trickle-trio serve [--config FILE] [--host H] [--port P] [--base-path /p/]
                       [--autocreate/--no-autocreate] [--changefeed] [--idle-timeout S]
                       [--certfile F --keyfile F] [--access-log -] [--log-format json]
    trickle-trio status URL
    trickle-trio cluster [--workers N] [--port P] ...   (see trickle_trio/cluster.py)

``serve`` merges defaults < TOML file < ``TRICKLE_*`` environment < flags, prints the
result (secrets masked) at start-up, and fails fast with one line on a bad value. A
standalone server has autocreate on and binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from . import cluster
from .client.cli import CLIENT_COMMANDS, add_client_commands, run_client_command
from .config import Settings, SettingsError, load_settings
from .logs import configure_logging
from .server import run_server

logger = logging.getLogger("trickle_trio")


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a trickle server")
    serve.add_argument("-c", "--config", help="TOML settings file (also TRICKLE_CONFIG)")
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
        help="publish channel additions/removals to the _changes channel",
    )
    serve.add_argument(
        "--watch-page",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the watch page at /_/watch/ (default on)",
    )
    serve.add_argument("--idle-timeout", type=float, help="seconds before idle channels go")
    serve.add_argument("--sweep-interval", type=float, help="seconds between idle sweeps")
    serve.add_argument("--certfile", help="TLS certificate (PEM)")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--access-log", help="access log target ('-' = stderr; off by default)")
    serve.add_argument("--log-level", help="debug, info, warning, error (default info)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    limits = serve.add_argument_group("limits (each answered with a 4xx and a log line)")
    for name, convert, help_text in _LIMIT_FLAGS:
        limits.add_argument(f"--{name.replace('_', '-')}", type=convert, help=help_text)
    auth = serve.add_argument_group("access control (bearer tokens; default: open)")
    for role in ("publish", "subscribe"):
        auth.add_argument(
            f"--{role}-token-file",
            help=f"file holding the {role} token (or TRICKLE_{role.upper()}_TOKEN)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trickle-trio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    status = sub.add_parser("status", help="list a server's channels")
    status.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:2939")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    cluster.add_parser(sub)
    add_client_commands(sub)
    return parser


_LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_segment_bytes", int, "bytes per segment (413 beyond; default 64 MiB)"),
    ("max_channels", int, "channels at once (429 beyond; default 10000)"),
    ("max_subscribers_per_channel", int, "subscribers per channel (429; default 1000)"),
    ("max_publishers_per_channel", int, "POSTs attached per channel (429; default 64)"),
    ("max_requests", int, "requests in flight (429 beyond; default 20000)"),
    ("max_name_length", int, "longest channel name (400 beyond; default 256)"),
    ("max_url_length", int, "longest request path (414 beyond; default 2048)"),
    ("max_header_bytes", int, "request line + headers (400 beyond; default 16384)"),
    ("preconnect_timeout", float, "release idle preconnects after S seconds (0 = never)"),
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
)


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    """Defaults < file < environment < flags; a standalone server autocreates by default."""
    flags = {name: getattr(args, name) for name in _FLAGS}
    flags.update({name: getattr(args, name) for name, _, _ in _LIMIT_FLAGS})
    for kind in ("publish", "subscribe"):
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
    settings, sources = settings_from_args(args)
    configure_logging(settings)
    scheme = "https" if settings.certfile else "http"
    logger.info(
        "trickle-trio serving %s://%s:%d%s autocreate=%s changefeed=%s",
        scheme,
        settings.host,
        settings.port,
        settings.base_path,
        "on" if settings.autocreate else "off",
        "on" if settings.changefeed else "off",
    )
    for line in settings.describe(sources):
        logger.info("setting %s", line)
    if settings.watch_page:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        logger.info("watch page %s://%s:%d/_/watch/", scheme, host, settings.port)
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        logger.info("bound to loopback only; use --host 0.0.0.0 to serve other machines")
    trio.run(partial(run_server, settings))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .status import show_status

    return trio.run(show_status, args.url, args.json)


def _cluster(args: argparse.Namespace) -> int:
    configure_logging(Settings(log_level=args.log_level))
    try:
        options = cluster.options_from_args(args)
        if args.print_config:
            sys.stdout.write(cluster.config_for_backends(options))
            return 0
        return trio.run(cluster.run_cluster, options)
    except cluster.ClusterError as exc:
        print(f"trickle-trio cluster: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "status":
            return _status(args)
        if args.command == "cluster":
            return _cluster(args)
        if args.command in CLIENT_COMMANDS:
            return trio.run(run_client_command, args)
    except SettingsError as exc:
        print(f"trickle-trio: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
