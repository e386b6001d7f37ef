"""Every public async function and method of ``trickle_trio.client`` says what happens on
cancellation (STYLE.md: what state is left, whether the connection is reused or closed,
whether a partly written segment is cut visibly).

Read from the source: a ``Cancellation`` paragraph, or (for the base classes' and the
protocols' stubs, and ``__aexit__``) a line that names cancellation or shielding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trickle_trio.client

CLIENT = Path(trickle_trio.client.__file__).parent
#: Dunders a caller reaches through ``async with`` / ``async for``.
PUBLIC_DUNDERS = {"__aexit__", "__anext__"}


def public_async_functions(path: Path) -> list[tuple[str, str]]:
    """(qualified name, docstring) of each public async function and method in ``path``."""
    found: list[tuple[str, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.AsyncFunctionDef):
                name = child.name
                if not name.startswith("_") or name in PUBLIC_DUNDERS:
                    found.append((f"{prefix}{name}", ast.get_docstring(child) or ""))

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


@pytest.mark.parametrize("path", sorted(CLIENT.glob("*.py")), ids=lambda p: p.name)
def test_public_async_functions_say_what_cancellation_does(path: Path) -> None:
    silent = [
        name
        for name, doc in public_async_functions(path)
        if not any(word in doc.lower() for word in ("cancellation", "cancelled", "shielded"))
        and not doc.startswith("As ")  # "As :meth:`...`": the documented one's rules
    ]
    assert not silent, f"{path.name}: no word on cancellation in {silent}"


def test_the_scan_sees_the_client() -> None:
    names = {name for path in CLIENT.glob("*.py") for name, _ in public_async_functions(path)}
    assert {"Transport.request", "Exchange.send", "SegmentState.write", "open_publisher"} <= names
