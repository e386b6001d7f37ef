"""The actions a fault rule may take, as plain frozen values, and their checks. Sans-IO.

Each action checks its own fields when made (a bad value raises :class:`FaultPlanError`
with a one-line reason); :mod:`.plan` matches requests and :mod:`.layer` carries the
actions out. :data:`ACTIONS` names each action as the plain-data form spells it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ACTIONS",
    "Action",
    "Answer",
    "Cut",
    "Delay",
    "Drop",
    "FaultPlanError",
    "Stall",
    "Throttle",
    "action_name",
    "action_to_dict",
]


class FaultPlanError(ValueError):
    """A rule that can't mean anything: the message says why, in one line."""


@dataclass(frozen=True)
class Delay:
    """Hold the response back for ``seconds``: its head (``where="head"``: nothing
    reaches the client), or its first body byte (``where="first-byte"``: the head is
    sent at once)."""

    seconds: float
    where: Literal["head", "first-byte"] = "head"

    def __post_init__(self) -> None:
        _check_duration("delay", self.seconds)
        _check_choice("delay", "where", self.where, ("head", "first-byte"))


@dataclass(frozen=True)
class Cut:
    """Cut the connection once ``after`` bytes of the request body have been read
    (``of="request"``) or of the response body written (``of="response"``): with a
    reset (``how="rst"``) or a plain close, FIN (``how="fin"``). The response never
    ends cleanly."""

    after: int = 0
    of: Literal["request", "response"] = "response"
    how: Literal["rst", "fin"] = "rst"

    def __post_init__(self) -> None:
        if not isinstance(self.after, int) or isinstance(self.after, bool) or self.after < 0:
            raise FaultPlanError(f"cut: after must be a byte count >= 0, not {self.after!r}")
        _check_choice("cut", "of", self.of, ("request", "response"))
        _check_choice("cut", "how", self.how, ("rst", "fin"))


@dataclass(frozen=True)
class Answer:
    """Answer ``status`` instead of serving the request (which never reaches the
    server), with trickle headers: ``latest`` (``Lp-Trickle-Latest``; for a 470
    without it, the channel's own), ``closed`` (``Lp-Trickle-Closed: terminated``),
    any other ``headers``, and ``body`` (plain text)."""

    status: int
    latest: int | None = None
    closed: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    def __post_init__(self) -> None:
        status = self.status
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise FaultPlanError(f"answer: status must be 200..599, not {status!r}")
        if self.latest is not None and (
            not isinstance(self.latest, int) or isinstance(self.latest, bool)
        ):
            raise FaultPlanError(f"answer: latest must be an integer, not {self.latest!r}")
        if not isinstance(self.headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and _header_safe(k) and _header_safe(v)
            for k, v in self.headers.items()
        ):
            raise FaultPlanError("answer: headers must map names to values (plain strings)")
        if not isinstance(self.body, str):
            raise FaultPlanError("answer: body must be a string")


@dataclass(frozen=True)
class Stall:
    """Stop reading the request body for ``seconds``, once ``after`` bytes of it have
    been read: the client's sends back up (backpressure)."""

    seconds: float
    after: int = 0

    def __post_init__(self) -> None:
        _check_duration("stall", self.seconds)
        if not isinstance(self.after, int) or isinstance(self.after, bool) or self.after < 0:
            raise FaultPlanError(f"stall: after must be a byte count >= 0, not {self.after!r}")


@dataclass(frozen=True)
class Throttle:
    """Write the response body at ``rate`` bytes per second at most."""

    rate: float

    def __post_init__(self) -> None:
        if (
            not isinstance(self.rate, int | float)
            or isinstance(self.rate, bool)
            or not math.isfinite(self.rate)
            or self.rate <= 0
        ):
            raise FaultPlanError(f"throttle: rate must be > 0 bytes/s, not {self.rate!r}")


@dataclass(frozen=True)
class Drop:
    """Drop the connection before answering: reset (``how="rst"``) or FIN."""

    how: Literal["rst", "fin"] = "rst"

    def __post_init__(self) -> None:
        _check_choice("drop", "how", self.how, ("rst", "fin"))


Action = Delay | Cut | Answer | Stall | Throttle | Drop

ACTIONS: Final[dict[str, type[Action]]] = {
    "delay": Delay,
    "cut": Cut,
    "answer": Answer,
    "stall": Stall,
    "throttle": Throttle,
    "drop": Drop,
}
_ACTION_NAMES: Final = {cls: name for name, cls in ACTIONS.items()}


def action_name(action: Action) -> str:
    """The action's name in the plain-data form (``"cut"``)."""
    return _ACTION_NAMES[type(action)]


def action_to_dict(action: Action) -> dict[str, Any]:
    """``{"action": name, **fields}``: an action's part of a rule's plain-data form."""
    data: dict[str, Any] = {"action": _ACTION_NAMES[type(action)]}
    for key, value in vars(action).items():
        data[key] = dict(value) if isinstance(value, Mapping) else value
    return data


def _check_duration(action: str, seconds: Any) -> None:
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise FaultPlanError(f"{action}: seconds must be >= 0, not {seconds!r}")


def _check_choice(action: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FaultPlanError(f"{action}: {name} must be one of {', '.join(choices)}, not {value!r}")


def _header_safe(text: str) -> bool:
    return bool(text) and text.isprintable() and "\r" not in text and "\n" not in text
