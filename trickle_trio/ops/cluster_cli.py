"""``trickle-trio cluster``'s command line: its flags, help and what they become."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..client.cli import HelpFormatter
from .cluster import ClusterOptions
from .haproxy import TEMPLATE, ClusterError, Shard, render_config


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


CLUSTER_DESCRIPTION = """\
Run several trickle-trio serve processes behind HAProxy on one machine: HAProxy hashes
each request's channel name onto one backend, so every request of a channel reaches the
process that owns it. One backend per core; HAProxy needs some CPU too. SIGTERM or
Ctrl-C stops HAProxy accepting, drains every backend, then stops. A backend that exits
is restarted, with backoff; meanwhile the proxy's /readyz answers 503 and names it.

With --print-config it only prints the HAProxy config for remote backends (--backend),
to run HAProxy on a proxy machine of its own. Needs HAProxy (apt-get install haproxy).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``cluster`` on the ``trickle-trio`` subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "cluster",
        help="run N servers behind HAProxy, channels sharded by name",
        description=CLUSTER_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--workers", type=_positive_int, default=2, help="backend processes (default 2)")
    add("--host", default="127.0.0.1", help="address the proxy binds (default 127.0.0.1)")
    add("--port", type=int, default=2939, help="port the proxy binds (default 2939; 0 = any)")
    add("--base-path", default="/", help="path prefix of every route (default /)")
    add(
        "--autocreate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create channels on first publish",
    )
    add(
        "--changefeed",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a _changes channel per shard (default off)",
    )
    add(
        "--idle-timeout",
        type=float,
        help="seconds before idle channels go, on every backend (default 300)",
    )
    add(
        "--config",
        help="TOML settings file for every backend, as serve --config (default: none)",
    )
    add(
        "--stream-timeout",
        type=float,
        default=3600.0,
        help="HAProxy's idle timeout for streams, above idle-timeout + sweep (default 3600)",
    )
    add("--run-dir", help="keep config, logs and cluster.json here (default: a temp dir)")
    add("--haproxy", help="the HAProxy binary (default: haproxy on PATH or in /usr/sbin)")
    add("--template", default=str(TEMPLATE), help="HAProxy config template")
    add(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart a backend that exits (default on)",
    )
    add(
        "--restart-delay",
        type=float,
        metavar="SECONDS",
        default=0.5,
        help="seconds before the first restart; doubles after each failed start (default 0.5)",
    )
    add(
        "--restart-delay-max",
        type=float,
        metavar="SECONDS",
        default=30.0,
        help="the longest wait between restarts (default 30)",
    )
    add("--log-level", default="info", help="debug, info, warning, error (default info)")
    add(
        "--print-config",
        action="store_true",
        help="print the HAProxy config for the --backend list and exit",
    )
    add(
        "--backend",
        action="append",
        default=[],
        metavar="[ID=]HOST:PORT",
        help="a remote backend for --print-config, repeatable (ids default to 1, 2, ...)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> ClusterOptions:
    """The options of a parsed ``cluster`` command line."""
    backends = tuple(Shard.parse(spec, i) for i, spec in enumerate(args.backend, start=1))
    if args.print_config and not backends:
        raise ClusterError("--print-config needs at least one --backend HOST:PORT")
    if not 0 <= args.port <= 65535:
        raise ClusterError(f"port must be 0..65535, not {args.port}")
    if not 0 < args.restart_delay <= args.restart_delay_max:
        raise ClusterError("--restart-delay wants 0 < delay <= --restart-delay-max")
    return ClusterOptions(
        workers=args.workers,
        host=args.host,
        port=args.port,
        base_path=args.base_path,
        autocreate=args.autocreate,
        changefeed=args.changefeed,
        idle_timeout=args.idle_timeout,
        config=args.config,
        stream_timeout=args.stream_timeout,
        run_dir=args.run_dir,
        haproxy=args.haproxy,
        template=Path(args.template),
        log_level=args.log_level,
        restart=args.restart,
        restart_delay=args.restart_delay,
        restart_delay_max=args.restart_delay_max,
        backends=backends,
    )


def config_for_backends(options: ClusterOptions) -> str:
    """``--print-config``: the HAProxy config for the remote ``options.backends``."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    return render_config(
        options.backends,
        bind=f"{host}:{options.port}",
        base_path=options.base_path,
        stream_timeout=options.stream_timeout,
        template=options.template,
    )
