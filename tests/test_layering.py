"""The package's import contracts (pyproject.toml, [tool.importlinter]) hold.

import-linter builds the whole import graph: imports only point down the layers, core
imports only the stdlib, the clients load nothing of the server (the in-process
transport aside), and trickle-trio's HTTP server knows no framework. A second check
imports the client in a fresh interpreter and looks at what got loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_the_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_importing_the_client_loads_no_server_module() -> None:
    server_side = [
        "quart",
        "quart_trio",
        "hypercorn",
        "prometheus_client",
        "httptools",
        "werkzeug",
        "trickle_trio.http",
        "trickle_trio.h1",
        "trickle_trio.server",
        "trickle_trio.channels",
        "trickle_trio.registry",
    ]
    probe = (
        "import sys, trickle_trio.client, trickle_trio.client.api;"
        f"print([m for m in {server_side!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
