"""Running the before-create / before-delete hooks and mapping what they raise."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import Hook
from ..core.errors import RequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookRequest:
    """What a hook learns about the request that triggered it.

    Attributes:
        method: ``POST`` or ``DELETE``.
        path: the request path (percent-decoded).
        headers: request headers, names lower-cased (last value wins).
        client: ``(host, port)`` of the peer, when known.
    """

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    client: tuple[str, int] | None = None


class HookFailed(Exception):
    """A hook refused: answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def run_hook(hook: Hook | None, request: HookRequest, channel: str) -> None:
    """Run ``hook`` if set.

    Cancellation: propagates out of an async hook (the client left); nothing has been
    created or deleted by the caller yet.

    Raises:
        HookFailed: 4xx from a ``RequestError``; 500 for anything else (logged).
    """
    if hook is None:
        return
    try:
        result = hook(request, channel)
        if inspect.isawaitable(result):
            await result
    except RequestError as exc:
        raise HookFailed(exc.status, exc.message) from None
    except Exception:
        logger.exception("hook failed channel=%s method=%s", channel, request.method)
        raise HookFailed(500, "Internal Server Error") from None
