"""The hostile-client figures (tests/hostile.py), printed at the end of the session.

(The project's fixtures come from its pytest plugin, loaded through its entry point.)
"""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .hostile import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("hostile clients: figures")
    for row in FIGURES:
        terminalreporter.write_line("  ".join(f"{key}={value}" for key, value in row.items()))
