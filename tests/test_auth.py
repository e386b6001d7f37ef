"""Access control: optional bearer tokens for publishing and subscribing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trickle_trio.config import Settings, SettingsError
from trickle_trio.http.app import create_app
from trickle_trio.registry import ChannelRegistry

from .helpers import request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline

PUB = "publish-token-0123456789"
SUB = "subscribe-token-0123456789"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


@pytest.fixture
def app(nursery: trio.Nursery) -> Any:
    settings = Settings(autocreate=True, changefeed=True, publish_token=PUB, subscribe_token=SUB)
    return create_app(settings, ChannelRegistry.from_settings(nursery, settings))


WRITES = [("POST", "/cam"), ("POST", "/cam/0"), ("DELETE", "/cam/0"), ("DELETE", "/cam")]
READS = [("GET", "/cam/0"), ("GET", "/cam/next"), ("GET", "/_changes/0")]


@pytest.mark.parametrize(("method", "path"), WRITES + READS + [("GET", "/_status")])
@pytest.mark.parametrize(
    "headers",
    [[], bearer("wrong-token-0123456789"), [("Authorization", "Basic " + PUB)], bearer("")],
)
async def test_without_a_valid_token_401_and_no_names(
    app: Any, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    await request(app, "POST", "/cam/0", b"x", headers=bearer(PUB))
    response = await request(app, method, path, headers=headers)
    assert (response.status, response.body) == (401, b"Unauthorized\n")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert b"cam" not in response.body


async def test_publish_token_writes_and_reads(app: Any) -> None:
    assert (await request(app, "POST", "/cam/0", b"x", headers=bearer(PUB))).status == 200
    assert (await request(app, "GET", "/cam/0", headers=bearer(PUB))).body == b"x"
    assert (await request(app, "GET", "/_status", headers=bearer(PUB))).status == 200
    assert (await request(app, "DELETE", "/cam", headers=bearer(PUB))).status == 200


async def test_subscribe_token_reads_only(app: Any) -> None:
    await request(app, "POST", "/cam/0", b"x", headers=bearer(PUB))
    assert (await request(app, "GET", "/cam/0", headers=bearer(SUB))).body == b"x"
    assert (await request(app, "GET", "/cam/next", headers=bearer(SUB))).body == b"1"
    changes = await request(app, "GET", "/_changes/1", headers=bearer(SUB))
    assert changes.body == b'{"added":["cam"]}'
    for method, path in [*WRITES, ("GET", "/_status")]:
        assert (await request(app, method, path, headers=bearer(SUB))).status == 401


async def test_probes_and_metrics_need_no_token(app: Any) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await request(app, "GET", path)).status == 200


async def test_under_a_base_path_too_probes_are_open_and_status_needs_the_publish_token(
    nursery: trio.Nursery,
) -> None:
    settings = Settings(base_path="/trickle/", publish_token=PUB, subscribe_token=SUB)
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    for path in ("/trickle/healthz", "/trickle/readyz", "/trickle/metrics"):
        assert (await request(app, "GET", path)).status == 200
    assert (await request(app, "GET", "/trickle/_status", headers=bearer(SUB))).status == 401
    assert (await request(app, "GET", "/trickle/_status", headers=bearer(PUB))).status == 200


async def test_only_publish_token_leaves_subscribing_open(nursery: trio.Nursery) -> None:
    settings = Settings(autocreate=True, publish_token=PUB)
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    assert (await request(app, "POST", "/cam/0", b"x")).status == 401
    assert (await request(app, "POST", "/cam/0", b"x", headers=bearer(PUB))).status == 200
    assert (await request(app, "GET", "/cam/0")).body == b"x"


# -- every token configuration, every route kind --------------------------------------

#: (method, path, access): one request per route kind; "open" never needs a token,
#: "read" the subscribe (or publish) token, "write" the publish token.
ROUTE_KINDS = [
    ("GET", "/healthz", "open"),
    ("GET", "/readyz", "open"),
    ("GET", "/metrics", "open"),
    ("GET", "/_status", "write"),
    ("POST", "/new", "write"),
    ("DELETE", "/cam", "write"),
    ("POST", "/cam/1", "write"),
    ("DELETE", "/cam/0", "write"),
    ("GET", "/cam/0", "read"),
    ("GET", "/cam/next", "read"),
    ("GET", "/_changes/0", "read"),
    ("GET", "/no/such/route", "read"),
    ("PUT", "/cam/0", "write"),
]
CONFIGURATIONS = {
    "none": {},
    "publish only": {"publish_token": PUB},
    "both": {"publish_token": PUB, "subscribe_token": SUB},
}


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
@pytest.mark.parametrize("presented", [None, "wrong-token-0123456789", SUB, PUB])
@pytest.mark.parametrize(("method", "path", "access"), ROUTE_KINDS)
async def test_every_configuration_and_route_kind(
    nursery: trio.Nursery,
    configuration: str,
    presented: str | None,
    method: str,
    path: str,
    access: str,
) -> None:
    tokens = CONFIGURATIONS[configuration]
    settings = Settings(autocreate=True, changefeed=True, **tokens)
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    setup = bearer(PUB) if "publish_token" in tokens else []
    assert (await request(app, "POST", "/cam/0", b"x", headers=setup)).status == 200
    if access == "open":
        allowed = True
    elif access == "write":
        allowed = "publish_token" not in tokens or presented == PUB
    else:
        allowed = "subscribe_token" not in tokens or presented in (SUB, PUB)
    headers = bearer(presented) if presented else []
    response = await request(app, method, path, headers=headers)
    if allowed:
        assert response.status != 401, response.body
    else:
        assert (response.status, response.body) == (401, b"Unauthorized\n")


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"subscribe_token": SUB}, "subscribe_token is set without publish_token"),
        ({"publish_token": PUB, "subscribe_token": PUB}, "are the same"),
    ],
    ids=["subscribe only", "the same value for both"],
)
def test_token_configurations_that_cannot_mean_what_they_say_are_refused(
    tokens: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**tokens)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({f"TRICKLE_{name.upper()}": value for name, value in tokens.items()})


@pytest.mark.parametrize("token", ["short", "has a space 0123456789", "tab\t0123456789abcdef"])
def test_weak_or_odd_tokens_are_refused_at_start(token: str) -> None:
    with pytest.raises(SettingsError, match="publish_token must be at least 16"):
        Settings(publish_token=token)


def test_tokens_are_masked_when_settings_are_printed() -> None:
    lines = Settings(publish_token=PUB, subscribe_token=SUB).describe()
    assert "publish_token=*** source=default" in lines
    assert not any(PUB in line or SUB in line for line in lines)
