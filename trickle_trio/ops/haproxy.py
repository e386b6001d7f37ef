"""The HAProxy side of ``trickle-trio cluster``: the config template and its rendering.

The template is package data (``ops/haproxy.cfg.in``); ``deploy/README.md`` explains
each setting. Pure: strings in, a config out (and where the haproxy binary is).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..core.wire import normalize_base_path

logger = logging.getLogger(__name__)


class ClusterError(Exception):
    """The cluster cannot start or go on; the message is one line, fit for a CLI."""


@dataclass(frozen=True)
class Shard:
    """One backend as HAProxy sees it: name ``b<id>``, address, and its ring ``id``.

    HAProxy's consistent-hash ring depends on the ids (and weights) only, so a channel's
    shard is a function of its name and the set of ids, whatever the addresses.
    """

    id: int
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"b{self.id}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @classmethod
    def parse(cls, spec: str, default_id: int) -> Shard:
        """``[ID=]HOST:PORT`` (``[v6]:PORT`` for IPv6); the id defaults to the position."""
        ident, sep, address = spec.rpartition("=")
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            shard = cls(int(ident) if sep else default_id, host, int(port))
        except ValueError:
            shard = None
        if shard is None or not host or shard.id < 1 or not 0 < shard.port < 65536:
            raise ClusterError(f"--backend wants [ID=]HOST:PORT with ID >= 1, not {spec!r}")
        return shard


#: The HAProxy config template (package data: an installed wheel has it too).
TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg.in"
#: How long backends and the proxy may take to answer after they are started.
STARTUP_TIMEOUT = 30.0
#: How long one readiness probe may take (something else may hold the port, mute).
PROBE_TIMEOUT = 1.0
#: How often a backend is started on a fresh port when its first one was taken meanwhile.
BIND_ATTEMPTS = 3
#: How long backends may take to drain (teardown grace + graceful timeout, with room).
DRAIN_TIMEOUT = 30.0
#: How long HAProxy may take to exit once the backends are gone, before a hard stop.
PROXY_EXIT_TIMEOUT = 5.0
#: HAProxy's own bound on a soft stop (``hard-stop-after``), a safety net.
HARD_STOP_AFTER = "60s"
#: The longest a trickle request idles by design with the backends' defaults:
#: ``idle_timeout`` (300 s) + ``sweep_interval`` (60 s).
DEFAULT_LONGEST_IDLE = 360.0
PR_SET_PDEATHSIG = 1


def channel_field(base_path: str) -> int:
    """The ``field(N,/)`` index of the channel name in a request path under ``base_path``.

    ``/cam/0`` splits into ``"", "cam", "0"``: field 2; each base path segment adds one.
    """
    return 2 + len([part for part in base_path.split("/") if part])


def duration(seconds: float) -> str:
    """HAProxy's time syntax, in whole seconds when exact."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def render_config(
    shards: Sequence[Shard],
    *,
    bind: str,
    base_path: str = "/",
    stream_timeout: float = 3600.0,
    template: Path = TEMPLATE,
    readiness: str | None = None,
) -> str:
    """The HAProxy config for ``shards``, listening on ``bind`` (``HOST:PORT``).

    ``readiness`` (``HOST:PORT``): where the proxy's ``/readyz`` is answered (the
    cluster's :class:`~trickle_trio.supervisor.Supervisor`, which knows which shards are
    down); without it the proxy answers ``ready`` itself while it runs.

    Raises:
        ClusterError: the template cannot be read, or two shards share an id.
    """
    if len({shard.id for shard in shards}) != len(shards):
        raise ClusterError("two backends have the same id")
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterError(f"cannot read the HAProxy template {template}: {exc.strerror}") from None
    base = normalize_base_path(base_path)

    def paths(name: str) -> str:
        return " ".join(dict.fromkeys([f"/{name}", f"{base}{name}"]))

    rules = (
        f"    use-server {shard.name} if {{ var(txn.shard) -m str {shard.name} }}"
        for shard in shards
    )
    servers = (f"    server {shard.name} {shard.address} id {shard.id}" for shard in shards)
    if readiness is None:
        readyz_rule = (
            "    http-request return status 200 content-type text/plain "
            f'string "ready\\n" if {{ path {paths("readyz")} }}'
        )
        readiness_route = readiness_backend = ""
    else:
        readyz_rule = "    # /readyz: the cluster's supervisor says which shards are down (below)"
        readiness_route = (
            f"    use_backend readiness if {{ path {paths('readyz')} }}"
            " !{ var(txn.shard) -m found }"
        )
        readiness_backend = (
            "\n# `trickle-trio cluster`'s supervisor: 200 ready, or 503 degraded: <shards> down.\n"
            f"backend readiness\n    server supervisor {readiness}"
        )
    return Template(text).substitute(
        bind=bind,
        hard_stop_after=HARD_STOP_AFTER,
        stream_timeout=duration(stream_timeout),
        per_shard_path="%[path]" if base == "/" else f"%[path,regsub(^{base},/)]",
        healthz_paths=paths("healthz"),
        readyz_paths=paths("readyz"),
        per_shard_paths=f"{paths('metrics')} {paths('_status')}",
        page_paths=paths("_/watch"),
        readyz_rule=readyz_rule,
        readiness_route=readiness_route,
        readiness_backend=readiness_backend,
        changes_path=f"{base}_changes",
        shard_names=" ".join(shard.name for shard in shards),
        channel_field=channel_field(base),
        use_server_rules="\n".join(rules),
        servers="\n".join(servers),
    )


def find_haproxy(explicit: str | None = None) -> str | None:
    """The HAProxy binary: ``explicit``, else on PATH, else in the usual sbin folders."""
    candidates = (
        [explicit]
        if explicit
        else [shutil.which("haproxy"), "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
    )
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
