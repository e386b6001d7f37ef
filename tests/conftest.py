"""Suite-wide helpers: a deadline for in-process tests, the run with the fast path off,
and the hostile-client figures (tests/hostile.py) printed at the end of the session.

``pytest --fast-path=off`` (or ``TRICKLE_TEST_FAST_PATH=off``; ``.ci/run`` does both
runs) runs the whole suite with every server on stock hypercorn: each ``Settings`` made
in the process gets ``fast_path=False``, whatever it asked for, and the tests marked
``fast_path`` (they are about trickle-trio's own HTTP server) are skipped.

(The project's fixtures come from its pytest plugin, loaded through its entry point.)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from typing import Any

import pytest
import trio
import trio.testing

#: A stuck in-process test fails after this long (real seconds) instead of running
#: into pytest-timeout's 120 s with no hint of where it hung.
REAL_DEADLINE = 30.0
#: Under an autojump clock a hang is a jump to the next deadline: this one, at once.
#: Virtual seconds: far past any test's own waits (the idle sweep tests sleep minutes).
VIRTUAL_DEADLINE = 100_000.0


def _with_deadline(test: Any) -> Any:
    @functools.wraps(test)
    async def under_deadline(*args: Any, **kwargs: Any) -> Any:
        clock = trio.lowlevel.current_clock()
        jumps = isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold != math.inf
        limit = VIRTUAL_DEADLINE if jumps else REAL_DEADLINE
        with trio.fail_after(limit):
            return await test(*args, **kwargs)

    return under_deadline


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast-path",
        choices=("on", "off"),
        default=os.environ.get("TRICKLE_TEST_FAST_PATH", "on"),
        help="off: every server of the run is stock hypercorn (fast_path=False)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fast-path") == "off":
        _force_stock_hypercorn()


def _force_stock_hypercorn() -> None:
    from trickle_trio.config import Settings

    checked = Settings.__post_init__

    def stock(self: Settings) -> None:
        checked(self)
        object.__setattr__(self, "fast_path", False)  # frozen: set as dataclasses do

    Settings.__post_init__ = stock  # type: ignore[method-assign]
    assert not dataclasses.replace(Settings(), fast_path=True).fast_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the async tests of modules marked ``deadline`` under ``trio.fail_after``:
    in-process HTTP tests with a broken rule hang rather than fail otherwise. With the
    fast path off, skip the tests marked ``fast_path``."""
    off = config.getoption("--fast-path") == "off"
    skip = pytest.mark.skip(reason="about trickle-trio's own HTTP server (--fast-path=off)")
    for item in items:
        if off and item.get_closest_marker("fast_path"):
            item.add_marker(skip)
        function = getattr(item, "obj", None)
        if item.get_closest_marker("deadline") and inspect.iscoroutinefunction(function):
            item.obj = _with_deadline(function)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .hostile import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("hostile clients: figures")
    for row in FIGURES:
        terminalreporter.write_line("  ".join(f"{key}={value}" for key, value in row.items()))
