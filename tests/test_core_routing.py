"""The route decision (core.routing.decide): one normalised form, ambiguity refused."""

from __future__ import annotations

import pytest

from trickle_trio.core.routing import (
    BAD_TARGET,
    CHANGEFEED_IS_THE_SERVERS,
    Access,
    Kind,
    Refusal,
    Route,
    decide,
)


@pytest.mark.parametrize(
    ("method", "target", "kind", "access", "channel", "seq"),
    [
        ("GET", b"/healthz", Kind.PROBE, Access.OPEN, None, None),
        ("GET", b"/readyz?x=1", Kind.PROBE, Access.OPEN, None, None),
        ("GET", b"/metrics", Kind.METRICS, Access.OPEN, None, None),
        ("GET", b"/_status", Kind.STATUS, Access.WRITE, None, None),
        ("HEAD", b"/_status", Kind.STATUS, Access.WRITE, None, None),
        ("POST", b"/cam", Kind.CHANNEL, Access.WRITE, "cam", None),
        ("DELETE", b"/cam", Kind.CHANNEL, Access.WRITE, "cam", None),
        ("GET", b"/cam", Kind.CHANNEL, Access.READ, "cam", None),
        ("GET", b"/cam/next", Kind.NEXT, Access.READ, "cam", "next"),
        ("HEAD", b"/cam/next", Kind.NEXT, Access.READ, "cam", "next"),
        ("POST", b"/cam/next", Kind.SEGMENT, Access.WRITE, "cam", "next"),
        ("GET", b"/cam/0", Kind.SEGMENT, Access.READ, "cam", "0"),
        ("POST", b"/cam/-1", Kind.SEGMENT, Access.WRITE, "cam", "-1"),
        ("DELETE", b"/cam/3", Kind.SEQ, Access.WRITE, "cam", "3"),
        ("HEAD", b"/cam/3", Kind.SEQ, Access.READ, "cam", "3"),
        ("PUT", b"/cam/3", Kind.SEQ, Access.WRITE, "cam", "3"),
        ("GET", b"/", Kind.UNKNOWN, Access.READ, None, None),
        ("POST", b"/a/b/c", Kind.UNKNOWN, Access.WRITE, None, None),
        # Percent-decoding happens per segment, after the split.
        ("GET", b"/c%61m/0", Kind.SEGMENT, Access.READ, "cam", "0"),
        ("GET", b"/%5Fstatus", Kind.STATUS, Access.WRITE, None, None),
        ("GET", b"/a%20b/0", Kind.SEGMENT, Access.READ, "a b", "0"),
        # Absolute-form routes exactly as the origin-form of its path.
        ("GET", b"http://x/cam/0", Kind.SEGMENT, Access.READ, "cam", "0"),
        ("POST", b"HTTP://x:80/cam/1", Kind.SEGMENT, Access.WRITE, "cam", "1"),
        ("GET", b"https://evil.example/_status", Kind.STATUS, Access.WRITE, None, None),
        ("GET", b"http://x", Kind.UNKNOWN, Access.READ, None, None),
        ("GET", b"/_changes/0", Kind.SEGMENT, Access.READ, "_changes", "0"),
        ("GET", b"/_changes/next", Kind.NEXT, Access.READ, "_changes", "next"),
    ],
)
def test_routes(
    method: str,
    target: bytes,
    kind: Kind,
    access: Access,
    channel: str | None,
    seq: str | None,
) -> None:
    route = decide(method, target)
    assert isinstance(route, Route), route
    assert (route.kind, route.access, route.channel, route.seq) == (kind, access, channel, seq)


@pytest.mark.parametrize(
    "target",
    [
        b"//_status",
        b"///_status",
        b"/%2F_status",
        b"/%2f_status",
        b"/a/..%2f_status",
        b"/a/%2e%2e/_status",
        b"/a/../_status",
        b"/./_status",
        b"/cam/./0",
        b"/cam//0",
        b"/cam/",
        b"/cam/0/",
        b"http:/_status",
        b"http:_status",
        b"x:/_status",
        b"ftp://x/_status",
        b"http://user@x/_status",
        b"http:///_status",
        b"_status",
        b"*",
        b"x:443",
        b"",
        b"/%00/0",
        b"/a%0d%0ab/0",
        b"/a%5cb/0",
        b"/a\\b/0",
        b"/%zz/0",
        b"/%4/0",
        b"/%ff/0",
        b"/a b/0",
        "/caf\u00e9/0".encode(),
        b"/a\x00b/0",
        b"/cam/0#frag",
    ],
)
def test_ambiguous_or_malformed_targets_are_refused(target: bytes) -> None:
    assert decide("GET", target) == BAD_TARGET
    assert decide("POST", target) == BAD_TARGET


