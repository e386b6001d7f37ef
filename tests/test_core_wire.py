"""core.wire: seq parsing, names, paths, the -1/-2/-N rule (plain sync tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trickle_trio
from trickle_trio.core import wire


@pytest.mark.parametrize(
    ("text", "seq"),
    [
        ("0", 0),
        ("1", 1),
        ("42", 42),
        ("-1", -1),
        ("-2", -2),
        ("-7", -7),
        (str(wire.MAX_SEQ), wire.MAX_SEQ),
    ],
)
def test_parse_seq_accepts_plain_integers(text: str, seq: int) -> None:
    assert wire.parse_seq(text) == seq


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "next",
        "+1",
        "01",
        "-0",
        "1.0",
        " 1",
        "1 ",
        "0x10",
        "1e3",
        "\u0661",
        "--1",
        "9" * 17,
        str(wire.MAX_SEQ + 1),
        str(-wire.MAX_SEQ - 1),
        "1_000",
    ],
)
def test_parse_seq_rejects_everything_else(text: str) -> None:
    with pytest.raises(wire.InvalidSeq):
        wire.parse_seq(text)


@pytest.mark.parametrize("name", ["cam", "stream-abc_1.out", "a~b", "x:y@z", "A" * 256])
def test_channel_names_accepted(name: str) -> None:
    assert wire.check_channel_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "é", "a\x00", "a\nb", "A" * 257, "a%2Fb?"])
def test_channel_names_rejected(name: str) -> None:
    with pytest.raises(wire.InvalidChannelName):
        wire.check_channel_name(name)


@pytest.mark.parametrize(
    ("given", "normal"), [("", "/"), ("/", "/"), ("trickle", "/trickle/"), ("/a/b/", "/a/b/")]
)
def test_normalize_base_path(given: str, normal: str) -> None:
    assert wire.normalize_base_path(given) == normal


@pytest.mark.parametrize(
    ("seq", "next_write", "resolved"),
    [
        (5, 9, 5),
        (-1, 9, 9),  # next write
        (-2, 9, 8),  # current write
        (-2, 0, 0),  # the reference's floor for "current"
        (-3, 9, 7),  # ours: N-1 before next write
        (-6, 9, 4),
        (-3, 1, -1),  # before the start: matches nothing
    ],
)
def test_resolve_read_seq(seq: int, next_write: int, resolved: int) -> None:
    assert wire.resolve_read_seq(seq, next_write) == resolved


def test_core_imports_no_io_libraries() -> None:
    # Stand in for the package's __init__ (which re-exports the trio layers) so that only
    # trickle_trio.core itself is imported.
    package_dir = Path(trickle_trio.__file__).parent
    code = (
        "import sys, types; pkg = types.ModuleType('trickle_trio'); "
        f"pkg.__path__ = [{str(package_dir)!r}]; sys.modules['trickle_trio'] = pkg; "
        "import trickle_trio.core.wire, trickle_trio.core.errors, "
        "trickle_trio.core.segment, trickle_trio.core.window; "
        "bad = [m for m in ('trio', 'quart', 'hypercorn', 'h11', 'httpx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
