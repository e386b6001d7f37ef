"""The package as a wheel installs it: built from this tree and run from outside it, the
commands find what they ship (the HAProxy template, the watch page's files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 120
LEFT_OUT = (".git", ".venv", "build", "dist", "*.egg-info", "node_modules", ".*_cache", "results")
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy without build/ or *.egg-info: what a clean clone builds, not a stale
    # build directory's files.
    tree = out / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*LEFT_OUT))
    subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(out), str(tree)],
        check=True,
        timeout=LIMIT,
        capture_output=True,
    )
    (wheel,) = out.glob("trickle_trio-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _run_from_wheel(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The wheel's copy first on sys.path, run outside the source tree: nothing can come
    # from the checkout.
    return subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )


def test_the_wheels_cluster_prints_its_config(unpacked_wheel: Path, tmp_path: Path) -> None:
    result = _run_from_wheel(
        unpacked_wheel,
        "import trickle_trio, trickle_trio.cli as cli; print(trickle_trio.__file__);"
        " cli.main(['cluster', '--print-config', '--backend', '10.0.0.5:2939'])",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    where, _, config = result.stdout.partition("\n")
    assert where.startswith(str(unpacked_wheel))
    assert "server b1 10.0.0.5:2939 id 1" in config
    assert "hash-type consistent" in config


def test_the_wheel_ships_the_watch_page_and_its_player(unpacked_wheel: Path) -> None:
    watch = unpacked_wheel / "trickle_trio" / "http" / "watch"
    assert (watch / "vendor" / "mpegts.js").stat().st_size > 100_000
    assert (watch / "vendor" / "LICENSE.mpegts.js").exists()
    assert any(watch.glob("*.html"))
