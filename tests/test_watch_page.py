"""The watch page: its files and routes in-process, then the page in a real browser.

The browser test drives Debian's ``chromium`` (``.ci/run`` installs it with apt, as it
does HAProxy and ffmpeg) through Playwright's Python package, pointed at that binary:
no browser is downloaded. It skips, saying why, where chromium, Playwright or ffmpeg is
missing. The server runs in a thread of its own (Playwright's sync API owns this one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.http.app import create_app
from trickle_trio.registry import ChannelRegistry
from trickle_trio.server import open_server

from .helpers import publish, request

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: How long the browser test waits for one thing to show (ms); generous: a shared machine.
WAIT_MS = 30_000


# -- in-process: the routes ------------------------------------------------------------------


async def test_the_page_and_its_files_are_served_with_a_csp(trickle_app: Any) -> None:
    page = await request(trickle_app, "GET", "/_/watch/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert b'<meta name="trickle-base-path" content="/">' in page.body
    for name, kind in [
        ("watch.js", "text/javascript"),
        ("watch.css", "text/css"),
        ("vendor/mpegts.js", "text/javascript"),
        ("vendor/LICENSE.mpegts.js", "text/plain"),
    ]:
        response = await request(trickle_app, "GET", f"/_/watch/{name}")
        assert response.status == 200, name
        assert response.headers["content-type"].startswith(kind)
        assert response.headers["x-content-type-options"] == "nosniff"
    assert (
        b"Apache License"
        in (await request(trickle_app, "GET", "/_/watch/vendor/LICENSE.mpegts.js")).body
    )
    again = await request(
        trickle_app, "GET", "/_/watch/", headers=[("If-None-Match", page.headers["etag"])]
    )
    assert (again.status, again.body) == (304, b"")
    assert (await request(trickle_app, "GET", "/_/watch/../app.py")).status == 400  # dot segment
    assert (await request(trickle_app, "GET", "/_/watch/nope.js")).status == 404
    redirect = await request(trickle_app, "GET", "/_/watch")
    assert (redirect.status, redirect.headers["location"]) == (308, "/_/watch/")


async def test_underscore_is_no_channel(trickle_app: Any) -> None:
    assert (await request(trickle_app, "POST", "/_")).status == 400
    assert (await request(trickle_app, "POST", "/_/0", b"x")).status in (404, 405)
    assert (await request(trickle_app, "GET", "/_/0")).status in (404, 405)


async def test_under_another_base_path_the_page_is_at_both_and_finds_the_channels(
    nursery: trio.Nursery,
) -> None:
    settings = Settings(port=0, autocreate=True, base_path="/trickle/")
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    # Its channels are at ../../{ch} of the page: under /trickle/ from the root...
    page = await request(app, "GET", "/_/watch/")
    assert b'<meta name="trickle-base-path" content="/trickle/">' in page.body
    # ...and right there from /trickle/_/watch/ (a proxy that forwards only /trickle/).
    under = await request(app, "GET", "/trickle/_/watch/")
    assert b'<meta name="trickle-base-path" content="/">' in under.body
    assert (await request(app, "GET", "/trickle/_/watch/watch.js")).status == 200
    redirect = await request(app, "GET", "/trickle/_/watch")
    assert (redirect.status, redirect.headers["location"]) == (308, "/trickle/_/watch/")
    assert (await request(app, "POST", "/trickle/_")).status == 400  # reserved there too


async def test_the_page_is_off_when_asked(nursery: trio.Nursery) -> None:
    settings = Settings(port=0, autocreate=True, watch_page=False)
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    assert (await request(app, "GET", "/_/watch/")).status == 404


async def test_the_page_is_open_but_what_it_reads_needs_the_tokens(nursery: trio.Nursery) -> None:
    settings = Settings(
        port=0,
        autocreate=True,
        publish_token="publish-token-0123456789",
        subscribe_token="subscribe-token-0123456789",
    )
    app = create_app(settings, ChannelRegistry.from_settings(nursery, settings))
    assert (await request(app, "GET", "/_/watch/")).status == 200
    assert (await request(app, "GET", "/_/watch/vendor/mpegts.js")).status == 200
    assert (await request(app, "GET", "/_status")).status == 401
    authorized = [("Authorization", "Bearer publish-token-0123456789")]
    assert (await request(app, "GET", "/_status", headers=authorized)).status == 200


async def test_status_counts_the_bytes_published_to_each_channel(trickle_app: Any) -> None:
    await publish(trickle_app, "cam", 0, b"x" * 100)
    await publish(trickle_app, "cam", 1, b"y" * 23)
    await publish(trickle_app, "other", 0, b"z")
    status = json.loads((await request(trickle_app, "GET", "/_status")).body)
    counts = {entry["channel"]: entry["bytes_in"] for entry in status["channels"]}
    assert counts == {"cam": 123, "other": 1}


# -- in a real browser -------------------------------------------------------------------------


@contextmanager
def server_in_thread(settings: Settings) -> Iterator[str]:
    """A real server on an ephemeral port, run by ``trio.run`` in a thread of its own."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        async with open_server(settings) as server:
            box.update(url=server.url, token=trio.lowlevel.current_trio_token(), stop=stop)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the test thread
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="trickle server", daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["url"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


@contextmanager
def pattern_publisher(url: str) -> Iterator[subprocess.Popen[bytes]]:
    """ffmpeg's test pattern (H.264 + AAC, a keyframe a second) published live by
    ``trickle-trio publish`` in 1 s segments; the channel goes when ffmpeg is stopped."""
    argv = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", "120", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts", "-",
    ]  # fmt: skip
    ffmpeg = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
    )
    assert ffmpeg.stdout is not None
    publisher = subprocess.Popen(
        [sys.executable, "-m", "trickle_trio", "publish", "--interval", "1", url],
        stdin=ffmpeg.stdout,
    )
    ffmpeg.stdout.close()  # the publisher holds it now
    try:
        yield publisher
    finally:
        ffmpeg.terminate()
        ffmpeg.wait(30)
        try:
            publisher.wait(30)  # end of input: it deletes the channel it created
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()


