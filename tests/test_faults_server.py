"""Faults on a real server (level 4, real sockets): cuts by reset and by FIN on
trickle-trio's own server, drops, the control route and its refusals, and a server
started without faults having none."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from trickle_trio.cli import build_parser, settings_from_args
from trickle_trio.config import Settings
from trickle_trio.faults import Answer, Cut, Drop, FaultPlan, FaultPlanError
from trickle_trio.faults.control import FaultControl, is_loopback
from trickle_trio.server import RunningServer, open_server, plan_of
from trickle_trio.testing import open_exchange
from trickle_trio.testing.process import FaultClient

from .sockets import call

TIMEOUT = 10


async def read_until_end(url: str, request: bytes) -> tuple[bytes, str]:
    """Send ``request`` raw; what came back, and how the connection ended: ``fin``
    (an orderly close) or ``rst`` (a reset)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    received = b""
    async with stream:
        await stream.send_all(request)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                reset = isinstance(exc.__cause__, ConnectionResetError)
                return received, "rst" if reset else f"broken: {exc.__cause__!r}"
            if not chunk:
                return received, "fin"
            received += chunk


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.mark.fast_path  # cuts need trickle-trio's own server
async def test_a_response_cut_by_fin_ends_after_n_bytes_without_the_last_chunk(
    trickle_server: RunningServer,
) -> None:
    assert trickle_server.faults is not None
    with trio.fail_after(TIMEOUT):
        assert (await call(trickle_server.url, "POST", "/cam/0", b"x" * 1000)).status == 200
        trickle_server.faults.add(Cut(after=100, how="fin"), route="segment-get")
        data, end = await read_until_end(trickle_server.url, get("/cam/0"))
    assert end == "fin"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head
    assert body == b"64\r\n" + b"x" * 100 + b"\r\n"  # one chunk of 100 bytes, no last chunk


@pytest.mark.fast_path  # cuts need trickle-trio's own server
async def test_a_response_cut_by_rst_resets_the_connection(trickle_server: RunningServer) -> None:
    assert trickle_server.faults is not None
    with trio.fail_after(TIMEOUT):
        assert (await call(trickle_server.url, "POST", "/cam/0", b"x" * 1000)).status == 200
        trickle_server.faults.add(Cut(after=100, how="rst"), route="segment-get")
        _, end = await read_until_end(trickle_server.url, get("/cam/0"))
        assert end == "rst"
        # Once: the next reader gets the whole segment.
        assert (await call(trickle_server.url, "GET", "/cam/0")).body == b"x" * 1000


@pytest.mark.fast_path  # cuts need trickle-trio's own server
@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_a_drop_closes_before_any_answer(trickle_server: RunningServer, how: str) -> None:
    assert trickle_server.faults is not None
    trickle_server.faults.add(Drop(how=how), route="next")  # type: ignore[arg-type]
    with trio.fail_after(TIMEOUT):
        data, end = await read_until_end(trickle_server.url, get("/cam/next"))
    assert (data, end) == (b"", how)


@pytest.mark.fast_path  # cuts need trickle-trio's own server
async def test_a_request_cut_by_rst_leaves_the_publisher_without_an_answer(
    trickle_server: RunningServer,
) -> None:
    assert trickle_server.faults is not None
    trickle_server.faults.add(Cut(after=4, of="request", how="rst"), route="segment-post")
    request = b"POST /cam/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabcdefgh"
    with trio.fail_after(TIMEOUT):
        data, end = await read_until_end(trickle_server.url, request)
        assert (data, end) == (b"", "rst")
        # The publisher's 4 bytes were taken, the segment closed with them.
        assert (await call(trickle_server.url, "GET", "/cam/0")).body == b"abcd"


