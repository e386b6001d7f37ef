"""``trickle-trio publish | subscribe | next | delete | status | watch``: the clients at a shell.

Every command takes the same connection options, fails in one line that says why and
ends with an exit code that says how (:mod:`.cli_common`). The commands live in
:mod:`.cli_publish`, :mod:`.cli_subscribe`, :mod:`.cli_admin` and :mod:`.cli_watch`;
this module registers them (:func:`add_client_commands`, called by ``trickle_trio/cli.py``)
and runs one (:func:`run_client_command`, under ``trio.run``).

Imports: stdlib, trio and ``trickle_trio.client``.
"""

from __future__ import annotations

from typing import Any, Final

from . import cli_admin, cli_publish, cli_subscribe, cli_watch
from .cli_common import EXIT_CODES_HELP, HelpFormatter, add_connection_options, run_client_command

__all__ = ["CLIENT_COMMANDS", "HelpFormatter", "add_client_commands", "run_client_command"]


def add_client_commands(sub: Any) -> None:
    """Add ``publish``, ``subscribe``, ``next``, ``delete``, ``status`` and ``watch``."""
    for module in (cli_publish, cli_subscribe, cli_admin, cli_watch):
        for name, parser in module.add_parsers(sub).items():
            add_connection_options(parser)
            parser.epilog = EXIT_CODES_HELP
            parser.set_defaults(client_command=module.COMMANDS[name])


#: Every client command's name (``trickle_trio.cli`` dispatches on it).
CLIENT_COMMANDS: Final = frozenset(
    name
    for module in (cli_publish, cli_subscribe, cli_admin, cli_watch)
    for name in module.COMMANDS
)
