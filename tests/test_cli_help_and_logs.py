"""Help for people and logs an operator can read.

Every subcommand's ``--help`` (trickle-trio's and the bench's) is walked: a description
in sentences, no reStructuredText markup, every option explained and its default shown.
The server logs one start-up line (``--print-settings`` lists every setting), per-segment
lines only at DEBUG, and no WARNING for a publisher's normal close; under plain hypercorn
it never reports an address it does not bind.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bench.cli import build_parser as build_bench_parser
from bench.through_proxy import build_parser as build_proxy_parser
from trickle_trio import __version__
from trickle_trio.cli import build_parser, main
from trickle_trio.client import open_publisher
from trickle_trio.config import Settings, load_settings
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name

REPO = Path(__file__).resolve().parent.parent
RST = ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:", "\n.. ", "::\n")


def subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += subparsers(child)
    return found


PARSERS = [
    *subparsers(build_parser()),
    *subparsers(build_bench_parser()),
    ("python -m bench.through_proxy", build_proxy_parser()),
]


@pytest.mark.parametrize(("prog", "parser"), PARSERS, ids=[prog for prog, _ in PARSERS])
def test_help_is_written_for_people(prog: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert not [mark for mark in RST if mark in text], text
    description = parser.description or ""
    assert len(description.split()) >= 8, f"{prog}: no real description"
    assert description.strip().split("\n\n")[0].rstrip().endswith("."), description
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{prog} {action.option_strings}: no help"
        shown = parser.formatter_class(prog)._get_help_string(action) or ""
        default = action.default
        if default is not None and default is not False and default is not argparse.SUPPRESS:
            assert "default" in shown, f"{prog} {action.option_strings}: default not shown"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"trickle-trio {__version__}\n"


# -- logs ---------------------------------------------------------------------------------------


async def test_segments_log_at_debug_and_a_normal_close_warns_nothing(
    trickle_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trickle_trio")
    with trio.fail_after(STEP):
        async with open_publisher(f"{trickle_server.url}/{fresh_name()}", create=True) as pub:
            await pub.write(b"one")
            await pub.write(b"two")
    segments = [r for r in caplog.records if r.getMessage().startswith("segment ")]
    assert {r.getMessage().split()[1] for r in segments} >= {"complete", "channel_closed"}
    assert {r.levelno for r in segments} == {logging.DEBUG}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_summary_names_what_is_not_at_its_default() -> None:
    settings, sources = load_settings(
        environ={"TRICKLE_IDLE_TIMEOUT": "30", "TRICKLE_PUBLISH_TOKEN": "x" * 20},
        flags={"port": 2940},
    )
    line = settings.summary(sources)
    assert line.startswith("http://127.0.0.1:2940/ autocreate=off changefeed=off tokens=publish")
    assert "idle_timeout=30.0[env:TRICKLE_IDLE_TIMEOUT]" in line
    assert "port=2940[flag]" in line
    assert "publish_token=***[env:TRICKLE_PUBLISH_TOKEN]" in line
    assert "x" * 20 not in line
    under_hypercorn = settings.summary(sources, serve=False)
    assert "2940" not in under_hypercorn  # hypercorn's --bind decides the address
    assert Settings().summary({}).endswith("set: all defaults")


def test_print_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--print-settings", "--port", "2941"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "port=2941 source=flag" in lines
    assert "autocreate=True source=serve:default" in lines
    assert len(lines) == len(Settings().describe())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRICKLE_")}
    return env | {"PYTHONPATH": str(REPO)} | extra


def test_serve_logs_one_start_up_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trickle_trio", "serve", "--port", "0", "--idle-timeout", "30"],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:  # bounded by the test timeout
            lines.append(line)
            if "fast path on" in line:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    (summary,) = [line for line in lines if "trickle-trio" in line and "serving" in line]
    assert "http://127.0.0.1:0/ autocreate=on" in summary
    assert "idle_timeout=30.0[flag]" in summary
    assert "loopback only" in summary
    assert not [line for line in lines if " setting " in line]
    assert len(lines) <= 3, lines  # the summary and the server's address


def test_plain_hypercorn_does_not_report_an_address_it_does_not_bind() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import trickle_trio.asgi"],
        capture_output=True,
        text=True,
        env=_env(TRICKLE_PORT="2940", TRICKLE_AUTOCREATE="1"),
        timeout=60,
        check=True,
    )
    lines = proc.stderr.splitlines()
    (summary,) = [line for line in lines if "app loaded under hypercorn" in line]
    assert "2940" not in summary
    assert "autocreate=on" in summary
    assert "autocreate=True[env:TRICKLE_AUTOCREATE]" in summary
    assert any(
        "setting ignored under plain hypercorn name=port source=env:TRICKLE_PORT" in line
        for line in lines
    )
    assert not [line for line in lines if " setting port=" in line]
