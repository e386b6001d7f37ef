"""The watch page: ``GET /_/watch/``, a browser view of the server's channels.

Static files shipped in the package (``http/watch/``; the player library vendored in
``http/watch/vendor/`` by ``make vendor``), read once when the app is made and served
from memory with an ETag, at ``/_/watch/`` and (as the server's other own routes) under
the base path. The page itself holds no channel names and no data: it reads
``/_status`` and the channels with the caller's token, so the page's files are open
(like ``/metrics``) and the token rules of what it reads apply unchanged (see
``guard.py``). It lives under ``/_/``, which is never a trickle route: the channel name
``_`` is reserved.

Imports: the stdlib and Quart.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from typing import Final

from quart import Response, request
from quart_trio import QuartTrio

from ..core.routing import PAGE_NAME

__all__ = ["PAGE_NAME", "PAGE_PATH", "install_page"]

#: Where the page lives (a directory: its files are relative to it).
PAGE_PATH: Final = "/_/watch/"

#: name under PAGE_PATH -> (file in the package's http/watch/, Content-Type)
_FILES: Final = {
    "": ("index.html", "text/html; charset=utf-8"),
    "watch.js": ("watch.js", "text/javascript; charset=utf-8"),
    "watch.css": ("watch.css", "text/css; charset=utf-8"),
    "vendor/mpegts.js": ("vendor/mpegts.js", "text/javascript; charset=utf-8"),
    "vendor/mpegts.js.LICENSE.txt": ("vendor/mpegts.js.LICENSE.txt", "text/plain; charset=utf-8"),
    "vendor/LICENSE.mpegts.js": ("vendor/LICENSE.mpegts.js", "text/plain; charset=utf-8"),
    "vendor/LICENSE.es6-promise": ("vendor/LICENSE.es6-promise", "text/plain; charset=utf-8"),
    "vendor/LICENSE.events": ("vendor/LICENSE.events", "text/plain; charset=utf-8"),
}

#: Scripts, styles and data only from the server itself; the player's media and its
#: buffers are ``blob:`` URLs (Media Source Extensions).
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(channels_at: str) -> dict[str, _File]:
    """The page's files; ``channels_at`` is where the channels are, from the server's
    root as the page sees it (``../../`` of the page)."""
    folder = resources.files("trickle_trio.http") / "watch"
    files = {}
    for name, (path, content_type) in _FILES.items():
        body = folder.joinpath(path).read_bytes()
        if path == "index.html":
            body = body.replace(b"{{BASE_PATH}}", html.escape(channels_at).encode())
        etag = hashlib.sha256(body).hexdigest()[:32]
        files[name] = _File(body, content_type, etag)
    return files


def install_page(app: QuartTrio, base_path: str) -> None:
    """Add the watch page's routes to ``app``: at ``/_/watch/`` and, as the server's own
    routes are, under ``base_path`` (normalized) too."""
    mounts = {"/": base_path}
    if base_path != "/":
        mounts[base_path] = "/"  # from /{base}_/watch/, the channels are at ../../
    for number, (mount, channels_at) in enumerate(mounts.items()):
        _add_routes(app, f"{mount}{PAGE_PATH[1:]}", _load(channels_at), number)


def _add_routes(app: QuartTrio, page_path: str, files: dict[str, _File], number: int) -> None:
    async def page_redirect() -> Response:
        response = Response("", status=308)
        response.headers["Location"] = page_path
        return response

    async def page_file(name: str = "") -> Response:
        found = files.get(name)
        if found is None:
            response = Response("Not found\n", status=404)
            response.headers["Content-Type"] = "text/plain; charset=utf-8"
            return response
        if request.headers.get("If-None-Match") == f'"{found.etag}"':
            response = Response("", status=304)
        else:
            response = Response(found.body, status=200)
            response.headers["Content-Type"] = found.content_type
        response.headers["ETag"] = f'"{found.etag}"'
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if name == "":
            response.headers["Content-Security-Policy"] = _CSP
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app.add_url_rule(
        page_path.rstrip("/"), f"watch_page_redirect_{number}", page_redirect, methods=["GET"]
    )
    app.add_url_rule(page_path, f"watch_page_{number}", page_file, methods=["GET"])
    app.add_url_rule(
        f"{page_path}<path:name>", f"watch_page_file_{number}", page_file, methods=["GET"]
    )
