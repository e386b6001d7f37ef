"""Operations: metrics, health, configuration sources, logs, the status view."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio.testing

from trickle_trio.client.cli_admin import render
from trickle_trio.config import Settings, SettingsError, load_settings
from trickle_trio.http.app import create_app
from trickle_trio.logs import JSONFormatter
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import open_exchange

from .helpers import fetch, publish, request

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_count_what_happened(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"12345")
    await publish(trickle_app, "cam", 1, b"")
    assert (await fetch(trickle_app, "cam", 0)).body == b"12345"
    assert (await fetch(trickle_app, "cam", 9)).status == 470
    assert (await fetch(trickle_app, "nope", 0)).status == 404
    assert (await request(trickle_app, "DELETE", "/nope")).status == 400
    async with (
        open_exchange(trickle_app, "POST", "/cam/2"),
        open_exchange(trickle_app, "GET", "/cam/2"),
    ):
        await trio.testing.wait_all_tasks_blocked()
        response = await request(trickle_app, "GET", "/metrics")
    text = response.body.decode()
    assert response.headers["content-type"].startswith("text/plain")
    assert metric(text, "trickle_channels_open") == 1
    assert metric(text, "trickle_subscribers_attached") == 1
    assert metric(text, "trickle_publishers_attached") == 1
    assert metric(text, "trickle_preconnects_idle") == 1
    assert metric(text, 'trickle_segments_total{outcome="complete"}') == 1
    assert metric(text, 'trickle_segments_total{outcome="empty"}') == 1
    assert metric(text, "trickle_bytes_in_total") == 5
    assert metric(text, "trickle_bytes_out_total") == 5
    assert metric(text, 'trickle_responses_total{status="470"}') == 1
    assert metric(text, 'trickle_responses_total{status="404"}') == 1
    assert metric(text, 'trickle_responses_total{status="400"}') == 1
    assert metric(text, "trickle_segment_duration_seconds_count") == 1
    assert metric(text, "trickle_time_to_first_byte_seconds_count") == 1


async def test_metrics_count_aborted_and_evicted_segments(trickle_app: Any) -> None:
    async with open_exchange(trickle_app, "POST", "/cam/0") as post:
        await post.send_body(b"part")
        await post.disconnect()
        await post.finished.wait()
    async with open_exchange(trickle_app, "POST", "/cam/1") as stuck:
        await stuck.send_body(b"never ends")
        await publish(trickle_app, "cam", 6, b"evicts seq 1")
        text = (await request(trickle_app, "GET", "/metrics")).body.decode()
        await stuck.end_body()
        await stuck.read_response()
    assert metric(text, 'trickle_segments_total{outcome="aborted"}') == 1
    assert metric(text, 'trickle_segments_total{outcome="evicted"}') == 1


# -- health, reserved names ----------------------------------------------------------------------


@pytest.mark.parametrize("base_path", ["/", "/trickle/"])
@pytest.mark.parametrize("name", ["healthz", "readyz", "metrics", "_status"])
async def test_server_route_names_are_reserved_under_any_base_path(
    trickle_registry: ChannelRegistry, name: str, base_path: str
) -> None:
    app = create_app(Settings(autocreate=True, base_path=base_path), trickle_registry)
    assert (await request(app, "POST", f"{base_path}{name}")).status == 400
    assert (await publish(app, f"{base_path}{name}".strip("/"), 0, b"x")).status == 400
    assert name not in trickle_registry


async def test_server_routes_answer_at_the_root_and_under_the_base_path(
    trickle_registry: ChannelRegistry,
) -> None:
    app = create_app(Settings(autocreate=True, base_path="/trickle/"), trickle_registry)
    await publish(app, "trickle/cam", 0, b"x")
    for prefix in ("/", "/trickle/"):
        assert (await request(app, "GET", f"{prefix}healthz")).body == b"ok\n"
        assert (await request(app, "GET", f"{prefix}readyz")).body == b"ready\n"
        assert b"trickle_channels_open 1.0" in (await request(app, "GET", f"{prefix}metrics")).body
        listing = json.loads((await request(app, "GET", f"{prefix}_status")).body)
        assert [c["channel"] for c in listing["channels"]] == ["cam"]
    app.extensions["trickle"].draining = True
    for prefix in ("/", "/trickle/"):
        assert (await request(app, "GET", f"{prefix}readyz")).status == 503


# -- status ------------------------------------------------------------------------------------


async def test_status_lists_channels(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"abc", headers=[("Content-Type", "video/mp2t")])
    async with open_exchange(trickle_app, "GET", "/cam/1"):
        await trio.testing.wait_all_tasks_blocked()
        status = json.loads((await request(trickle_app, "GET", "/_status")).body)
    assert status["channels_open"] == 1
    (cam,) = status["channels"]
    assert cam["channel"] == "cam"
    assert (cam["next_seq"], cam["subscribers"], cam["bytes"]) == (1, 1, 3)
    table = render(status)
    assert table.splitlines()[0].startswith("channels=1 subscribers=1")
    assert "cam" in table.splitlines()[-1]
    assert "video/mp2t" in table.splitlines()[-1]


# -- configuration -------------------------------------------------------------------------------


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "trickle.toml"
    config.write_text('port = 1000\nbase_path = "/file/"\nidle_timeout = 30\nchangefeed = true\n')
    env = {"TRICKLE_CONFIG": str(config), "TRICKLE_PORT": "2000", "TRICKLE_CHANGEFEED": "0"}
    settings, sources = load_settings(environ=env, flags={"port": 3000, "host": None})
    assert settings.port == 3000
    assert sources["port"] == "flag"
    assert settings.changefeed is False
    assert sources["changefeed"] == "env TRICKLE_CHANGEFEED"
    assert (settings.base_path, settings.idle_timeout) == ("/file/", 30.0)
    assert sources["base_path"] == f"file {config}"
    assert settings.host == "127.0.0.1"
    assert "host" not in sources
    lines = settings.describe(sources)
    assert "port=3000 source=flag" in lines
    assert "host=127.0.0.1 source=default" in lines


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRICKLE_PORT": "eighty"}, "TRICKLE_PORT must be an integer, not 'eighty'"),
        ({"TRICKLE_AUTOCREATE": "maybe"}, "TRICKLE_AUTOCREATE must be a boolean"),
        ({"TRICKLE_IDLE_TIMEOUT": "-1"}, "idle_timeout must be > 0, not -1.0"),
        ({"TRICKLE_LOG_FORMAT": "xml"}, "log_format must be text or json, not xml"),
        ({"TRICKLE_CONFIG": "/nonexistent.toml"}, "cannot read config file /nonexistent.toml"),
    ],
)
def test_invalid_settings_fail_fast_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={}, config_file=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(environ={}, config_file=unknown)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('port = "80"\n')
    with pytest.raises(SettingsError, match="port must be a int"):
        load_settings(environ={}, config_file=wrong)


def test_trickle_table_in_a_shared_file(tmp_path: Path) -> None:
    shared = tmp_path / "app.toml"
    shared.write_text("[trickle]\nautocreate = true\n")
    assert load_settings(environ={}, config_file=shared)[0].autocreate is True


# -- logs --------------------------------------------------------------------------------------


def test_json_log_lines_carry_the_key_value_fields() -> None:
    record = logging.LogRecord(
        "trickle_trio.channels",
        logging.INFO,
        __file__,
        1,
        "segment complete channel=%s seq=%d bytes=%d duration=%.3f",
        ("cam", 4, 1024, 0.5),
        None,
    )
    line = json.loads(JSONFormatter().format(record))
    assert line["event"] == "segment complete"
    assert (line["channel"], line["seq"], line["bytes"], line["duration"]) == ("cam", 4, 1024, 0.5)
    assert line["level"] == "info"
    assert line["logger"] == "trickle_trio.channels"


async def test_lifecycle_events_are_logged(
    trickle_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trickle_trio")
    await publish(trickle_app, "cam", 0, b"abc")
    await request(trickle_app, "DELETE", "/cam")
    levels = {record.getMessage(): record.levelno for record in caplog.records}
    assert levels["channel created channel=cam mime="] == logging.INFO  # no Content-Type
    (segment,) = [m for m in levels if m.startswith("segment complete channel=cam seq=0 bytes=3")]
    assert levels[segment] == logging.DEBUG  # per segment: one per channel per second
    assert levels["channel deleted channel=cam"] == logging.INFO


def test_serve_flags_reach_the_settings(tmp_path: Path) -> None:
    from trickle_trio.cli import build_parser, settings_from_args

    token = tmp_path / "publish.token"
    token.write_text("a-publish-token-0123456789\n")
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "0",
            "--max-segment-bytes",
            "1024",
            "--preconnect-timeout",
            "30",
            "--publish-token-file",
            str(token),
        ]
    )
    settings, sources = settings_from_args(args)
    assert (settings.max_segment_bytes, settings.preconnect_timeout) == (1024, 30.0)
    assert settings.publish_token == "a-publish-token-0123456789"
    assert settings.autocreate is True  # a standalone server autocreates
    assert sources["publish_token"] == "flag"
    assert "publish_token=*** source=flag" in settings.describe(sources)
    missing = build_parser().parse_args(["serve", "--publish-token-file", str(tmp_path / "no")])
    with pytest.raises(SettingsError, match="cannot read token file"):
        settings_from_args(missing)
