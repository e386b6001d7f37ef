"""The fault control route: add, list and clear a server's fault rules over HTTP.

Ours (not in the reference), and only on a server started with it
(``trickle-trio serve --faults-control``); its JSON is documented in PROTOCOL.md
("Fault injection"). Under ``/_/faults`` (the server's reserved ``/_/`` prefix, also
under the base path):

- ``GET /_/faults``: ``{"rules": [...], "fired": [...]}``.
- ``POST /_/faults``: a rule (``{"route": "segment-post", "action": "cut", ...}``), a
  list of rules, or ``{"rule": [...]}``: 201 ``{"rules": [...]}`` (with their ids), or
  400 ``{"error": "why"}`` and nothing added.
- ``DELETE /_/faults``: every rule and record gone (200); ``DELETE /_/faults/{id}``: one
  rule (404 if there is none).
- ``GET /_/faults/fired``: ``{"fired": [...]}``.

Refusals: with ``faults_token`` set, every request needs ``Authorization: Bearer
<token>`` (401 otherwise); without one, the route answers only on a loopback bind
(403 on any other host). Bodies over 64 KiB: 413.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ..config import Settings
from .plan import FaultPlan, FaultPlanError, rules_from_data

__all__ = ["FaultControl", "is_loopback"]

#: Largest request body the route reads.
MAX_BODY: Final = 64 * 1024

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FaultControl:
    """The ASGI app of the control route for ``plan`` (see the module)."""

    def __init__(self, plan: FaultPlan, settings: Settings, base_path: str = "/") -> None:
        self.plan = plan
        self._token = settings.faults_token.encode() if settings.faults_token else None
        self._loopback = is_loopback(settings.host)
        self._prefixes = ("/_/faults", f"{base_path}_/faults")

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        status, body = await self._handle(scope, receive)
        payload = json.dumps(body).encode() + b"\n"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="trickle-faults"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _handle(self, scope: Any, receive: Receive) -> tuple[int, dict[str, Any]]:
        refusal = self._refusal(scope)
        if refusal is not None:
            return refusal
        rest = self._rest(scope["path"])
        method = scope["method"]
        plan = self.plan
        if rest == "":
            if method == "GET":
                return 200, {
                    "rules": [rule.to_dict() for rule in plan.rules],
                    "fired": [record.to_dict() for record in plan.fired],
                }
            if method == "POST":
                return await self._add(receive)
            if method == "DELETE":
                count = len(plan.rules)
                plan.clear()
                return 200, {"cleared": count}
            return 405, {"error": "use GET, POST or DELETE"}
        if rest == "fired":
            if method == "GET":
                return 200, {"fired": [record.to_dict() for record in plan.fired]}
            return 405, {"error": "use GET"}
        if rest.isdigit():
            if method == "DELETE":
                if plan.remove(int(rest)):
                    return 200, {"removed": int(rest)}
                return 404, {"error": f"no rule {rest}"}
            return 405, {"error": "use DELETE"}
        return 404, {"error": "no such fault route: see GET /_/faults"}

    def _refusal(self, scope: Any) -> tuple[int, dict[str, Any]] | None:
        if self._token is None:
            if self._loopback:
                return None
            return 403, {
                "error": "the fault control route is refused on a non-loopback bind "
                "without a token: set faults_token (--faults-token-file)"
            }
        presented = _bearer(scope)
        if presented is None or not hmac.compare_digest(presented, self._token):
            return 401, {"error": "the fault control route needs its bearer token"}
        return None

    def _rest(self, path: str) -> str:
        for prefix in self._prefixes:
            if path == prefix:
                return ""
            if path.startswith(prefix + "/"):
                return path[len(prefix) + 1 :]
        return "?"  # pragma: no cover - the layer only sends the route's paths here

    async def _add(self, receive: Receive) -> tuple[int, dict[str, Any]]:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return 400, {"error": "the client left before its body ended"}
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                return 413, {"error": f"a plan is at most {MAX_BODY} bytes"}
            if not message.get("more_body", False):
                break
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {"error": f"not JSON: {exc}"}
        try:
            rules = rules_from_data(data, where="body")
        except FaultPlanError as exc:
            return 400, {"error": str(exc)}
        if not rules:
            return 400, {"error": "body: no rule given"}
        added = [self.plan.add_rule(rule) for rule in rules]
        return 201, {"rules": [rule.to_dict() for rule in added]}


def _bearer(scope: Any) -> bytes | None:
    for name, value in scope["headers"]:
        if bytes(name).lower() == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token:
                return token.strip()
            return None
    return None
