"""``trickle-trio watch``: prints how to play a channel, or plays it in ffplay (real
processes: the command, ffplay with SDL's dummy drivers, a real server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import trio

from trickle_trio.http.live import live_counters
from trickle_trio.server import RunningServer

from .sockets import call, until

COMMAND = [sys.executable, "-m", "trickle_trio", "watch"]


async def _watch(
    *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*COMMAND, *argv], capture_stdout=True, capture_stderr=True, check=False, env=env
    )


async def test_prints_the_live_url_and_commands_for_a_video_channel(
    trickle_server: RunningServer,
) -> None:
    trickle_server.registry.create("cam", "video/mp2t")
    url = f"{trickle_server.url}/cam"
    with trio.fail_after(30):
        result = await _watch("--player", "none", "--start", "current", url)
    assert (result.returncode, result.stderr) == (0, b"")
    out = result.stdout.decode()
    live = f"{url}/live?start=current"
    assert out.splitlines()[0] == f"live stream: {live}  (video/mp2t)"
    assert f"  ffplay -fflags nobuffer '{live}'" in out
    assert f"  mpv --profile=low-latency '{live}'" in out
    assert f"watch page: {trickle_server.url}/_/watch/#cam" in out


async def test_a_json_channel_is_not_sent_to_a_video_player(trickle_server: RunningServer) -> None:
    trickle_server.registry.create("events", "application/json")
    url = f"{trickle_server.url}/events"
    with trio.fail_after(30):
        result = await _watch(url)  # auto: a player only for video and audio
    assert (result.returncode, result.stderr) == (0, b"")
    assert f"  curl -sN '{url}/live'" in result.stdout.decode()


async def test_an_unknown_channel_is_one_line_and_exit_1(trickle_server: RunningServer) -> None:
    url = f"{trickle_server.url}/nope"
    with trio.fail_after(30):
        result = await _watch("--player", "none", url)
    assert result.returncode == 1
    assert result.stderr.decode() == f"trickle-trio: channel not found: {url}\n"


@pytest.mark.skipif(
    shutil.which("ffplay") is None, reason="ffplay (part of ffmpeg) is not installed"
)
async def test_opens_ffplay_on_the_live_stream_until_the_channel_ends(
    trickle_server: RunningServer,
) -> None:
    encode = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
        "-i", "testsrc=duration=1:size=160x120:rate=25", "-c:v", "libx264",
        "-g", "25", "-pix_fmt", "yuv420p", "-f", "mpegts", "-",
    ]  # fmt: skip
    video = (await trio.run_process(encode, capture_stdout=True)).stdout
    channel = trickle_server.registry.create("cam", "video/mp2t")
    counters = live_counters(channel)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            result: list[subprocess.CompletedProcess[bytes]] = []

            async def watch() -> None:
                result.append(await _watch("--start", "0", f"{trickle_server.url}/cam", env=env))

            nursery.start_soon(watch)
            # The command's own look at the channel, then ffplay's live response.
            await until(lambda: counters.started == 2 and counters.readers == 1)
            third = len(video) // 188 // 3 * 188
            for seq, part in enumerate(
                [video[:third], video[third : 2 * third], video[2 * third :]]
            ):
                assert (await call(trickle_server.url, "POST", f"/cam/{seq}", part)).status == 200
            await until(lambda: channel.window.get(3) is not None)  # ffplay read through seq 2
            assert (await call(trickle_server.url, "DELETE", "/cam")).status == 200
    (done,) = result
    assert done.returncode == 0, done.stderr  # the stream ended cleanly: ffplay exits
    assert b"error" not in done.stderr.lower()
