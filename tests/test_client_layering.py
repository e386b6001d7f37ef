"""``trickle_trio.client`` sees only ``core``, ``config``, trio, h11 and the stdlib.

The in-process clients (``client/local.py``, ``client/local_subscriber.py``) may also
import ``trickle_trio.local`` (and the server's types, for annotations only). Checked on
the source, so that importing the package (whose ``__init__`` pulls in the server) does
not blur it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import trickle_trio.client

CLIENT = Path(trickle_trio.client.__file__).parent
THIRD_PARTY = {"trio", "h11"}
PACKAGE = {"trickle_trio.core", "trickle_trio.config"}
TWINS = {"trickle_trio.local"}


def imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports, outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(child) for child in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["trickle_trio", "client"][: 3 - node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
    return names


@pytest.mark.parametrize("path", sorted(CLIENT.glob("*.py")), ids=lambda p: p.name)
def test_client_modules_import_only_what_they_may(path: Path) -> None:
    allowed = PACKAGE | (TWINS if path.name.startswith("local") else set())
    for name in imports(path):
        top = name.split(".")[0]
        if name.startswith("trickle_trio.client") or top == "__future__":
            continue
        if name.startswith("trickle_trio"):
            assert any(name == ok or name.startswith(ok + ".") for ok in allowed), name
        else:
            assert top in THIRD_PARTY or top in sys.stdlib_module_names, name
