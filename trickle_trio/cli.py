"""``trickle-trio``: the command line. The only place that calls ``trio.run`` and
configures logging.

    trickle-trio serve [--host H] [--port P] [--base-path /p/] [--autocreate/--no-autocreate]
                       [--changefeed] [--idle-timeout S] [--certfile F --keyfile F]

``serve`` reads ``TRICKLE_*`` environment variables first; flags override them. A
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

from .config import Settings, SettingsError
from .server import run_server

logger = logging.getLogger("trickle_trio")


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a trickle server")
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
    serve.add_argument("--idle-timeout", type=float, help="seconds before idle channels go")
    serve.add_argument("--sweep-interval", type=float, help="seconds between idle sweeps")
    serve.add_argument("--certfile", help="TLS certificate (PEM)")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")
    serve.add_argument("--access-log", help="hypercorn access log target ('-' = stderr)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning, error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trickle-trio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then flags; a standalone server autocreates by default."""
    overrides: dict[str, Any] = {}
    for name in (
        "host",
        "port",
        "base_path",
        "autocreate",
        "changefeed",
        "idle_timeout",
        "sweep_interval",
        "certfile",
        "keyfile",
        "access_log",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    settings = Settings.from_env(**overrides)
    if args.autocreate is None and "TRICKLE_AUTOCREATE" not in __import__("os").environ:
        settings = settings.replace(autocreate=True)
    return settings


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    scheme = "https" if settings.certfile else "http"
    logger.info(
        "trickle-trio serving %s://%s:%d%s autocreate=%s changefeed=%s idle_timeout=%s",
        scheme,
        settings.host,
        settings.port,
        settings.base_path,
        "on" if settings.autocreate else "off",
        "on" if settings.changefeed else "off",
        settings.idle_timeout,
    )
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        logger.info("bound to loopback only; use --host 0.0.0.0 to serve other machines")
    trio.run(partial(run_server, settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return _serve(args)
    except SettingsError as exc:
        print(f"trickle-trio: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
