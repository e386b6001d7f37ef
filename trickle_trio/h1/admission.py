"""Admission: the caps on connections open at once, in all and per client address.

Rules:
1. Counted from accept to close, so a burst accepted in one batch is counted at once.
2. A connection past a cap is refused without a task: what its client has sent already
   is read and dropped, a whole plain-text answer (``503`` past ``max_connections``,
   ``429`` past ``max_connections_per_client``) is written without waiting, and the
   socket is closed. A client sees an answer it can act on, or at worst a reset: never
   a hang.
3. 0 means no cap. Refusals are counted (``refused``) and logged at most once a second.

Imports: the stdlib and ``.heads``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any

from .heads import error_answer

logger = logging.getLogger(__name__)

__all__ = ["Admission"]

#: Longest interval between two log lines about refusals.
_LOG_EVERY = 1.0


class Admission:
    """Decides, at accept, whether a connection may be served."""

    def __init__(self, max_connections: int = 0, max_per_client: int = 0) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self._per_client: dict[str, int] = {}
        #: Connections refused since start, by the cap that refused them.
        self.refused = {"max_connections": 0, "max_connections_per_client": 0}
        self._logged_at = 0.0

    def admit(self, sock: socket.socket, peer: Any) -> str | None:  # sync on purpose
        """The client's address key if ``sock`` may be served (then pair with
        :meth:`leave`); else None, and ``sock`` has been answered and closed."""
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self.max_connections and self.open >= self.max_connections:
            self._refuse(sock, "max_connections", 503, "Too many connections")
            return None
        count = self._per_client.get(client, 0)
        if self.max_per_client and count >= self.max_per_client:
            self._refuse(sock, "max_connections_per_client", 429, "Too many connections")
            return None
        self.open += 1
        self._per_client[client] = count + 1
        return client

    def leave(self, client: str) -> None:  # sync on purpose
        """A connection :meth:`admit` let in has closed."""
        self.open -= 1
        count = self._per_client.get(client, 0) - 1
        if count > 0:
            self._per_client[client] = count
        else:
            self._per_client.pop(client, None)

    def gauges(self) -> dict[str, float]:
        """Connections open now and refused since start (``/metrics``, ``/_status``)."""
        return {
            "connections_open": self.open,
            "connections_refused": sum(self.refused.values()),
        }

    def _refuse(self, sock: socket.socket, limit: str, status: int, reason: str) -> None:
        self.refused[limit] += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            logger.warning(
                "limit hit limit=%s value=%d refused=%d",
                limit,
                self.max_connections if limit == "max_connections" else self.max_per_client,
                self.refused[limit],
            )
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.recv(64 * 1024)  # what was sent already: a close would reset over it
            sock.send(b"".join(error_answer(status, reason)))
            sock.shutdown(socket.SHUT_WR)
        sock.close()
