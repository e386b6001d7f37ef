"""The install matches the import graph: the clients need only trio and h11.

``pip install trickle-trio`` has no server dependencies. Each test runs a fresh
interpreter in which those distributions cannot be imported (a ``sys.meta_path`` finder
answers ModuleNotFoundError for them, as Python does for a package that is not
installed): the client imports and its commands run, the pytest plugin loads, and what
needs the server says, in one line, to install ``trickle-trio[server]``. Last, the real
thing: ``pip install <checkout> pytest`` in a new virtual environment installs none of
the server's distributions, and the same holds there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trickle_trio.extras import SERVER_PACKAGES

from .test_plugin_install import clean_env, install_checkout

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60

#: Run first in the child: the server's distributions are "not installed".
NO_SERVER = textwrap.dedent(
    f"""
    import sys
    from importlib.abc import MetaPathFinder

    class NotInstalled(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {sorted(SERVER_PACKAGES)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    """
)


def run_without_server(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_SERVER + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def cli(*argv: str) -> str:
    return f"from trickle_trio.cli import main\nsys.exit(main({list(argv)!r}))\n"


def test_the_blocker_blocks() -> None:
    result = run_without_server("import quart_trio")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'quart_trio'" in result.stderr


def test_serve_without_the_server_extra_says_what_to_install_in_one_line() -> None:
    result = run_without_server(cli("serve", "--port", "0"))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trickle-trio: trickle-trio serve needs the trickle-trio server")
    assert lines[0].endswith("pip install 'trickle-trio[server]'")


def test_cluster_without_the_server_extra_says_so_but_prints_a_config() -> None:
    result = run_without_server(cli("cluster", "--port", "0"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("pip install 'trickle-trio[server]'"), result.stderr
    config = run_without_server(
        cli("cluster", "--print-config", "--backend", "10.0.0.1:2939", "--port", "8080")
    )
    assert config.returncode == 0, config.stderr
    assert "10.0.0.1:2939" in config.stdout


def test_the_client_and_its_commands_run_without_the_server_extra() -> None:
    probe = "import trickle_trio.client, trickle_trio.client.api\n"
    # Nothing listens on port 9 (discard): the command fails as a client does, in a line.
    result = run_without_server(probe + cli("next", "http://127.0.0.1:9/ch"))
    assert "ModuleNotFoundError" not in result.stderr, result.stderr
    assert result.returncode not in (0, 2), result.stderr  # a connection error, said in a line
    assert result.stderr.startswith("trickle-trio: "), result.stderr


def test_the_pytest_plugin_loads_without_the_server_extra(tmp_path: Path) -> None:
    """pytest loads the plugin (its entry point) in every environment with the package:
    plain tests run; a test using a server fixture fails saying what to install."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n", encoding="utf-8")
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_plain():
                assert "trickle_trio.testing" in sys.modules
                assert "quart" not in sys.modules and "hypercorn" not in sys.modules

            async def test_with_a_server(trickle_server):
                raise AssertionError("never runs")
            """
        ),
        encoding="utf-8",
    )
    result = run_without_server(
        "import pytest\nsys.exit(pytest.main(['-p', 'no:cacheprovider', '-q', '-rf']))\n",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed, 1 error" in output, output
    assert (
        "test_with_a_server uses trickle_server (trickle_trio.testing), which needs the "
        "server extra (hypercorn is missing): pip install 'trickle-trio[testing]'"
    ) in output, output
    assert "ModuleNotFoundError" not in output, output
    assert "During handling" not in output, output


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install trickle-trio pytest`` (no extra) in a new virtual environment."""
    return install_checkout(tmp_path_factory.mktemp("client-install"), "{checkout}", "pytest")


def test_the_base_install_is_the_client_alone(client_venv: Path, tmp_path: Path) -> None:
    bin_dir = client_venv / "bin"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=clean_env(),
            check=False,
        )

    freeze = run(str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze")
    installed = {line.split("==")[0].lower().replace("-", "_") for line in freeze.stdout.split()}
    assert {"trio", "h11", "trickle_trio"} <= installed, freeze.stdout
    assert not installed & {"hypercorn", "quart", "quart_trio", "werkzeug", "httptools"}
    assert "prometheus_client" not in installed, freeze.stdout
    probe = run(str(bin_dir / "python"), "-c", "import trickle_trio.client.api, trickle_trio.cli")
    assert probe.returncode == 0, probe.stderr
    serve = run(str(bin_dir / "trickle-trio"), "serve", "--port", "0")
    assert serve.returncode == 2, serve.stderr
    assert serve.stderr.strip().endswith("pip install 'trickle-trio[server]'"), serve.stderr
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n", encoding="utf-8")
    tests = run(str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    plugins = run(str(bin_dir / "python"), "-m", "pytest", "--version", "--version")
    assert "trickle-trio-0.1.0" in plugins.stdout + plugins.stderr, plugins.stdout
