"""Fault injection for test servers: a plan of rules that break matched requests on cue.

:mod:`.plan` holds the rules (sans-IO: match, count, record), :mod:`.layer` applies
them as an ASGI layer in front of the app, :mod:`.control` is the HTTP control route.
This package's top level loads only :mod:`.plan` (no trio, no server), so a test suite
may build plans without loading the server.

Use it through ``trickle_server.faults`` (the pytest plugin's fixture),
``open_exchange(..., faults=plan)``, ``open_server(settings, faults=plan)``,
``trickle-trio serve --faults plan.toml`` and ``--faults-control``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .plan import (
    ROUTE_KINDS,
    Action,
    Answer,
    Cut,
    Delay,
    Drop,
    FaultPlan,
    FaultPlanError,
    Fired,
    Match,
    Rule,
    Stall,
    Throttle,
    rule_from_dict,
    rules_from_data,
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
    "load_plan",
    "rule_from_dict",
    "rules_from_data",
]


def load_plan(path: str | Path) -> FaultPlan:
    """The plan in the TOML file ``path``: one ``[[rule]]`` table per rule, each in the
    plain-data form of :func:`rule_from_dict`::

        [[rule]]
        route = "segment-post"
        nth = 3
        action = "cut"
        of = "request"
        after = 1000

    Raises:
        FaultPlanError: the file can't be read, is not TOML, or holds a bad rule (the
            message names the file and the rule).
    """
    try:
        with Path(path).open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise FaultPlanError(f"cannot read fault plan {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FaultPlanError(f"fault plan {path} is not valid TOML: {exc}") from None
    unknown = sorted(key for key in data if key != "rule")
    if unknown:
        raise FaultPlanError(
            f"{path}: unknown key {', '.join(unknown)} (rules go in [[rule]] tables)"
        )
    return FaultPlan(rules_from_data(data.get("rule", []), where=str(path)))
