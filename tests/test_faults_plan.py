"""The fault plan, sans-IO: matching each field, counting, firing once or always, the
plain-data form (TOML, JSON) and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trickle_trio.core.routing import Route, decide
from trickle_trio.faults import (
    Answer,
    Cut,
    Delay,
    Drop,
    FaultPlan,
    FaultPlanError,
    Stall,
    Throttle,
    load_plan,
    rule_from_dict,
    rules_from_data,
)
from trickle_trio.faults.plan import Match


def route(method: str, target: str) -> Route:
    decided = decide(method, target.encode())
    assert isinstance(decided, Route)
    return decided


@pytest.mark.parametrize(
    ("kind", "method", "target"),
    [
        ("create", "POST", "/cam"),
        ("delete", "DELETE", "/cam"),
        ("segment-post", "POST", "/cam/3"),
        ("segment-get", "GET", "/cam/3"),
        ("next", "GET", "/cam/next"),
    ],
)
def test_a_route_kind_matches_its_requests_only(kind: str, method: str, target: str) -> None:
    requests = [
        ("POST", "/cam"),
        ("DELETE", "/cam"),
        ("POST", "/cam/3"),
        ("GET", "/cam/3"),
        ("GET", "/cam/next"),
        ("DELETE", "/cam/3"),
        ("GET", "/healthz"),
    ]
    match = Match(route=kind)
    matched = [(m, t) for m, t in requests if match.matches(m, route(m, t))]
    assert matched == [(method, target)]


def test_method_channel_glob_and_seq_match() -> None:
    assert Match(method="post").matches("POST", route("POST", "/cam/1"))
    assert not Match(method="GET").matches("POST", route("POST", "/cam/1"))
    assert Match(channel="cam-*").matches("GET", route("GET", "/cam-7/1"))
    assert not Match(channel="cam-*").matches("GET", route("GET", "/mic-7/1"))
    assert Match(channel="cam").matches("GET", route("GET", "/cam/1"))
    assert not Match(channel="cam").matches("GET", route("GET", "/camera/1"))
    assert not Match(channel="*").matches("GET", route("GET", "/healthz"))  # no channel
    assert Match(seq=3).matches("POST", route("POST", "/cam/3"))
    assert not Match(seq=3).matches("POST", route("POST", "/cam/4"))
    assert Match(seq=-1).matches("GET", route("GET", "/cam/-1"))
    assert not Match(seq=3).matches("POST", route("POST", "/cam"))  # no seq
    assert not Match(seq=3).matches("GET", route("GET", "/cam/next"))
    assert Match().matches("GET", route("GET", "/anything"))


def test_the_nth_matching_request_fires_exactly_once() -> None:
    plan = FaultPlan()
    rule = plan.add(Drop(), route="segment-post", nth=3)
    fired = []
    for seq in range(8):
        plan.fire("GET", route("GET", f"/cam/{seq}"))  # not a match: not counted
        fired.append(bool(plan.fire("POST", route("POST", f"/cam/{seq}"))))
    assert fired == [False, False, True, False, False, False, False, False]
    assert (rule.matched, rule.fired) == (3, 1)
    [record] = plan.fired
    assert (record.rule, record.action, record.seq, record.match_count) == (rule.id, "drop", "2", 3)


def test_a_rule_that_fires_always_fires_on_every_match_from_the_nth_on() -> None:
    plan = FaultPlan()
    plan.add(Delay(1.0), route="segment-get", nth=2, once=False)
    fired = [bool(plan.fire("GET", route("GET", f"/cam/{seq}"))) for seq in range(5)]
    assert fired == [False, True, True, True, True]
    assert [record.seq for record in plan.fired] == ["1", "2", "3", "4"]


@given(st.integers(1, 20), st.lists(st.booleans(), min_size=1, max_size=60))
def test_nth_fires_once_whatever_else_comes(nth: int, matches: list[bool]) -> None:
    plan = FaultPlan()
    plan.add(Drop(), channel="cam", nth=nth)
    firings = [
        bool(plan.fire("GET", route("GET", "/cam/1" if match else "/other/1"))) for match in matches
    ]
    expected = sum(matches) >= nth
    assert firings.count(True) == int(expected)
    if expected:
        positions = [index for index, match in enumerate(matches) if match]
        assert firings.index(True) == positions[nth - 1]


def test_every_rule_that_fires_applies_in_order_and_clear_forgets() -> None:
    plan = FaultPlan()
    first = plan.add(Delay(1.0), route="segment-get")
    second = plan.add(Throttle(100), channel="cam")
    assert plan.fire("GET", route("GET", "/cam/0")) == [first, second]
    assert plan.fire("GET", route("GET", "/cam/1")) == []  # both fired once
    assert plan.remove(first.id)
    assert not plan.remove(first.id)
    assert plan.rules == [second]
    plan.clear()
    assert not plan
    assert plan.fired == []
    assert plan.rules == []


def test_the_plain_data_form_round_trips() -> None:
    data = {
        "name": "third post dies",
        "route": "segment-post",
        "channel": "cam*",
        "seq": 3,
        "nth": 2,
        "once": False,
        "action": "cut",
        "of": "request",
        "after": 1000,
        "how": "fin",
    }
    rule = rule_from_dict(data)
    assert rule.action == Cut(after=1000, of="request", how="fin")
    assert rule.match == Match(route="segment-post", channel="cam*", seq=3)
    assert (rule.nth, rule.once, rule.name) == (2, False, "third post dies")
    again = rule_from_dict(rule.to_dict())
    assert (again.match, again.action, again.nth, again.once) == (
        rule.match,
        rule.action,
        rule.nth,
        rule.once,
    )
    answer = rule_from_dict({"action": "answer", "status": 470, "latest": 9, "headers": {"X": "y"}})
    assert answer.action == Answer(470, latest=9, headers={"X": "y"})
    assert rule_from_dict({"action": "stall", "seconds": 2, "after": 10}).action == Stall(2, 10)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"route": "segment-post"}, "a rule needs an action"),
        ({"action": "explode"}, "action must be one of delay, cut, answer"),
        ({"action": "cut", "sq": 3}, "unknown key for a cut rule: sq"),
        ({"action": "cut", "how": "slam"}, "cut: how must be one of rst, fin, not 'slam'"),
        ({"action": "cut", "after": -1}, "cut: after must be a byte count >= 0"),
        ({"action": "cut", "of": "both"}, "cut: of must be one of request, response"),
        ({"action": "delay"}, "delay: needs seconds"),
        ({"action": "delay", "seconds": -1}, "delay: seconds must be >= 0"),
        ({"action": "delay", "seconds": 1, "where": "tail"}, "delay: where must be one of"),
        ({"action": "answer", "status": 99}, "answer: status must be 200..599"),
        ({"action": "answer", "status": 404, "headers": {"a": "b\r\nc"}}, "answer: headers"),
        ({"action": "throttle", "rate": 0}, "throttle: rate must be > 0"),
        ({"action": "drop", "route": "publish"}, "route must be one of create, delete"),
        ({"action": "drop", "seq": "3"}, "seq must be an integer"),
        ({"action": "drop", "nth": 0}, "nth must be an integer >= 1"),
        ({"action": "drop", "once": "yes"}, "once must be true or false"),
        ({"action": "drop", "method": "P O"}, "method must be an HTTP method"),
        ({"action": "drop", "channel": ""}, "channel must be a name or a glob"),
        (["not a table"], "a rule is a table of keys"),
    ],
)
def test_a_bad_rule_is_refused_with_its_reason(data: object, reason: str) -> None:
    with pytest.raises(FaultPlanError) as caught:
        rules_from_data(data, where="body")
    assert reason in str(caught.value)
    assert str(caught.value).startswith("body: rule 1: ")


def test_a_toml_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[[rule]]\nroute = "segment-post"\nnth = 3\naction = "cut"\nof = "request"\n'
        'after = 1000\n\n[[rule]]\nroute = "segment-get"\naction = "answer"\nstatus = 470\n'
    )
    plan = load_plan(path)
    assert [rule.id for rule in plan.rules] == [1, 2]
    assert plan.rules[0].action == Cut(after=1000, of="request")
    assert plan.rules[1].action == Answer(470)
    path.write_text('[[rule]]\naction = "cut"\nhow = "slam"\n')
    with pytest.raises(FaultPlanError, match=r"plan.toml: rule 1: cut: how must be"):
        load_plan(path)
    path.write_text("[[rule]\n")
    with pytest.raises(FaultPlanError, match=r"is not valid TOML"):
        load_plan(path)
    path.write_text('[rules]\naction = "cut"\n')
    with pytest.raises(FaultPlanError, match=r"unknown key rules \(rules go in \[\[rule\]\]"):
        load_plan(path)
    with pytest.raises(FaultPlanError, match=r"cannot read fault plan"):
        load_plan(tmp_path / "missing.toml")
