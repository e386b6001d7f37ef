"""Suite-wide helpers: a deadline for in-process tests, and the hostile-client figures
(tests/hostile.py) printed at the end of the session.

(The project's fixtures come from its pytest plugin, loaded through its entry point.)
"""

from __future__ import annotations

import functools
import inspect
import math
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the async tests of modules marked ``deadline`` under ``trio.fail_after``:
    in-process HTTP tests with a broken rule hang rather than fail otherwise."""
    for item in items:
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
