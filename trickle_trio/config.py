"""Settings: every knob of the server in one frozen dataclass, plus ``from_env``.

Imports nothing from the package, so that every layer (and the clients) may use it.
Environment variables are ``TRICKLE_<FIELD>`` in upper case, e.g. ``TRICKLE_PORT=8080``,
``TRICKLE_AUTOCREATE=1``, ``TRICKLE_BASE_PATH=/trickle/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
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
    #: How long a DELETE waits for subscribers (then preconnects) to leave before it
    #: goes on regardless; only a client that stopped reading can make it wait.
    teardown_grace: float = 5.0
    #: hypercorn's graceful_timeout, applied after the channels have been drained.
    graceful_timeout: float = 5.0
    #: TLS certificate and key (PEM); both or neither.
    certfile: str | None = None
    keyfile: str | None = None
    #: Hypercorn access log ("-" = stderr); None disables it.
    access_log: str | None = None
    #: Hooks, only settable from Python (not from the environment).
    before_create: Hook | None = field(default=None, compare=False, repr=False)
    before_delete: Hook | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, not {self.port}")
        for name in ("idle_timeout", "sweep_interval", "teardown_grace", "graceful_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0, not {getattr(self, name)}")
        if (self.certfile is None) != (self.keyfile is None):
            raise SettingsError("certfile and keyfile must be given together")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``TRICKLE_*`` variables, then ``overrides`` on top.

        Raises:
            SettingsError: a variable does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("before_create", "before_delete"):
                continue
            raw = env.get(f"TRICKLE_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update(overrides)
        return cls(**values)


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
