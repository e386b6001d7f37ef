"""The pytest plugin as a user gets it: a fresh project, the package installed from this
checkout with its ``testing`` extra, the README's examples as written.

A new virtual environment gets ``pip install '<copy of the checkout>[testing]'`` (pip
resolves pytest and pytest-trio from the extra, from its cache where it can); then the
README's "Testing your code against it" section becomes a new project: its TOML block
the ``pyproject.toml``, its Python blocks one test module, with no ``conftest.py`` and no
``pytest_plugins`` line. Skipped, saying why, only where no virtual environment can be
made or no package index can be reached.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Testing your code against it"
#: Installing into a new environment from pip's cache takes ~10 s; a cold cache longer.
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 120
#: pip's words for "no index reachable" (the only reason to skip rather than fail).
OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|No matching distribution found for (pytest|setuptools)"
)


def readme_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's plugin section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], flags=re.DOTALL)


def clean_env() -> dict[str, str]:
    """This environment minus what would leak the outer test run into the inner one."""
    leaks = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {
        key: value
        for key, value in os.environ.items()
        if key not in leaks and not key.startswith("PYTEST_")
    }


def install_checkout(base: Path, *requirements: str) -> Path:
    """A new virtual environment under ``base`` with ``requirements`` installed by pip,
    where ``{checkout}`` stands for a copy of this checkout (a copy: pip's build must not
    write into the working tree). Skips where no environment can be made or no index
    reached."""
    source = base / "trickle-trio"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "trickle_trio",
        source / "trickle_trio",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env_dir = base / "venv"
    try:
        venv.EnvBuilder(with_pip=True).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a virtual environment here ({exc}); needs ensurepip")
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    wanted = [item.format(checkout=source) for item in requirements]
    install = subprocess.run(
        [*pip, *wanted],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=clean_env(),
        check=False,
    )
    if install.returncode != 0:
        if OFFLINE.search(install.stderr):
            pytest.skip(f"no package index reachable for pip: {install.stderr.strip()[-300:]}")
        pytest.fail(f"pip install {' '.join(requirements)} failed:\n{install.stderr}")
    return env_dir


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with ``trickle-trio[testing]`` installed from a copy of
    this checkout."""
    return install_checkout(tmp_path_factory.mktemp("plugin-install"), "{checkout}[testing]")


def make_project(root: Path, *, trio_mode: bool) -> Path:
    """A new project: the README's TOML as ``pyproject.toml``, its examples as tests."""
    (toml,) = readme_blocks("toml")
    examples = readme_blocks("python")
    assert len(examples) >= 2, "the README's plugin section lost its examples"
    root.mkdir()
    if not trio_mode:
        toml = toml.replace("trio_mode = true", "")
    (root / "pyproject.toml").write_text(toml, encoding="utf-8")
    tests = root / "tests"
    tests.mkdir()
    (tests / "test_readme.py").write_text("\n\n".join(examples), encoding="utf-8")
    return root


def run_pytest(env_dir: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=clean_env(),
        check=False,
    )


def test_readme_examples_pass_in_a_fresh_project(user_venv: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", trio_mode=True)
    result = run_pytest(user_venv, project, "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(re.findall(r"^async def test_", "\n".join(readme_blocks("python")), re.M))
    assert f"{count} passed" in result.stdout, result.stdout
    # Loaded by the entry point of the installed distribution, nothing else.
    plugins = run_pytest(user_venv, project, "--version", "--version")
    installed = str(user_venv)
    assert re.search(rf"trickle-trio-0\.1\.0 at {re.escape(installed)}", plugins.stdout), (
        plugins.stdout + plugins.stderr
    )
    assert not (project / "conftest.py").exists()
    assert "pytest_plugins" not in (project / "tests" / "test_readme.py").read_text()


def test_without_trio_mode_the_failure_says_what_to_set(user_venv: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", trio_mode=False)
    result = run_pytest(user_venv, project, "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "set trio_mode = true under [tool.pytest.ini_options]" in result.stdout
    assert "Trio fixtures can only be used by Trio tests" not in result.stdout


def test_the_wheel_carries_the_entry_point_and_the_proxy_template(user_venv: Path) -> None:
    python = user_venv / "bin" / "python"
    probe = (
        "import importlib.metadata as m, trickle_trio.ops.haproxy as c;"
        "print(sorted((e.group, e.name, e.value) for e in m.distribution('trickle-trio')"
        ".entry_points)); print(c.TEMPLATE.is_file())"
    )
    out = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=clean_env(),
        check=True,
        cwd=user_venv,
    ).stdout.splitlines()
    assert "('pytest11', 'trickle_trio.testing', 'trickle_trio.testing')" in out[0]
    assert out[1] == "True"  # `trickle-trio cluster` works from an installed wheel
