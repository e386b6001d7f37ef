"""Small helpers for in-process HTTP tests (level 3: the app, no sockets)."""

from __future__ import annotations

from typing import Any

from trickle_trio.testing import Response, open_exchange


async def request(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """One whole request, whole response."""
    async with open_exchange(app, method, path, headers or [], body=body) as exchange:
        return await exchange.read_response()


async def publish(app: Any, channel: str, seq: int | str, data: bytes, **kw: Any) -> Response:
    return await request(app, "POST", f"/{channel}/{seq}", data, **kw)


async def fetch(app: Any, channel: str, seq: int | str) -> Response:
    return await request(app, "GET", f"/{channel}/{seq}")