def test_the_normalised_path_is_one_form() -> None:
    forms = [b"/cam/0", b"/c%61m/0", b"/%63%61%6D/0", b"http://h/cam/0", b"https://h:1/cam/0?q"]
    routes = {decide("GET", form) for form in forms}
    assert len(routes) == 1
    (route,) = routes
    assert isinstance(route, Route)
    assert (route.path, route.raw_path) == ("/cam/0", b"/cam/0")


def test_raw_path_encodes_what_decoding_produced() -> None:
    route = decide("GET", b"/a%25b%20c/0")
    assert isinstance(route, Route)
    assert route.path == "/a%b c/0"
    assert route.raw_path == b"/a%25b%20c/0"


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", b"/_changes"),
        ("POST", b"/_changes/-1"),
        ("POST", b"/_changes/0"),
        ("DELETE", b"/_changes"),
        ("DELETE", b"/_changes/0"),
        ("PUT", b"/_changes/0"),
        ("POST", b"http://x/_changes/-1"),
        ("POST", b"/%5Fchanges/-1"),
    ],
)
def test_writes_to_the_changefeed_are_refused(method: str, target: bytes) -> None:
    refusal = decide(method, target)
    assert refusal == CHANGEFEED_IS_THE_SERVERS
    assert isinstance(refusal, Refusal)
    assert refusal.status == 403


def test_base_path() -> None:
    base = "/ai/trickle/"
    route = decide("GET", b"/ai/trickle/cam/0", base)
    assert isinstance(route, Route)
    assert (route.kind, route.channel, route.seq) == (Kind.SEGMENT, "cam", "0")
    # The server's own routes answer at the root and under the base path.
    for target in (b"/healthz", b"/ai/trickle/healthz"):
        health = decide("GET", target, base)
        assert isinstance(health, Route)
        assert health.kind is Kind.PROBE
    status = decide("GET", b"/ai/trickle/_status", base)
    assert isinstance(status, Route)
    assert (status.kind, status.access) == (Kind.STATUS, Access.WRITE)
    named = decide("POST", b"/ai/trickle/healthz/0", base)
    assert isinstance(named, Route)
    assert (named.kind, named.channel) == (Kind.SEGMENT, "healthz")  # refused by its handler
    for outside in (b"/cam/0", b"/ai/cam/0", b"/ai/trickle", b"/ai/trickle2/cam"):
        unknown = decide("POST", outside, base)
        assert isinstance(unknown, Route)
        assert unknown.kind is Kind.UNKNOWN, outside
    assert decide("POST", b"/ai/trickle/_changes/-1", base) == CHANGEFEED_IS_THE_SERVERS
    assert decide("GET", b"/ai//trickle/cam/0", base) == BAD_TARGET
    assert decide("GET", b"/ai/trickle/cam/0", "ai/trickle") == decide(
        "GET", b"/ai/trickle/cam/0", base
    )


def test_pages_live_under_underscore_and_only_they_may_end_with_a_slash() -> None:
    for target, base in [
        (b"/_/watch/", "/"),
        (b"/_/watch/vendor/mpegts.js", "/"),
        (b"/ai/_/watch/", "/ai/"),
        (b"/_/watch/", "/ai/"),
    ]:
        page = decide("GET", target, base)
        assert isinstance(page, Route), target
        assert (page.kind, page.access) == (Kind.PAGE, Access.OPEN), target
        assert page.path == target.decode() or page.path.endswith(target.decode()[3:])
    for refused in (b"/cam/", b"/cam/0/", b"/_/watch/../app.py", b"/_/./watch/", b"/_//"):
        assert decide("GET", refused, "/") == BAD_TARGET, refused
