"""Testing helpers for your own Trio test suites: servers, fixtures, an ASGI driver.

Installed with the ``testing`` extra (``pip install 'trickle-trio[testing]'``: pytest and
pytest-trio), pytest loads this plugin by its ``pytest11`` entry point: no
``pytest_plugins`` line is needed (``-p no:trickle_trio.testing`` turns it off). The
fixtures below other than ``trickle_settings`` run in Trio, so the tests using them must
be ``async def`` Trio tests: ``trio_mode = true`` under ``[tool.pytest.ini_options]``, or
``@pytest.mark.trio`` on each test. A test that uses them otherwise fails at set-up with a
message saying so (not pytest-trio's "Trio fixtures can only be used by Trio tests").
Fixtures:

- ``trickle_settings``: :class:`~trickle_trio.Settings` for the servers below (autocreate
  on, ephemeral port, changefeed off). Override the fixture to change them.
- ``trickle_registry``: a :class:`~trickle_trio.ChannelRegistry` in the test's nursery.
- ``trickle_app``: the ASGI app serving ``trickle_registry``, in-process (drive it with
  :func:`open_exchange`; works under ``autojump_clock``).
- ``trickle_server``: a real server on 127.0.0.1 and an ephemeral port, a
  :class:`~trickle_trio.server.RunningServer` (``.url``, ``.registry``, ``.faults``: an
  empty :class:`~trickle_trio.faults.FaultPlan`, ``trickle_server.faults.add(...)``);
  drained and stopped after the test.
- ``trickle_faults``: a fresh fault plan for in-process exchanges
  (``open_exchange(trickle_app, ..., faults=trickle_faults)``).
- ``trickle_server_process`` (sync: any test, Trio, asyncio, anyio or none): a real
  server in a child process (:mod:`trickle_trio.testing.process`): ``.url`` and
  ``.faults``, a client of its fault control route.
- ``trickle_channel_url``, ``trickle_publisher``, ``trickle_subscriber``,
  ``trickle_clients``: a connected client publisher/subscriber pair on a fresh channel
  of ``trickle_server`` (see :mod:`trickle_trio.testing.clients`).

Without pytest: ``async with open_server(settings) as server: ...``.

pytest loads this plugin wherever the package is installed, the clients alone too
(``pip install trickle-trio``): so it imports no server module itself. The server is
imported by the fixtures that need it, and a test using them without the ``server``
extra fails at set-up saying what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import trio

from ..config import Settings
from ..extras import ServerNotInstalledError, require_server
from ..faults.plan import FaultPlan
from .asgi import Exchange, Response, open_exchange
from .clients import (
    ClientPair,
    trickle_channel_url,
    trickle_clients,
    trickle_publisher,
    trickle_subscriber,
)
from .process import (
    ServerProcess,
    pytest_configure,
    pytest_runtest_makereport,
    trickle_server_process,
)

if TYPE_CHECKING:
    from ..registry import ChannelRegistry
    from ..server import RunningServer, open_server

__all__ = [
    "ClientPair",
    "Exchange",
    "Response",
    "ServerProcess",
    "open_exchange",
    "open_server",
    "pytest_configure",
    "pytest_runtest_makereport",
    "trickle_app",
    "trickle_channel_url",
    "trickle_clients",
    "trickle_faults",
    "trickle_publisher",
    "trickle_registry",
    "trickle_server",
    "trickle_server_process",
    "trickle_settings",
    "trickle_subscriber",
]


#: The fixtures that run in Trio (pytest-trio's ``nursery`` is under each of them).
TRIO_FIXTURES = frozenset(
    {
        "trickle_registry",
        "trickle_app",
        "trickle_server",
        "trickle_channel_url",
        "trickle_publisher",
        "trickle_subscriber",
        "trickle_clients",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses a Trio fixture of this plugin but cannot run it, saying why."""
    used = sorted(TRIO_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if not used:
        return
    where = f"{item.name} uses {', '.join(used)} (trickle_trio.testing)"
    if importlib.util.find_spec("pytest_trio") is None:
        pytest.fail(
            f"{where}, which needs pytest-trio: pip install 'trickle-trio[testing]'",
            pytrace=False,
        )
    missing = _missing_server_package(where)
    if missing is not None:
        pytest.fail(
            f"{where}, which needs the server extra ({missing} is missing): "
            "pip install 'trickle-trio[testing]'",
            pytrace=False,
        )
    if item.get_closest_marker("trio") is None:
        pytest.fail(
            f"{where}: those fixtures run in Trio, so the test must be an async Trio test: "
            "set trio_mode = true under [tool.pytest.ini_options] (or [pytest] in "
            "pytest.ini), or mark it @pytest.mark.trio, and make it async def",
            pytrace=False,
        )


def _missing_server_package(where: str) -> str | None:
    try:
        require_server(where)
    except ServerNotInstalledError as exc:
        return exc.missing
    return None


@pytest.fixture
def trickle_settings() -> Settings:
    """Settings for test servers: autocreate on, port 0, access log off."""
    return Settings(host="127.0.0.1", port=0, autocreate=True, access_log=None)


@pytest.fixture
def trickle_registry(nursery: trio.Nursery, trickle_settings: Settings) -> ChannelRegistry:
    """A registry whose channels live in the test's nursery (cancelled after the test)."""
    from ..registry import ChannelRegistry

    return ChannelRegistry.from_settings(nursery, trickle_settings)


@pytest.fixture
def trickle_app(trickle_registry: ChannelRegistry, trickle_settings: Settings) -> Any:
    """The ASGI app serving ``trickle_registry`` (no lifespan needed)."""
    from ..http.app import create_app

    return create_app(trickle_settings, trickle_registry)


@pytest.fixture
async def trickle_server(trickle_settings: Settings) -> AsyncIterator[RunningServer]:
    """A real server on an ephemeral loopback port, drained and stopped after the test;
    ``trickle_server.faults`` is its (empty) fault plan."""
    from ..server import open_server

    async with open_server(trickle_settings, faults=FaultPlan()) as server:
        yield server


@pytest.fixture
def trickle_faults() -> FaultPlan:
    """An empty fault plan, for ``open_exchange(..., faults=trickle_faults)``."""
    return FaultPlan()


def __getattr__(name: str) -> Any:
    """``open_server``, re-exported, is loaded on first use (it needs the server extra)."""
    if name == "open_server":
        from ..server import open_server

        return open_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