def test_the_page_in_a_real_browser(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        )
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (.ci/run installs it: apt-get install ffmpeg)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, access_log=None)
    with (
        server_in_thread(settings) as url,
        httpx.Client(base_url=url, timeout=10) as http,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user data dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 720},
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/_/watch/")
            expect = sync_api.expect
            expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)

            # Channels come: one made by hand, one by a live publisher.
            assert (
                http.post("/events", headers={"Expect-Content": "application/json"}).status_code
                == 200
            )
            events = page.locator('tr[data-channel="events"]')
            expect(events).to_be_visible(timeout=WAIT_MS)
            expect(events.locator('[data-field="type"]')).to_have_text("application/json")
            with pattern_publisher(f"{url}/cam"):
                cam = page.locator('tr[data-channel="cam"]')
                expect(cam).to_be_visible(timeout=WAIT_MS)
                expect(cam.locator('[data-field="type"]')).to_have_text("video/mp2t")
                expect(cam.locator('[data-field="pubs"]')).not_to_have_text("0", timeout=WAIT_MS)
                # The stats move: the seq goes up, the rate shows bytes flowing.
                seq_cell = cam.locator('[data-field="seq"]')
                expect(seq_cell).to_have_text(_re(r"^[0-9]+$"), timeout=WAIT_MS)
                first = int(seq_cell.inner_text())
                page.wait_for_function(
                    "(first) => Number(document.querySelector("
                    '\'tr[data-channel="cam"] [data-field="seq"]\').textContent) > first',
                    arg=first,
                    timeout=WAIT_MS,
                )
                expect(cam.locator('[data-field="rate"]')).to_have_text(
                    _re(r"^[0-9.]+ (kB|MB)/s$"), timeout=WAIT_MS
                )

                # The MPEG-TS channel plays in the page: the video's time advances.
                cam.click()
                expect(page).to_have_url(_re(r"#cam$"))
                played = "(after) => document.getElementById('player').currentTime > after"
                page.wait_for_function(played, arg=1, timeout=WAIT_MS)
                then = page.evaluate("() => document.getElementById('player').currentTime")
                page.wait_for_function(played, arg=then + 1, timeout=WAIT_MS)
                expect(cam.locator('[data-field="subs"]')).to_have_text("1", timeout=WAIT_MS)
                page.screenshot(path=str(tmp_path / "watch.png"))

                # A JSON channel is a live log of its segments.
                events.click()
                for n in range(3):
                    body = json.dumps({"event": "tick", "n": n})
                    assert http.post("/events/-1", content=body).status_code == 200
                expect(page.locator("#log li")).to_have_count(3, timeout=WAIT_MS)
                expect(page.locator("#log li").first).to_contain_text('"n": 2')
                page.screenshot(path=str(tmp_path / "watch-log.png"))

                # Channels go: deleted by hand, and by the publisher at the end.
                assert http.delete("/events").status_code == 200
                expect(events).to_have_count(0, timeout=WAIT_MS)
                expect(page.locator("#view-note")).to_contain_text("deleted", timeout=WAIT_MS)
            expect(cam).to_have_count(0, timeout=WAIT_MS)
            expect(page.locator("#empty")).to_be_visible(timeout=WAIT_MS)
            assert errors == []
        finally:
            browser.close()


def _re(pattern: str) -> Any:
    import re

    return re.compile(pattern)