async def test_a_server_started_without_faults_has_none(trickle_settings: Settings) -> None:
    async with open_server(trickle_settings) as plain:
        assert plain.faults is None
        with trio.fail_after(TIMEOUT):
            unknown = await call(plain.url, "GET", "/_/no-such-page")
            assert (await call(plain.url, "GET", "/_/faults")).status == unknown.status
            assert (await call(plain.url, "POST", "/cam/0", b"ok")).status == 200
            assert (await call(plain.url, "GET", "/cam/0")).body == b"ok"


async def test_one_servers_faults_never_reach_another(trickle_settings: Settings) -> None:
    plan = FaultPlan()
    plan.add(Answer(503), once=False)
    async with (
        open_server(trickle_settings, faults=plan) as faulty,
        open_server(trickle_settings, faults=FaultPlan()) as other,
    ):
        with trio.fail_after(TIMEOUT):
            assert (await call(faulty.url, "POST", "/cam/0", b"a")).status == 503
            assert (await call(other.url, "POST", "/cam/0", b"a")).status == 200
    assert len(plan.fired) == 1


async def test_the_control_route_is_off_unless_enabled(trickle_server: RunningServer) -> None:
    with trio.fail_after(TIMEOUT):
        # Answered as any page the server doesn't have.
        unknown = await call(trickle_server.url, "GET", "/_/no-such-page")
        assert unknown.status in (404, 405)
        assert (await call(trickle_server.url, "GET", "/_/faults")).status == unknown.status
        body = json.dumps({"action": "drop"}).encode()
        assert (await call(trickle_server.url, "POST", "/_/faults", body)).status in (404, 405)
    assert trickle_server.faults is not None
    assert trickle_server.faults.rules == []


async def test_the_control_route_adds_lists_and_clears_rules(
    trickle_settings: Settings,
) -> None:
    settings = trickle_settings.replace(faults_control=True)
    async with open_server(settings) as server:
        client = FaultClient(server.url)
        with trio.fail_after(TIMEOUT):
            added = await trio.to_thread.run_sync(
                lambda: client.add("answer", route="segment-post", seq=1, status=404)
            )
            assert (added["id"], added["status"], added["fired"]) == (1, 404, 0)
            await trio.to_thread.run_sync(lambda: client.add(Drop(), channel="other*"))
            assert (await call(server.url, "POST", "/cam/0", b"a")).status == 200
            assert (await call(server.url, "POST", "/cam/1", b"b")).status == 404
            fired = await trio.to_thread.run_sync(client.fired)
            assert [(r["rule"], r["path"], r["seq"]) for r in fired] == [(1, "/cam/1", "1")]
            rules = await trio.to_thread.run_sync(client.rules)
            assert [(rule["id"], rule["fired"]) for rule in rules] == [(1, 1), (2, 0)]
            await trio.to_thread.run_sync(lambda: client.remove(2))
            assert [rule["id"] for rule in await trio.to_thread.run_sync(client.rules)] == [1]
            await trio.to_thread.run_sync(client.clear)
            assert await trio.to_thread.run_sync(client.rules) == []
            assert await trio.to_thread.run_sync(client.fired) == []
            with pytest.raises(FaultPlanError, match="body: rule 1: cut: how must be one of"):
                await trio.to_thread.run_sync(lambda: client.add("cut", how="slam"))
            reply = await call(server.url, "DELETE", "/_/faults/99")
            assert reply.status == 404
    assert server.faults is not None
    assert not server.faults


