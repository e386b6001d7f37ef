"""Faults as data: a plan of rules, each a match and an action, and what fired. Sans-IO.

A :class:`FaultPlan` answers one question per request: which of its rules fire on it
(:meth:`FaultPlan.fire`), counting matches and recording each firing. Applying the
actions to a request is :mod:`.layer`'s job; this module knows no trio, no ASGI.

Matching (every field that is set must hold):
- ``method``: the request's method (``"POST"``).
- ``route``: the route kind, decided by :func:`trickle_trio.core.routing.decide` (once,
  as the server decides it): ``create`` (``POST /{ch}``), ``delete`` (``DELETE /{ch}``),
  ``segment-post`` and ``segment-get`` (``/{ch}/{seq}``), ``next`` (``/{ch}/next``).
- ``channel``: the channel's name, or a glob of it (``cam-*``, :func:`fnmatch.fnmatchcase`).
- ``seq``: the seq as the request names it (``-1`` matches a request for ``-1``).
- ``nth``: the rule's first firing is on the n-th request that matches the fields
  above (counted from 1); earlier matches are served untouched.

A rule fires once (``once=True``, the default) or on every match from the n-th on.
Every rule that fires on a request applies, in the order the rules were added.

Actions (:data:`Action`): :class:`Delay` (the response head, or its first body byte),
:class:`Cut` (the connection, after N bytes of the request body read or of the response
body written; reset or FIN), :class:`Answer` (a status with trickle headers instead of
serving), :class:`Stall` (stop reading a request body for a while), :class:`Throttle`
(a response at R bytes/s) and :class:`Drop` (the connection, before answering).

Rules also have a plain-data form (:func:`rule_from_dict`, :meth:`Rule.to_dict`), the
same in a TOML plan file (``[[rule]]`` tables) and in the control route's JSON.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..core.routing import Kind, Route
from .actions import (
    ACTIONS,
    Action,
    Answer,
    Cut,
    Delay,
    Drop,
    FaultPlanError,
    Stall,
    Throttle,
    action_name,
    action_to_dict,
)

__all__ = [
    "ROUTE_KINDS",
    "Action",
    "Answer",
    "Cut",
    "Delay",
    "Drop",
    "FaultPlan",
    "FaultPlanError",
    "Fired",
    "Match",
    "Rule",
    "Stall",
    "Throttle",
    "action_to_dict",
    "route_kind",
    "rule_from_dict",
    "rules_from_data",
]

#: The route kinds a rule may match, by name.
ROUTE_KINDS: Final = ("create", "delete", "segment-post", "segment-get", "next")

#: The most records a plan keeps of what fired (the oldest go first).
MAX_FIRED: Final = 10_000


def route_kind(method: str, route: Route) -> str | None:
    """The name (:data:`ROUTE_KINDS`) of the route ``route`` of a ``method`` request,
    or None for every other route."""
    kind = route.kind
    if kind is Kind.SEGMENT:
        return "segment-post" if method == "POST" else "segment-get"
    if kind is Kind.NEXT:
        return "next"
    if kind is Kind.CHANNEL:
        if method == "POST":
            return "create"
        if method == "DELETE":
            return "delete"
    return None


# -- matching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """Which requests a rule is for (see the module's docstring); None = any."""

    method: str | None = None
    route: str | None = None
    channel: str | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.method is not None and (
            not isinstance(self.method, str) or not self.method.isalpha()
        ):
            raise FaultPlanError(f"method must be an HTTP method, not {self.method!r}")
        if self.method is not None:
            object.__setattr__(self, "method", self.method.upper())
        if self.route is not None and self.route not in ROUTE_KINDS:
            raise FaultPlanError(
                f"route must be one of {', '.join(ROUTE_KINDS)}, not {self.route!r}"
            )
        if self.channel is not None and (not isinstance(self.channel, str) or not self.channel):
            raise FaultPlanError(f"channel must be a name or a glob, not {self.channel!r}")
        if self.seq is not None and (not isinstance(self.seq, int) or isinstance(self.seq, bool)):
            raise FaultPlanError(f"seq must be an integer, not {self.seq!r}")

    def matches(self, method: str, route: Route) -> bool:
        """Whether a ``method`` request for ``route`` is one of this match's."""
        if self.method is not None and method != self.method:
            return False
        if self.route is not None and route_kind(method, route) != self.route:
            return False
        if self.channel is not None and (
            route.channel is None or not fnmatch.fnmatchcase(route.channel, self.channel)
        ):
            return False
        if self.seq is not None:
            try:
                seq = int(route.seq) if route.seq is not None else None
            except ValueError:
                return False
            if seq != self.seq:
                return False
        return True


@dataclass
class Rule:
    """A match, an action and how often it fires; ``id`` is given by the plan.

    Attributes:
        matched: requests that matched so far; ``fired``: how many it fired on.
    """

    match: Match
    action: Action
    once: bool = True
    nth: int = 1
    name: str | None = None
    id: int = 0
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.nth, int) or isinstance(self.nth, bool) or self.nth < 1:
            raise FaultPlanError(f"nth must be an integer >= 1, not {self.nth!r}")
        if not isinstance(self.once, bool):
            raise FaultPlanError(f"once must be true or false, not {self.once!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise FaultPlanError(f"name must be a string, not {self.name!r}")
        if not isinstance(self.action, Action):
            raise FaultPlanError(f"not an action: {self.action!r}")

    @property
    def spent(self) -> bool:
        """A rule that fires once and has fired."""
        return self.once and self.fired > 0

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form (what :func:`rule_from_dict` reads), with the counters."""
        return {**self._match_dict(), **action_to_dict(self.action), **self._counters()}

    def _match_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id}
        if self.name is not None:
            data["name"] = self.name
        for key in ("method", "route", "channel", "seq"):
            value = getattr(self.match, key)
            if value is not None:
                data[key] = value
        data["nth"] = self.nth
        data["once"] = self.once
        return data

    def _counters(self) -> dict[str, Any]:
        return {"matched": self.matched, "fired": self.fired}


@dataclass(frozen=True)
class Fired:
    """A record of one rule firing on one request."""

    rule: int
    name: str | None
    action: str
    method: str
    path: str
    channel: str | None
    seq: str | None
    #: The request that matched the rule (its ``matched`` count then).
    match_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "channel": self.channel,
            "seq": self.seq,
            "match_count": self.match_count,
        }


class FaultPlan:
    """The rules of one server (or one in-process app) and the record of what fired.

    Sync and lock-free: every method runs to its end without a checkpoint, so rules
    can be added, listed or cleared from any task (or the control route) while
    requests come in.
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: list[Rule] = []
        self._ids = itertools.count(1)
        self.fired: list[Fired] = []
        for rule in rules:
            self.add_rule(rule)

    def __bool__(self) -> bool:
        """True while a rule may still fire (the layer's fast check)."""
        return bool(self._rules)

    @property
    def rules(self) -> list[Rule]:
        """The rules, in the order they apply."""
        return list(self._rules)

    def add(
        self,
        action: Action,
        *,
        method: str | None = None,
        route: str | None = None,
        channel: str | None = None,
        seq: int | None = None,
        nth: int = 1,
        once: bool = True,
        name: str | None = None,
    ) -> Rule:
        """Add a rule: ``action`` on the requests the keywords match (module docstring).

        Raises:
            FaultPlanError: a value that can't mean anything.
        """
        rule = Rule(Match(method, route, channel, seq), action, once=once, nth=nth, name=name)
        return self.add_rule(rule)

    def add_dict(self, data: Mapping[str, Any]) -> Rule:
        """Add a rule in its plain-data form (:func:`rule_from_dict`)."""
        return self.add_rule(rule_from_dict(data))

    def add_rule(self, rule: Rule) -> Rule:
        """Add ``rule`` (its id is given here, its counters start at 0)."""
        rule.id = next(self._ids)
        rule.matched = rule.fired = 0
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        """Remove the rule ``rule_id``; False if there is none."""
        for index, rule in enumerate(self._rules):
            if rule.id == rule_id:
                del self._rules[index]
                return True
        return False

    def clear(self) -> None:
        """Remove every rule and forget what fired."""
        self._rules.clear()
        self.fired.clear()

    def fire(self, method: str, route: Route) -> list[Rule]:
        """The rules that fire on a ``method`` request for ``route``, in order; counts
        the match for every rule that matches, and records each firing."""
        firing: list[Rule] = []
        for rule in self._rules:
            if rule.spent or not rule.match.matches(method, route):
                continue
            rule.matched += 1
            if rule.matched < rule.nth:
                continue
            rule.fired += 1
            firing.append(rule)
            if len(self.fired) >= MAX_FIRED:
                del self.fired[0]
            self.fired.append(
                Fired(
                    rule=rule.id,
                    name=rule.name,
                    action=action_name(rule.action),
                    method=method,
                    path=route.path,
                    channel=route.channel,
                    seq=route.seq,
                    match_count=rule.matched,
                )
            )
        return firing

    def fired_of(self, rule: Rule | int) -> list[Fired]:
        """What the rule ``rule`` (or its id) fired on."""
        rule_id = rule if isinstance(rule, int) else rule.id
        return [record for record in self.fired if record.rule == rule_id]

    def has_cuts(self) -> bool:
        """Whether a rule needs the transport (a cut or a drop)."""
        return any(isinstance(rule.action, Cut | Drop) for rule in self._rules)


# -- the plain-data form ------------------------------------------------------------------

_MATCH_KEYS: Final = frozenset({"method", "route", "channel", "seq"})
_RULE_KEYS: Final = frozenset({"name", "nth", "once", "action"})


def rule_from_dict(data: Mapping[str, Any]) -> Rule:
    """A rule from its plain-data form: match keys (``method``, ``route``, ``channel``,
    ``seq``), ``nth``, ``once``, ``name``, ``action`` (``delay``, ``cut``, ``answer``,
    ``stall``, ``throttle``, ``drop``) and that action's fields, all in one table::

        {"route": "segment-post", "seq": 3, "action": "cut", "of": "request",
         "after": 1000, "how": "rst"}

    ``id``, ``matched`` and ``fired`` (as :meth:`Rule.to_dict` gives them) are ignored.

    Raises:
        FaultPlanError: an unknown key or action, a missing or wrong value.
    """
    if not isinstance(data, Mapping):
        raise FaultPlanError(f"a rule is a table of keys, not {type(data).__name__}")
    action_name = data.get("action")
    if action_name not in ACTIONS:
        raise FaultPlanError(
            f"action must be one of {', '.join(ACTIONS)}, not {action_name!r}"
            if action_name is not None
            else f"a rule needs an action: one of {', '.join(ACTIONS)}"
        )
    action_cls = ACTIONS[action_name]
    action_keys = frozenset(action_cls.__dataclass_fields__)
    known = _MATCH_KEYS | _RULE_KEYS | action_keys | {"id", "matched", "fired"}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise FaultPlanError(f"unknown key for a {action_name} rule: {', '.join(unknown)}")
    try:
        action = action_cls(**{key: data[key] for key in action_keys if key in data})
    except TypeError:
        required = [
            name
            for name, f in action_cls.__dataclass_fields__.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        raise FaultPlanError(f"{action_name}: needs {', '.join(required)}") from None
    match = Match(**{key: data[key] for key in _MATCH_KEYS if key in data})
    return Rule(
        match,
        action,
        once=data.get("once", True),
        nth=data.get("nth", 1),
        name=data.get("name"),
    )


def rules_from_data(data: Any, *, where: str = "plan") -> list[Rule]:
    """The rules of a plan's plain-data form: ``{"rule": [rule, ...]}`` (a TOML file's
    ``[[rule]]`` tables), a list of rules, or one rule.

    Raises:
        FaultPlanError: ``where: rule N: reason``.
    """
    if isinstance(data, Mapping) and "rule" in data:
        unknown = sorted(str(key) for key in data if key != "rule")
        if unknown:
            raise FaultPlanError(
                f"{where}: unknown key {', '.join(unknown)} (rules go in [[rule]] tables)"
            )
        data = data["rule"]
    items = [data] if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise FaultPlanError(f"{where}: expected a rule or a list of rules")
    rules = []
    for number, item in enumerate(items, 1):
        try:
            rules.append(rule_from_dict(item))
        except FaultPlanError as exc:
            raise FaultPlanError(f"{where}: rule {number}: {exc}") from None
    return rules
