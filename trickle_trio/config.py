"""Settings: every knob of the server in one frozen dataclass, and where each came from.

Sources, lowest precedence first: the defaults below; a TOML file (``--config FILE`` or
``TRICKLE_CONFIG=FILE``; top-level keys are the field names, e.g. ``port = 8080``);
``TRICKLE_<FIELD>`` environment variables (``TRICKLE_PORT=8080``,
``TRICKLE_AUTOCREATE=1``); command-line flags. The same sources drive ``trickle-trio
serve`` and the plain ``hypercorn trickle_trio.asgi:app`` deployment (which has no
flags of its own). :func:`load_settings` returns the settings and the source of each,
and :meth:`Settings.describe` prints them with secrets masked.

Imports nothing from the package, so that every layer (and the clients) may use it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A before-create / before-delete hook: ``hook(request, channel_name)``. It may be sync
#: or async. Raising ``trickle_trio.RequestError(status, message)`` answers that 4xx;
#: any other exception answers 500; in both cases nothing is created or deleted.
Hook = Callable[[Any, str], Awaitable[None] | None]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting has an invalid value; the message is one line, fit for a CLI."""


@dataclass(frozen=True)
class Settings:
    """Server settings. Durations are in seconds."""

    #: Address ``trickle-trio serve`` binds (a standalone server binds loopback only).
    host: str = "127.0.0.1"
    #: Port; 0 picks an ephemeral port (tests, benchmarks).
    port: int = 2939
    #: Path prefix of every trickle route, e.g. ``/trickle/``.
    base_path: str = "/"
    #: Create channels on ``POST /{ch}`` and on the first ``POST /{ch}/{seq}``.
    autocreate: bool = False
    #: Publish channel additions and removals to the ``_changes`` channel.
    changefeed: bool = False
    #: Delete channels whose last write is older than this.
    idle_timeout: float = 300.0
    #: How often the idle sweep runs.
    sweep_interval: float = 60.0
    #: How long a deleted channel's publishers (idle preconnects included) wait to be
    #: answered for a subscriber that can't take its response head; the DELETE itself
    #: never waits, and readers keep reading what their segments held.
    teardown_grace: float = 5.0
    #: hypercorn's graceful_timeout, applied after the channels have been drained.
    graceful_timeout: float = 5.0
    #: hypercorn's keep_alive_timeout: how long an idle connection *between* requests
    #: stays open. It never applies while a request is in flight, so it can't cut an
    #: idle preconnect.
    keep_alive_timeout: float = 5.0
    #: TLS certificate and key (PEM); both or neither.
    certfile: str | None = None
    keyfile: str | None = None
    #: Hypercorn access log ("-" = stderr); None (the default) disables it.
    access_log: str | None = None
    #: Log level of the server's own log lines: debug, info, warning, error.
    log_level: str = "info"
    #: ``text`` (key=value lines) or ``json`` (one JSON object per line).
    log_format: str = "text"

    #: Keep garbage-collector pauses off the live path: freeze everything allocated at
    #: start-up (never scanned again) and collect the young generation less often.
    gc_tuning: bool = True
    #: ``trickle-trio serve`` answers with its own HTTP/1.1 server (``trickle_trio.h1``:
    #: llhttp parsing, one task per connection, segment bodies written straight into
    #: segments, chunks pushed from the publisher's task); off: stock hypercorn, which
    #: also speaks HTTP/2. Plain ``hypercorn trickle_trio.asgi:app`` is always hypercorn.
    fast_path: bool = True
    #: Serve the watch page at ``/_/watch/``: the channels as they come and go, MPEG-TS
    #: channels playing in the page, others as a live log (``trickle_trio.http.page``).
    #: Its files hold no channel names; what it reads follows the token rules.
    watch_page: bool = True

    # -- limits: each answered with a clear 4xx and a log line --------------------------
    #: Bytes per segment; a publisher over it gets 413 and the segment is closed at the
    #: limit. Memory stays below window (5) x this x max_channels (plus one segment per
    #: subscriber that stopped reading).
    max_segment_bytes: int = 64 * 1024 * 1024
    #: Channels at once (429 beyond).
    max_channels: int = 10_000
    #: Subscriber GETs attached to one channel at once (429 beyond).
    max_subscribers_per_channel: int = 1_000
    #: Publisher POSTs (idle preconnects included) attached to one channel (429 beyond).
    max_publishers_per_channel: int = 64
    #: HTTP requests in flight at once, i.e. busy connections (429 beyond; health exempt).
    max_requests: int = 20_000
    #: HTTP requests in flight at once from one client address (429 beyond; health
    #: exempt); 0 = no limit (the default: a client's idle preconnects and parked GETs
    #: are requests in flight, and they must never be refused by a guess).
    max_requests_per_client: int = 0
    #: Longest channel name (400 beyond).
    max_name_length: int = 256
    #: Longest request path (414 beyond).
    max_url_length: int = 2048
    #: Request line plus headers, in bytes (431 beyond, and the connection is closed).
    max_header_bytes: int = 16 * 1024
    #: Bytes of segments that have left their window (pushed out by newer ones, or
    #: their channel deleted) but that subscribers still stream, across the server: a
    #: reader that stopped reading pins its segment. Past this bound the readers of the
    #: segments pinned longest are cut, oldest first (connection reset: the client sees
    #: an error, never a clean end). 0 = no bound (the default).
    max_pinned_bytes: int = 0
    #: Connections open at once (0 = no limit, the default). One accepted past it is
    #: answered ``503`` and closed before its request is read; keep it well above
    #: ``max_requests`` plus the idle keep-alive connections you expect. trickle-trio's
    #: own server only (``fast_path``); under hypercorn use its ``--backlog``/proxy caps.
    max_connections: int = 0
    #: Connections open at once from one client address (0 = no limit, the default:
    #: a gateway's idle preconnects are connections, and must never be refused by a
    #: guess). Past it: ``429`` and closed, as for ``max_connections``.
    max_connections_per_client: int = 0
    #: Release a preconnected POST that has sent no byte for this long (408); 0 = never,
    #: as in the reference (which keeps it alive with 100 Continue).
    preconnect_timeout: float = 0.0

    # -- access control -----------------------------------------------------------------
    #: Bearer token for publishing, creating, deleting and the status view (None = open).
    publish_token: str | None = None
    #: Bearer token for subscribing and /next (None = open). The publish token works too.
    #: Needs ``publish_token``, and a different value (refused at start-up otherwise).
    subscribe_token: str | None = None

    # -- fault injection (test servers only: trickle_trio.faults) ------------------------
    #: A TOML fault plan (``[[rule]]`` tables) applied to the requests it matches.
    faults: str | None = None
    #: Serve the fault control route (``/_/faults``: add, list, clear rules over HTTP).
    #: Without ``faults_token`` it answers on a loopback bind only.
    faults_control: bool = False
    #: Bearer token of the fault control route (None = loopback binds only).
    faults_token: str | None = None
    #: Hooks, only settable from Python (not from the environment).
    before_create: Hook | None = field(default=None, compare=False, repr=False)
    before_delete: Hook | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, not {self.port}")
        for name in (
            "idle_timeout",
            "sweep_interval",
            "teardown_grace",
            "graceful_timeout",
            "keep_alive_timeout",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, not {getattr(self, name)}")
        for name in (
            "max_segment_bytes",
            "max_channels",
            "max_subscribers_per_channel",
            "max_publishers_per_channel",
            "max_requests",
            "max_name_length",
            "max_url_length",
            "max_header_bytes",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in (
            "max_requests_per_client",
            "max_pinned_bytes",
            "max_connections",
            "max_connections_per_client",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.preconnect_timeout < 0:
            raise SettingsError(f"preconnect_timeout must be >= 0, not {self.preconnect_timeout}")
        for name in ("publish_token", "subscribe_token", "faults_token"):
            token = getattr(self, name)
            if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
                raise SettingsError(f"{name} must be at least 16 printable characters, no spaces")
        # Token configurations that cannot mean what they say are refused.
        if self.subscribe_token is not None and self.publish_token is None:
            raise SettingsError(
                "subscribe_token is set without publish_token: anyone could then publish to,"
                " delete and list the channels that only token holders may read;"
                " set publish_token too"
            )
        if self.publish_token is not None and self.publish_token == self.subscribe_token:
            raise SettingsError(
                "publish_token and subscribe_token are the same: every subscriber could"
                " publish and delete; use two different tokens"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise SettingsError("certfile and keyfile must be given together")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(f"log_level must be debug/info/warning/error, not {self.log_level}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"log_format must be text or json, not {self.log_format}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the config file and ``TRICKLE_*`` variables, ``overrides`` on top.

        Raises:
            SettingsError: a value does not parse.
        """
        return load_settings(environ=environ, flags=overrides)[0]

    def describe(self, sources: Mapping[str, str] | None = None) -> list[str]:
        """One ``name=value source=...`` line per setting; secrets are masked."""
        lines = []
        for f in _settable_fields():
            value = getattr(self, f.name)
            shown = "***" if _is_secret(f.name) and value else str(value)
            source = (sources or {}).get(f.name, "default").replace(" ", ":")
            lines.append(f"{f.name}={shown or '-'} source={source}")
        return lines

    def summary(self, sources: Mapping[str, str] | None = None, *, serve: bool = True) -> str:
        """The start-up line's settings: what matters at a glance, then every setting
        that is not at its default with its source (``port=2940[flag]``); secrets masked.

        ``serve=False`` (plain hypercorn) leaves out what hypercorn's own flags decide
        (:data:`HYPERCORN_OWNED`).
        """
        parts = []
        if serve:
            scheme = "https" if self.certfile else "http"
            host = f"[{self.host}]" if ":" in self.host else self.host
            parts.append(f"{scheme}://{host}:{self.port}{self.base_path}")
        else:
            parts.append(f"base_path={self.base_path}")
        tokens = [kind for kind in ("publish", "subscribe") if getattr(self, f"{kind}_token")]
        parts += [
            f"autocreate={'on' if self.autocreate else 'off'}",
            f"changefeed={'on' if self.changefeed else 'off'}",
            f"tokens={','.join(tokens) or 'off'}",
        ]
        changed = []
        for f in _settable_fields():
            if f.name not in (sources or {}) or (not serve and f.name in HYPERCORN_OWNED):
                continue
            value = getattr(self, f.name)
            shown = "***" if _is_secret(f.name) and value else str(value)
            source = (sources or {})[f.name].replace(" ", ":")
            changed.append(f"{f.name}={shown or '-'}[{source}]")
        parts.append("set: " + (" ".join(changed) if changed else "all defaults"))
        return " ".join(parts)


#: Settings only ``trickle-trio serve`` applies; under plain hypercorn, its own flags
#: (``--bind``, ``--certfile``, ``--graceful-timeout``, ...) decide these.
HYPERCORN_OWNED = frozenset(
    {
        "host",
        "port",
        "certfile",
        "keyfile",
        "access_log",
        "graceful_timeout",
        "keep_alive_timeout",
        "max_header_bytes",
        "fast_path",  # under plain hypercorn, hypercorn is the HTTP server
        "max_connections",  # trickle-trio's own server's caps
        "max_connections_per_client",
    }
)


def _settable_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if f.name not in _PYTHON_ONLY]


_PYTHON_ONLY = frozenset({"before_create", "before_delete"})


def _is_secret(name: str) -> bool:
    return "token" in name or "secret" in name or "password" in name


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Merge defaults < TOML file < environment < flags; return settings and sources.

    ``config_file`` defaults to ``TRICKLE_CONFIG`` from the environment.

    Raises:
        SettingsError: a file that can't be read or parsed, an unknown key, a value of
            the wrong type; the message is one line.
    """
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in _settable_fields()}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config_file if config_file is not None else env.get("TRICKLE_CONFIG")
    if path:
        for key, value in _read_toml(Path(path)).items():
            if key not in fields:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, str(fields[key].type), value, f"{path}: {key}")
            sources[key] = f"file {path}"
    for name, f in fields.items():
        raw = env.get(f"TRICKLE_{name.upper()}")
        if raw is not None:
            values[name] = _parse(name, str(f.type), raw)
            sources[name] = f"env TRICKLE_{name.upper()}"
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "flag" if name in fields else "python"
    try:
        return Settings(**values), sources
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise SettingsError(str(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("trickle", data)
    if not isinstance(section, dict):  # pragma: no cover - tomllib always gives tables
        raise SettingsError(f"config file {path}: expected a table")
    return section


def _coerce(name: str, type_name: str, value: Any, where: str) -> Any:
    """Check a TOML value's type against the field's."""
    expected: tuple[type, ...]
    if type_name == "bool":
        expected = (bool,)
    elif type_name == "int":
        expected = (int,)
    elif type_name == "float":
        expected = (int, float)
    else:
        expected = (str,)
    if isinstance(value, bool) and bool not in expected:
        raise SettingsError(f"{where} must be a {type_name}, not {value!r}")
    if not isinstance(value, expected):
        raise SettingsError(f"{where} must be a {type_name.split(' ')[0]}, not {value!r}")
    return float(value) if type_name == "float" else value


def _parse(name: str, type_name: str, raw: str) -> Any:
    env_name = f"TRICKLE_{name.upper()}"
    if type_name == "bool":
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{env_name} must be a boolean (1/0, true/false), not {raw!r}")
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{env_name} must be an integer, not {raw!r}") from None
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{env_name} must be a number, not {raw!r}") from None
    return raw or None if "None" in type_name else raw