async def exchange(app: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with open_exchange(app, method, path, **kwargs) as request:
        response = await request.read_response()
    return response.status, json.loads(response.body)


async def test_the_control_route_refuses_a_non_loopback_bind_without_a_token() -> None:
    control = FaultControl(FaultPlan(), Settings(host="0.0.0.0"))
    status, body = await exchange(control, "GET", "/_/faults")
    assert status == 403
    assert "non-loopback bind without a token" in body["error"]
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.0.2.1")


async def test_the_control_route_needs_its_token_when_one_is_set() -> None:
    token = "faults-token-0123456789"
    plan = FaultPlan()
    control = FaultControl(plan, Settings(host="0.0.0.0", faults_token=token))
    status, body = await exchange(control, "GET", "/_/faults")
    assert status == 401
    assert "bearer token" in body["error"]
    wrong = [("Authorization", "Bearer not-the-token-at-all")]
    assert (await exchange(control, "GET", "/_/faults", headers=wrong))[0] == 401
    right = [("Authorization", f"Bearer {token}")]
    rule = json.dumps({"action": "drop", "route": "create"}).encode()
    status, body = await exchange(control, "POST", "/_/faults", headers=right, body=rule)
    assert status == 201
    assert body["rules"][0]["action"] == "drop"
    assert [r.id for r in plan.rules] == [1]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b'{"action": "cut", "after": "lots"}', "body: rule 1: cut: after must be a byte count"),
        (b'[{"action": "drop"}, {"action": "nap"}]', "body: rule 2: action must be one of"),
        (b"[]", "body: no rule given"),
    ],
)
async def test_a_bad_rule_is_400_with_the_reason_and_adds_nothing(body: bytes, reason: str) -> None:
    plan = FaultPlan()
    control = FaultControl(plan, Settings())
    status, answer = await exchange(control, "POST", "/_/faults", body=body)
    assert status == 400
    assert reason in answer["error"]
    assert plan.rules == []


async def test_faults_on_stock_hypercorn_answer_but_cannot_cut(
    trickle_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    plan = FaultPlan()
    plan.add(Answer(503), route="segment-post")
    plan.add(Cut(after=1), route="segment-get")
    async with open_server(trickle_settings.replace(fast_path=False), faults=plan) as server:
        with trio.fail_after(TIMEOUT):
            assert (await call(server.url, "POST", "/cam/0", b"abc")).status == 503
            assert (await call(server.url, "POST", "/cam/0", b"abc")).status == 200
            data, _ = await read_until_end(server.url, get("/cam/0"))
    assert not data.endswith(b"0\r\n\r\n")  # never a clean end
    assert "fault cut unavailable" in caplog.text


def test_settings_ask_for_a_plan_only_with_a_faults_setting(tmp_path: Any) -> None:
    assert plan_of(Settings()) is None  # no fault layer at all
    plan = plan_of(Settings(faults_control=True))
    assert plan is not None
    assert plan.rules == []
    path = tmp_path / "plan.toml"
    path.write_text('[[rule]]\naction = "drop"\n')
    from_file = plan_of(Settings(faults=str(path)))
    assert from_file is not None
    assert [rule.action for rule in from_file.rules] == [Drop()]


def test_serve_flags_for_faults(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("faults-token-0123456789\n")
    args = build_parser().parse_args(
        ["serve", "--faults-control", "--faults-token-file", str(token), "--url-file", "u"]
    )
    settings, sources = settings_from_args(args)
    assert settings.faults_control
    assert settings.faults_token == "faults-token-0123456789"
    assert sources["faults_token"] == "flag"
    assert args.url_file == "u"
    assert any(line.startswith("faults_token=*** ") for line in settings.describe(sources))


async def test_the_control_route_under_the_base_path(trickle_settings: Settings) -> None:
    settings = trickle_settings.replace(faults_control=True, base_path="/trickle/")
    async with open_server(settings) as server:
        rule = json.dumps({"action": "answer", "status": 503, "route": "create"}).encode()
        with trio.fail_after(TIMEOUT):
            assert (await call(server.url, "POST", "/_/faults", rule)).status == 201
            assert (await call(server.url, "GET", "/_/faults")).status == 200
            assert server.url.endswith("/trickle")
            assert (await call(server.url, "GET", "/trickle/_/faults/fired")).status == 200
            assert (await call(server.url, "POST", "/trickle/cam")).status == 503
            fired = json.loads((await call(server.url, "GET", "/trickle/_/faults/fired")).body)
    assert [record["path"] for record in fired["fired"]] == ["/trickle/cam"]
