"""Which optional part of trickle-trio is installed: the server is the ``server`` extra.

``pip install trickle-trio`` gives the clients (trio and h11); ``trickle-trio[server]``
adds hypercorn, quart-trio, werkzeug, prometheus-client and httptools, which everything
that serves needs. :func:`require_server` turns the import error of a missing one into
one sentence that says what to install.

Imports: the stdlib only (the server is imported by name, on demand).
"""

from __future__ import annotations

from importlib import import_module
from typing import Final

__all__ = ["INSTALL_SERVER", "SERVER_PACKAGES", "ServerNotInstalledError", "require_server"]

#: The importable names of the ``server`` extra's distributions.
SERVER_PACKAGES: Final = frozenset(
    {"hypercorn", "quart", "quart_trio", "werkzeug", "prometheus_client", "httptools"}
)
INSTALL_SERVER: Final = "pip install 'trickle-trio[server]'"


class ServerNotInstalledError(ImportError):
    """A dependency of the server is missing: the ``server`` extra is not installed.

    Attributes:
        missing: the module that could not be imported (e.g. ``"quart"``).
    """

    def __init__(self, what: str, missing: str) -> None:
        super().__init__(
            f"{what} needs the trickle-trio server, which is not installed "
            f"({missing} is missing): {INSTALL_SERVER}"
        )
        self.missing = missing


def require_server(what: str) -> None:
    """Import the server; if one of its dependencies is missing, raise
    :class:`ServerNotInstalledError` saying ``what`` needs it. Other import errors
    (a broken install, a bug) propagate as they are."""
    try:
        import_module("trickle_trio.server")
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in SERVER_PACKAGES:
            raise
        raise ServerNotInstalledError(what, top) from None
