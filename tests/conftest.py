"""Shared fixtures: the project's own pytest plugin (trickle_trio.testing); the
hostile-client figures (tests/hostile.py) printed at the end of the session."""

from __future__ import annotations

from typing import Any

pytest_plugins = ["trickle_trio.testing"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .hostile import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("hostile clients: figures")
    for row in FIGURES:
        terminalreporter.write_line("  ".join(f"{key}={value}" for key, value in row.items()))
